"""Brought footage, prepared once at ingest: the training frame rate, a square frame of the
training size with the aspect ratio kept, short GOPs, and where its shots cut.

Every later stage then decodes small frames that seek cheaply, instead of decoding and
resizing full-resolution originals at every epoch. The original file is only read.

Shot cuts are found on the prepared frames by a frame-difference detector: the mean
absolute difference between consecutive grey frames, a cut where it is both large and
far above its neighbourhood's median. It runs on frames already decoded for the
transcode (no second pass), needs no extra dependency (PySceneDetect brings OpenCV and
decodes again), and a hard cut between two shots is what it has to catch; a slow
dissolve is left alone, as a dissolve is motion the dynamics model may as well learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.decoders import VideoDecoder
from pipeline.splits import key_unit
from pipeline.video import RejectedVideo, _reason, encode_mp4, open_video

DECODE_BATCH = 16  # frames per decode call: bounded memory for long, large videos
NEIGHBOURHOOD = 9  # frames around a candidate cut whose median difference is "ordinary motion"


@dataclass(frozen=True)
class Preparation:
    """How ingest prepares footage; None when videos are kept as they came."""

    fps: float
    size: int  # the side of the square frames stored
    fit: str  # "centre" or "random" crop after scaling the short side to `size`, or "pad"
    shot_threshold: float  # mean absolute grey difference (0-255) that can be a cut
    seed: int
    encoding: dict  # codec, crf, keyframe_interval for encode_mp4


@dataclass(frozen=True)
class PreparedVideo:
    data: bytes
    num_frames: int
    original: dict  # path, width, height, fps, num_frames, duration_s
    shots: list[tuple[int, int]]  # [start, end) frame ranges of the prepared video


def resampled_indices(num_frames: int, source_fps: float, target_fps: float) -> list[int]:
    """The source frame shown at each tick of the target rate: every k-th frame when slowing
    down, repeated frames when speeding up, so that every video plays at one rate."""
    duration = num_frames / source_fps
    count = max(1, int(duration * target_fps + 1e-6))
    return [min(num_frames - 1, int(tick * source_fps / target_fps + 1e-6)) for tick in range(count)]


def scaled_size(width: int, height: int, size: int, fit: str) -> tuple[int, int]:
    """The (even) size to decode at: the short side (crop) or the long side (pad) becomes `size`."""
    scale = size / (max(width, height) if fit == "pad" else min(width, height))
    even = lambda side: max(2, int(round(side * scale / 2)) * 2)  # noqa: E731
    return even(width), even(height)


def fit_square(frames: np.ndarray, size: int, fit: str, offset: float) -> np.ndarray:
    """Scaled frames [T, h, w, 3] -> [T, size, size, 3]: cropped at `offset` (0 first, 0.5 the
    centre, 1 last) along the long side, or padded with black around the centre."""
    count, height, width, _ = frames.shape
    if fit == "pad":
        canvas = np.zeros((count, size, size, 3), dtype=np.uint8)
        top, left = (size - min(height, size)) // 2, (size - min(width, size)) // 2
        canvas[:, top : top + height, left : left + width] = frames[:, :size, :size]
        return canvas
    top = int(round(offset * max(0, height - size)))
    left = int(round(offset * max(0, width - size)))
    return np.ascontiguousarray(frames[:, top : top + size, left : left + size])


def _decode_scaled(decoder: VideoDecoder, indices: list[int], width: int, height: int) -> np.ndarray:
    """Frames at `indices`, scaled to width x height while decoding (in batches: bounded memory)."""
    batches = [
        decoder.frames(indices[start : start + DECODE_BATCH], width, height)
        for start in range(0, len(indices), DECODE_BATCH)
    ]
    return np.concatenate(batches)


def detect_shots(frames: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """[start, end) ranges between hard cuts in frames uint8 [T, H, W, 3]."""
    grey = frames.astype(np.float32).mean(axis=-1)
    differences = np.abs(np.diff(grey, axis=0)).mean(axis=(1, 2))  # [T-1]: frame i -> i+1
    cuts = []
    for i, difference in enumerate(differences):
        around = np.delete(differences[max(0, i - NEIGHBOURHOOD // 2) : i + NEIGHBOURHOOD // 2 + 1], 0)
        ordinary = float(np.median(around)) if len(around) else 0.0
        if difference >= threshold and difference >= 3 * ordinary:
            cuts.append(i + 1)
    bounds = [0, *cuts, len(frames)]
    return [(start, end) for start, end in zip(bounds, bounds[1:], strict=False) if end > start]


def prepare(data: bytes, key: str, path: str, how: Preparation) -> PreparedVideo:
    """Decode `data` at the training rate and size, find its shots, and encode it again."""
    decoder = open_video(data, in_order=True)  # read once, start to end: frames counted by decoding
    num_frames, fps, width, height = decoder.num_frames, decoder.fps, decoder.width, decoder.height
    if fps <= 0:
        raise RejectedVideo("no frame rate")
    indices = resampled_indices(num_frames, fps, how.fps)
    try:
        scaled = _decode_scaled(decoder, indices, *scaled_size(width, height, how.size, how.fit))
    except Exception as err:
        raise RejectedVideo(f"decoding failed: {_reason(err)}") from None
    offset = 0.5 if how.fit != "random" else key_unit(f"{how.seed}:{key}")  # one crop per video
    frames = fit_square(scaled, how.size, how.fit, offset)
    original = {
        "path": path,
        "width": int(width),
        "height": int(height),
        "fps": fps,
        "num_frames": num_frames,
        "duration_s": round(num_frames / fps, 3),
    }
    return PreparedVideo(
        data=encode_mp4(frames, how.fps, **how.encoding),
        num_frames=len(frames),
        original=original,
        shots=detect_shots(frames, how.shot_threshold),
    )
