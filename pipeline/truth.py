"""The frames generated ones are scored against: true frames, and the training set's mean frame.

The latent store keeps only codes, so a store clip's true frames are decoded again
from its raw shard, exactly as encode cut the clip; a video a user brings is its own
truth. Frames come as uint8 [T, C, H, W] at the tokenizer's frame size and channels.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass

import fsspec
import numpy as np

from common.digit_identity import DigitIdentity, DigitTrack
from pipeline.clips import VideoPlan, frame_step, iter_clips, video_bytes
from pipeline.moving_mnist import load_glyphs
from pipeline.shards import RawManifest, iter_samples
from pipeline.splits import TRAIN
from pipeline.video import probe_video, read_frames, to_channels


@dataclass(frozen=True)
class RawVideo:
    shard: str  # the raw shard's URI
    step: int  # source frames between consecutive clip frames (see `pipeline.clips.frame_step`)


def raw_videos(manifest: RawManifest, keys: set[str], fps: float | None) -> dict[str, RawVideo]:
    """The videos of `keys` (in manifest order): each one's raw shard and the frame step its clips
    were cut with at the store's `fps`. The manifest is read a few shards at a time and only these
    are kept, however many videos it holds."""
    found: dict[str, RawVideo] = {}
    for shard, video in manifest.videos():
        if video["key"] in keys:
            found[video["key"]] = RawVideo(manifest.shard_uri(shard["name"]), frame_step(video["fps"], fps))
            if len(found) == len(keys):
                break
    return found


class StoreTruth:
    """True frames of store clips, decoded from their raw shards. The samples of one shard are
    kept at a time: clips come in store order, so consecutive clips mostly share a shard."""

    def __init__(self, videos: dict[str, RawVideo], frame_size: int, channels: int):
        self.videos, self.frame_size, self.channels = videos, frame_size, channels
        self.shard, self.samples = "", {}

    def clip(self, key: str, start: int, frames: int) -> np.ndarray:
        """The `frames` clip frames of video `key` from source frame `start`, uint8 [T, C, H, W]."""
        video = self.videos[key]
        if video.shard != self.shard:
            self.shard, self.samples = video.shard, {s["__key__"]: s for s in iter_samples(video.shard)}
        plan = VideoPlan(key, video.shard, 0, (start,), video.step)
        [clip] = iter_clips(video_bytes(self.samples[key]), plan, frames, self.frame_size, self.channels)
        return clip

    def digit_tracks(self, key: str, start: int, frames: int) -> list[DigitTrack]:
        """Where each labelled digit of a generated Moving MNIST video is in the clip's frames
        (the frames `clip` gives); empty for any other video, or frames of another size than
        the canvas the digits were drawn on. Call after `clip`."""
        digits = json.loads(self.samples[key].get("json", b"{}")).get("digits")
        if not digits or digits["canvas"] != self.frame_size:
            return []
        source_frames = start + self.videos[key].step * np.arange(frames)
        return [
            DigitTrack(int(label), np.asarray(corners, dtype=np.int64)[source_frames])
            for label, corners in zip(digits["labels"], digits["corners"], strict=True)
            if label >= 0
        ]


def video_start(uri: str, prompt_frames: int, frames: int, frame_size: int, channels: int) -> np.ndarray:
    """A brought video's first `frames` frames (all of them when it is shorter), uint8
    [T, C, H, W]. Raises `RejectedVideo` for an unreadable one, ValueError for one shorter
    than the prompt."""
    with fsspec.open(uri, "rb") as handle:
        data = handle.read()
    info = probe_video(data)
    if info.num_frames < prompt_frames:
        raise ValueError(f"only {info.num_frames} frames, fewer than the {prompt_frames} prompt frames")
    count = min(info.num_frames, frames)
    decoded = to_channels(read_frames(data, size=frame_size, indices=list(range(count))), channels)
    return np.ascontiguousarray(decoded.transpose(0, 3, 1, 2))


def mean_frame(
    videos: dict[str, RawVideo], keys: set[str], frame_size: int, channels: int, max_videos: int
) -> np.ndarray | None:
    """The mean frame [C, H, W] in [0, 1] over the first `max_videos` of `keys` (in shard
    order): with the train split's keys, the best constant guess a model could learn (of a
    video split by time, its train frames alone).
    None when none of them is found."""
    wanted: dict[str, set[str]] = defaultdict(set)  # shard -> keys, in shard order
    for key, video in videos.items():
        if key in keys:
            wanted[video.shard].add(key)
    total, count, seen = None, 0, 0
    for shard, shard_keys in wanted.items():
        for sample in iter_samples(shard):
            if sample["__key__"] not in shard_keys:
                continue
            meta, indices = json.loads(sample["json"]), None
            if "segments" in meta:  # a video split by time lends only its train part
                indices = [
                    i for split, start, end in meta["segments"] if split == TRAIN for i in range(start, end)
                ]
                if not indices:
                    continue
            frames = to_channels(read_frames(video_bytes(sample), size=frame_size, indices=indices), channels)
            frame_sum = (frames.astype(np.float64) / 255.0).sum(axis=0).transpose(2, 0, 1)
            total = frame_sum if total is None else total + frame_sum
            count, seen = count + len(frames), seen + 1
            if seen >= max_videos:
                return (total / count).astype(np.float32)
    return None if total is None else (total / count).astype(np.float32)


def digit_identity(data) -> DigitIdentity | None:
    """The digit classifier for generated Moving MNIST (`data`: the config's data section),
    fitted on its glyph source; None for other data, or glyphs without labels."""
    if data.source != "moving-mnist" or (data.path or "").endswith(".npy"):
        return None
    glyphs, labels = load_glyphs(data.path, data.moving_mnist.digit_size)
    return DigitIdentity(glyphs, labels) if len(set(labels.tolist()) - {-1}) > 1 else None
