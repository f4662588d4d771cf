"""The clips `generate` continues and which of them the preview shows: one split of the latent
store, or videos a user brings (encoded on the way in). Each item is a row for the actors:
`position` in `codes.zarr`, `clip`, `name`, and the store clip's source `key` and `start` or the
brought video's `path`."""

from __future__ import annotations

import itertools

import numpy as np

from pipeline.latents import key_strings
from pipeline.sources import FolderSource
from pipeline.splits import SPLIT_CODES, TRAIN


class PromptError(ValueError):
    """The configured clips cannot be had; the message names the key, as `generate.split: …`."""


def store_clips(store, split: str, prompt_frames: int, max_clips: int | None) -> list[dict]:
    """The clips of one split of the latent store (at most `max_clips`); the actors read their codes."""
    clip_frames = int(store.attrs["clip_frames"])
    if prompt_frames >= clip_frames:
        raise PromptError(
            f"generate.prompt_frames: given {prompt_frames}, "
            f"expected fewer than the clips' {clip_frames} frames"
        )
    chosen = np.flatnonzero(store.group["split"][:] == SPLIT_CODES[split])[: max_clips or None]
    if len(chosen) == 0:
        raise PromptError(f"generate.split: given {split!r}; the store has no clips of that split")
    sources = key_strings(store.group["source"].oindex[chosen])
    starts = store.group["start_frame"].oindex[chosen]
    return [
        {
            "position": n,
            "clip": int(i),
            "name": f"{int(i):06d}",
            "key": str(sources[n]),
            "start": int(starts[n]),
        }
        for n, i in enumerate(chosen)
    ]


def brought_videos(path: str, extensions: list[str]) -> list[dict]:
    """Videos a user points at (a folder, a glob or a file): encoded with the tokenizer on the way in."""
    try:
        listed = FolderSource(path, tuple(extensions)).items()
    except OSError as err:
        raise PromptError(f"generate.videos: given {path!r}; cannot be read ({err})") from None
    if not listed:
        raise PromptError(f"generate.videos: given {path!r}; expected video files, found none")
    return [{"position": i, "clip": i, "name": item.key, "path": item.ref} for i, item in enumerate(listed)]


def spread_over_videos(items: list[dict], count: int) -> list[int]:
    """`count` clips for the preview, as many videos as there are shown: each video's first clip
    in turn, then each one's second, and so on (a split by time holds runs of one video's clips)."""
    by_video: dict[str, list[int]] = {}
    for item in items:
        by_video.setdefault(item.get("key", item["name"]), []).append(item["clip"])
    rounds = itertools.zip_longest(*by_video.values())
    return [clip for row in rounds for clip in row if clip is not None][:count]


def first_train_videos(store, count: int, block: int = 65_536) -> list[str]:
    """The first `count` videos with a train clip, in store order (the raw manifest's), read a
    block of clips at a time: those the mean-frame reference averages."""
    splits, keys = store.group["split"], {}
    for start in range(0, store.num_clips, block):
        sources = store.sources(start, start + block)
        for key in sources[splits[start : start + block] == TRAIN]:
            keys.setdefault(str(key))
            if len(keys) == count:
                return list(keys)
    return list(keys)
