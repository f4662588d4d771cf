"""Frames streamed straight from the raw shards, for training the tokenizer.

`RawVideoFrames` is an `IterableDataset` that every rank and every DataLoader
worker builds the same way; each picks its own part of the data from its rank
and worker id, so nothing has to re-shard or dispatch it:

- with at least as many shards as (ranks x workers), each reader owns whole
  shards (shard i goes to reader i mod readers);
- with fewer, every reader scans every shard and keeps the videos whose key
  hashes to it.

Either way each video goes to exactly one reader per epoch. The order within
an epoch is a pure function of (seed, epoch, reader), and skipping a video
reads its bytes without decoding it, so a resumed run can fast-forward to the
exact position it stopped at.

Training sees each video once per epoch, a few frames at a time; decoding them
took a tenth of the demo's tokenizer step on 2 cores (the reader shares them with
the model). So a reader keeps the decoded frames of short videos (at most
`CACHED_VIDEO_FRAMES` in the split) up to `cache_mb`, and later epochs pick
their frames from memory: the same frames, decoded once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from pipeline.shards import RawManifest, iter_samples
from pipeline.splits import key_unit, stored_segments
from pipeline.video import read_frames, to_channels

# a longer video is decoded a few frames at a time, as asked: decoding all of it once would cost
# more than the epochs it would save
CACHED_VIDEO_FRAMES = 64


def raw_shard_uris(raw: str) -> list[str]:
    """The non-empty shards listed in the raw folder's `manifest.json`."""
    manifest = RawManifest.read(raw)
    return [manifest.shard_uri(shard["name"]) for shard in manifest.shards if shard["samples"]]


def video_payload(sample: dict) -> bytes:
    return next(value for key, value in sample.items() if key not in ("__key__", "json") and "." not in key)


class DecodedFrames:
    """Videos' decoded frames by key, up to `budget` bytes; what does not fit is not kept."""

    def __init__(self, budget: int):
        self.budget, self.used = budget, 0
        self._frames: dict[str, np.ndarray] = {}

    def get(self, key: str) -> np.ndarray | None:
        return self._frames.get(key)

    def has_room(self, nbytes: int) -> bool:
        return self.used + nbytes <= self.budget

    def keep(self, key: str, frames: np.ndarray) -> None:
        if self.has_room(frames.nbytes):
            self._frames[key] = frames
            self.used += frames.nbytes


class RawVideoFrames(IterableDataset):
    """Yields {"frames": uint8 [k, C, size, size], "key": str} per video of one split."""

    def __init__(
        self,
        shard_uris: list[str],
        split: int,
        val_fraction: float,
        test_fraction: float,
        frame_size: int,
        channels: int,
        frames_per_video: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeat: bool = True,
        skip_per_worker: list[int] | None = None,
        limit: int | None = None,
        cache_mb: float = 0.0,
    ):
        if not shard_uris:
            raise ValueError("no shards to read")
        self.shard_uris = list(shard_uris)
        self.split = split
        self.fractions = (val_fraction, test_fraction)
        self.frame_size = frame_size
        self.channels = channels
        self.frames_per_video = frames_per_video
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.repeat = repeat
        self.skip_per_worker = skip_per_worker or []
        self.limit = limit  # stop after this many videos (evaluation)
        self.cache_bytes = int(cache_mb * 2**20)  # decoded frames this reader keeps (short videos)

    def _reader(self) -> tuple[int, int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers, worker

    def _assignment(self, reader: int, readers: int) -> tuple[list[str], bool]:
        if len(self.shard_uris) >= readers:
            return self.shard_uris[reader::readers], False
        return self.shard_uris, True

    def __iter__(self) -> Iterator[dict]:
        reader, readers, worker = self._reader()
        shards, by_key = self._assignment(reader, readers)
        skip = self.skip_per_worker[worker] if worker < len(self.skip_per_worker) else 0
        produced, epoch = 0, 0
        cache = DecodedFrames(self.cache_bytes)
        while True:
            rng = np.random.default_rng([self.seed, epoch, reader])
            seen = 0
            for shard_index in rng.permutation(len(shards)):
                mine = (
                    sample
                    for sample in iter_samples(shards[shard_index])
                    if not by_key or int(key_unit(sample["__key__"]) * 2**32) % readers == reader
                )
                # each sample with its frames of this split, read from its metadata once
                samples = [(sample, frames) for sample in mine if (frames := self._frames_of_split(sample))]
                for sample_index in rng.permutation(len(samples)):
                    sample, frames = samples[sample_index]
                    seen += 1
                    if skip:
                        skip -= 1
                        continue
                    yield self._decode(sample, frames, epoch, cache)
                    produced += 1
                    if self.limit is not None and produced >= self.limit:
                        return
            if seen == 0:
                raise RuntimeError(
                    f"reader {reader} of {readers} holds no videos of split {self.split}: "
                    "fewer videos than ranks x workers, or an empty split"
                )
            if not self.repeat:
                return
            epoch += 1

    def _frames_of_split(self, sample: dict) -> list[int]:
        """The sample's frames that belong to this split (a video split by time has several)."""
        meta = json.loads(sample["json"])
        segments = stored_segments(sample["__key__"], meta, *self.fractions)
        return [i for split, start, end in segments if split == self.split for i in range(start, end)]

    def _decode(self, sample: dict, indices: list[int], epoch: int, cache: DecodedFrames) -> dict:
        key = sample["__key__"]
        chosen = list(range(len(indices)))  # positions in the split's frames
        if self.frames_per_video and self.frames_per_video < len(indices):
            # seeded by the video itself, so skipping other videos never shifts the choice
            rng = np.random.default_rng([self.seed, epoch, int(key_unit(key) * 2**32)])
            chosen = sorted(rng.choice(len(indices), size=self.frames_per_video, replace=False).tolist())
        decoded = cache.get(key)
        whole = len(indices) * self.channels * self.frame_size**2  # the split's frames, decoded
        if decoded is None and len(indices) <= CACHED_VIDEO_FRAMES and cache.has_room(whole):
            decoded = self._read(sample, indices)
            cache.keep(key, decoded)
        if decoded is not None:
            frames = decoded[chosen]
        else:
            frames = self._read(sample, [indices[i] for i in chosen])
        return {"frames": torch.from_numpy(np.ascontiguousarray(frames)), "key": key}

    def _read(self, sample: dict, indices: list[int]) -> np.ndarray:
        """The sample's frames at `indices`, decoded at this reader's size: uint8 [k, C, size, size]."""
        frames = read_frames(video_payload(sample), size=self.frame_size, indices=indices)
        return to_channels(frames, self.channels).transpose(0, 3, 1, 2)


def batch_frames(batch: list[dict]) -> dict:
    """Collate videos into one batch of frames [sum k, C, H, W] plus their keys."""
    return {
        "frames": torch.cat([item["frames"] for item in batch]),
        "keys": [item["key"] for item in batch],
    }
