"""Clip windows: which frames of which video make up each clip, and decoding them.

Clips are numbered in raw manifest order, so a clip's global index (its row in
the latent store) never depends on which worker decodes it or when. The driver
only counts each raw shard's clips (`ClipIndex`); the task that encodes a latent
shard plans that shard's clips itself from the part records of the raw shards it
overlaps, so no process holds every video's plan.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from common import logs
from pipeline.shards import RawManifest, iter_samples
from pipeline.splits import stored_segments, stored_shots
from pipeline.video import read_frames, to_channels

VIDEO_FIELDS = ("mp4", "webm", "avi", "mkv", "mpg", "ogv")


@dataclass(frozen=True)
class VideoPlan:
    key: str
    shard: str  # the raw shard's URI
    first_clip: int  # global index of this video's first clip
    starts: tuple[int, ...]  # first source frame of each clip
    step: int  # source frames between consecutive clip frames (resampling to the target fps)
    splits: tuple[int, ...] = ()  # each clip's split (pipeline.splits codes)


def frame_step(source_fps: float, target_fps: float | None) -> int:
    """Take every `step`-th source frame to approach the target rate (never upsample)."""
    if not target_fps or not source_fps or source_fps <= target_fps:
        return 1
    return max(1, round(source_fps / target_fps))


def clip_starts(
    num_frames: int, clip_frames: int, clip_stride: int, step: int, first: int = 0
) -> tuple[int, ...]:
    """Starts of the clips that fit in source frames [first, num_frames)."""
    resampled = -(-(num_frames - first) // step)
    return tuple(first + start * step for start in range(0, resampled - clip_frames + 1, clip_stride))


def clip_windows(
    video: dict, clip_frames: int, clip_stride: int, target_fps: float | None, fractions: tuple[float, float]
) -> tuple[list[int], list[int], int]:
    """A manifest video's clips: (starts, splits, step). Each clip lies inside one shot and one
    split's segment, so no clip crosses a cut or holds frames of two splits."""
    step = frame_step(video["fps"], target_fps)
    starts, splits = [], []
    for split, seg_start, seg_end in stored_segments(video["key"], video, *fractions):
        for shot_start, shot_end in stored_shots(video):
            first, end = max(seg_start, shot_start), min(seg_end, shot_end)
            if end > first:
                found = clip_starts(end, clip_frames, clip_stride, step, first)
                starts += found
                splits += [split] * len(found)
    order = sorted(range(len(starts)), key=starts.__getitem__)
    return [starts[i] for i in order], [splits[i] for i in order], step


def longest_stretch(video: dict, fractions: tuple[float, float]) -> int:
    """The most stored frames of `video` that lie inside one shot and one split's segment: a clip
    must fit in such a stretch."""
    longest = 0
    for _, seg_start, seg_end in stored_segments(video["key"], video, *fractions):
        for shot_start, shot_end in stored_shots(video):
            longest = max(longest, min(seg_end, shot_end) - max(seg_start, shot_start))
    return longest


@dataclass(frozen=True)
class ClipWindows:
    """How clips are cut from every video: the encode settings that decide the clips."""

    clip_frames: int
    clip_stride: int
    target_fps: float | None
    fractions: tuple[float, float] = (0.0, 0.0)  # val, test: split a raw store written before segments

    def plan_videos(self, videos: list[dict], shard_uri: str, first_clip: int) -> list[VideoPlan]:
        """One raw shard's videos' clips, numbered from `first_clip` in manifest order."""
        plans = []
        for video in videos:
            starts, splits, step = clip_windows(
                video, self.clip_frames, self.clip_stride, self.target_fps, self.fractions
            )
            if starts:
                plans.append(
                    VideoPlan(video["key"], shard_uri, first_clip, tuple(starts), step, tuple(splits))
                )
                first_clip += len(starts)
        return plans


def plan_clips(manifest: RawManifest, windows: ClipWindows) -> Iterator[VideoPlan]:
    """Every video's clips, numbered from 0 in manifest order, planned a raw shard at a time."""
    total = 0
    for shard, videos in manifest.shard_videos():
        plans = windows.plan_videos(videos, manifest.shard_uri(shard["name"]), total)
        total += sum(len(plan.starts) for plan in plans)
        yield from plans


@dataclass(frozen=True)
class ClipIndex:
    """Where each raw shard's clips begin in the store, and nothing per video: a latent shard's
    task plans its own clips (`plans`) from the part records of the raw shards it overlaps."""

    manifest: RawManifest
    windows: ClipWindows
    shards: tuple[dict, ...]  # the raw shards' entries that give at least one clip, in manifest order
    bounds: np.ndarray  # int64 [len(shards) + 1]: shard i's clips are bounds[i]..bounds[i+1]-1
    key_width: int  # the longest key, in bytes (the store's key column is that wide)

    @property
    def num_clips(self) -> int:
        return int(self.bounds[-1])

    @classmethod
    def build(cls, manifest: RawManifest, windows: ClipWindows) -> ClipIndex:
        """One pass over the raw shards' part records, a few at a time."""
        shards, counts, key_width = [], [], 1
        for shard, videos in manifest.shard_videos():
            plans = windows.plan_videos(videos, "", 0)
            if plans:
                shards.append(shard)
                counts.append(sum(len(plan.starts) for plan in plans))
                key_width = max(key_width, *(len(plan.key.encode()) for plan in plans))
        bounds = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        return cls(manifest, windows, tuple(shards), bounds, key_width)

    def plans(self, start: int, stop: int) -> list[VideoPlan]:
        """The plans of clips start..stop-1, cut to that range (a video whose clips straddle two
        latent shards gives each its part)."""
        first = int(np.searchsorted(self.bounds, start, side="right")) - 1
        last = int(np.searchsorted(self.bounds, stop, side="left"))
        chosen = range(max(first, 0), min(last, len(self.shards)))
        plans = []
        for i, videos in zip(chosen, self.manifest.videos_of([self.shards[i] for i in chosen]), strict=True):
            uri = self.manifest.shard_uri(self.shards[i]["name"])
            plans += self.windows.plan_videos(videos, uri, int(self.bounds[i]))
        return shard_plans(plans, (start, stop))


def video_bytes(row: dict) -> bytes:
    """A raw sample's video, under its container's extension. In a Ray Data row of a shard that
    mixes containers, the other containers' columns are there too, empty (None, or a float NaN)."""
    for field in VIDEO_FIELDS:
        if isinstance(row.get(field), bytes | bytearray | memoryview):
            return bytes(row[field])
    raise ValueError(f"no video in the sample (looked for {', '.join(VIDEO_FIELDS)})")


def iter_clips(
    data: bytes, plan: VideoPlan, clip_frames: int, frame_size: int, channels: int
) -> Iterator[np.ndarray]:
    """One video's clips, each uint8 [T, C, size, size]. Every needed frame is decoded once,
    here and now (so a damaged video fails before anything is yielded); clips are then cut
    one at a time, so overlapping windows never multiply the memory."""
    windows = [list(range(start, start + clip_frames * plan.step, plan.step)) for start in plan.starts]
    needed = sorted({index for window in windows for index in window})
    frames = to_channels(read_frames(data, size=frame_size, indices=needed), channels).transpose(0, 3, 1, 2)
    position = {index: offset for offset, index in enumerate(needed)}
    return (np.ascontiguousarray(frames[[position[index] for index in window]]) for window in windows)


def motion_score(clip: np.ndarray) -> float:
    """How much a clip moves: the mean absolute change of grey level (0-255) from each frame
    [T, C, H, W] to the next. A still scene on a tripod scores the noise of its sensor and codec
    (about 0-1), people walking across a fixed view a few, a pan changes every textured pixel and
    scores highest. It is measured on the frames the tokenizer encodes, so at the stored rate
    and size: a scene that barely changes from one stored frame to the next scores low, however
    it was filmed."""
    grey = clip.astype(np.float32).mean(axis=1)
    return float(np.abs(np.diff(grey, axis=0)).mean()) if len(clip) > 1 else 0.0


def decode_clips(
    data: bytes, plan: VideoPlan, clip_frames: int, frame_size: int, channels: int
) -> np.ndarray:
    """All clips of one video as uint8 [clips, T, C, size, size]."""
    return np.stack(list(iter_clips(data, plan, clip_frames, frame_size, channels)))


class ClipDecoder:
    """One raw sample in, one row per planned clip out (`decode_shard_clips` gathers a latent
    shard's). It lives here, apart from the encoder, so that the tasks decoding clips never
    import torch.

    A video that fails to decode still yields its rows, marked with the
    reason, so its clips' shards complete (as `missing`) instead of waiting forever.
    """

    def __init__(self, plans: dict[str, VideoPlan], clip_frames: int, frame_size: int, channels: int):
        self.plans, self.clip_frames = plans, clip_frames
        self.frame_size, self.channels = frame_size, channels

    def __call__(self, row: dict) -> Iterator[dict]:
        plan = self.plans.get(row["__key__"])
        if plan is None:  # all its clips are in shards an earlier run wrote
            return
        error = ""
        try:
            clips = iter_clips(video_bytes(row), plan, self.clip_frames, self.frame_size, self.channels)
        except Exception as err:  # a damaged video: recorded, the rest of the store is unaffected
            error = f"{type(err).__name__}: {logs.first_line(err)}"  # an empty message too
            blank = np.zeros(
                (self.clip_frames, self.channels, self.frame_size, self.frame_size), dtype=np.uint8
            )
            clips = (blank for _ in plan.starts)
        for i, (start, clip) in enumerate(zip(plan.starts, clips, strict=True)):
            yield {
                "clip": plan.first_clip + i,
                "key": plan.key,
                "start": start,
                "frames": clip,
                "motion": np.float32("nan") if error else motion_score(clip),
                "error": error,
            }


def shard_plans(plans: list[VideoPlan], shard_range: tuple[int, int]) -> list[VideoPlan]:
    """The plans cut to the clips numbered start..stop-1 (one latent shard): a video whose clips
    straddle two shards gives each shard its own part."""
    start, stop = shard_range
    parts = []
    for plan in plans:
        first, last = plan.first_clip, plan.first_clip + len(plan.starts)
        if last <= start or first >= stop:
            continue
        lo, hi = max(start, first) - first, min(stop, last) - first
        parts.append(
            VideoPlan(plan.key, plan.shard, first + lo, plan.starts[lo:hi], plan.step, plan.splits[lo:hi])
        )
    return parts


def decode_shard_clips(
    plans: list[VideoPlan], clip_frames: int, frame_size: int, channels: int
) -> dict[str, np.ndarray]:
    """Every clip of one latent shard, in clip order, as columns: `clip`, `frames` uint8
    [n, T, C, size, size], `start`, `split`, `motion` and `key` and `error` (text; a video that
    fails to decode, or is missing from its raw shard, gives blank clips marked with the reason)."""
    decoder = ClipDecoder({plan.key: plan for plan in plans}, clip_frames, frame_size, channels)
    rows: list[dict] = []
    for uri in dict.fromkeys(plan.shard for plan in plans):  # raw shards in order, each read once
        keys = {plan.key for plan in plans if plan.shard == uri}
        found = set()
        for sample in iter_samples(uri, keys):
            found.add(sample["__key__"])
            rows.extend(decoder(sample))
        for key in sorted(keys - found):
            rows.extend(decoder({"__key__": key}))  # no video in the row: blank clips with the reason
    splits = {plan.first_clip + i: split for plan in plans for i, split in enumerate(plan.splits)}
    rows.sort(key=lambda row: row["clip"])
    return {
        "clip": np.array([row["clip"] for row in rows], dtype=np.int64),
        "frames": np.stack([row["frames"] for row in rows]),
        "start": np.array([row["start"] for row in rows], dtype=np.int32),
        "split": np.array([splits[row["clip"]] for row in rows], dtype=np.uint8),
        "motion": np.array([row["motion"] for row in rows], dtype=np.float32),
        "key": np.array([row["key"] for row in rows], dtype=object),
        "error": np.array([row["error"] for row in rows], dtype=object),
    }


def decode_shard_rows(batch: dict, index: ClipIndex, frame_size: int, channels: int) -> dict:
    """Ray Data batch of encode: each row names a latent shard and its clip range; out come that
    shard's clips as `decode_shard_clips` gives them, one object per column and row (shards
    differ in size). The task plans its clips itself from the raw shards' part records."""
    decoded, seconds = [], []
    for start, stop in zip(batch["start"], batch["stop"], strict=True):
        began = time.perf_counter()
        plans = index.plans(int(start), int(stop))
        decoded.append(decode_shard_clips(plans, index.windows.clip_frames, frame_size, channels))
        seconds.append(time.perf_counter() - began)
    columns = {"shard": batch["shard"], "decode_seconds": np.array(seconds)}
    for name in decoded[0]:
        column = np.empty(len(decoded), dtype=object)
        if decoded[0][name].dtype == object:
            # a shard's keys and errors as one JSON text: Arrow holds that as a string, while an
            # array of strings per row it fails to make a tensor of, warns, and pickles
            column[:] = [json.dumps(shard[name].tolist()) for shard in decoded]
        else:
            column[:] = [shard[name] for shard in decoded]
        columns[name] = column
    return columns


def row_strings(batch: dict, name: str, row: int) -> list[str]:
    """One row's strings of a `decode_shard_rows` column held as JSON text (`key`, `error`)."""
    return json.loads(batch[name][row])
