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

import io
from dataclasses import dataclass
from typing import IO

import av
import numpy as np

from pipeline.splits import key_unit
from pipeline.video import Mp4Writer, RejectedVideo, _reason

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
    count = _tick_count(num_frames, source_fps, target_fps)
    return [min(num_frames - 1, _frame_of_tick(tick, source_fps, target_fps)) for tick in range(count)]


def _tick_count(num_frames: int, source_fps: float, target_fps: float) -> int:
    """Ticks of the target rate in a video of `num_frames` source frames (at least one)."""
    return max(1, int(num_frames / source_fps * target_fps + 1e-6))


def _frame_of_tick(tick: int, source_fps: float, target_fps: float) -> int:
    return int(tick * source_fps / target_fps + 1e-6)


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


def detect_shots(frames: np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """[start, end) ranges between hard cuts in frames uint8 [T, H, W, 3]."""
    differences = ShotDetector(threshold)
    for frame in frames:
        differences.add(frame)
    return differences.shots()


class ShotDetector:
    """Hard cuts in frames given one at a time: only one grey frame and one number a frame are kept."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.differences: list[float] = []  # mean absolute grey change, frame i -> i+1
        self.count, self._previous = 0, None

    def add(self, frame: np.ndarray) -> None:
        grey = frame.astype(np.float32).mean(axis=-1)
        if self._previous is not None:
            # the pair as detect_shots once stacked every frame: the same reduction, the same bits
            pair = np.stack([self._previous, grey])
            self.differences.append(float(np.abs(np.diff(pair, axis=0)).mean(axis=(1, 2))[0]))
        self._previous, self.count = grey, self.count + 1

    def shots(self) -> list[tuple[int, int]]:
        differences, cuts = np.asarray(self.differences, dtype=np.float32), []
        for i, difference in enumerate(differences):
            around = np.delete(differences[max(0, i - NEIGHBOURHOOD // 2) : i + NEIGHBOURHOOD // 2 + 1], 0)
            ordinary = float(np.median(around)) if len(around) else 0.0
            if difference >= self.threshold and difference >= 3 * ordinary:
                cuts.append(i + 1)
        bounds = [0, *cuts, self.count]
        return [(start, end) for start, end in zip(bounds, bounds[1:], strict=False) if end > start]


@dataclass
class _Original:
    """What one pass over the original learns of it: its size and frame count."""

    width: int = 0
    height: int = 0
    num_frames: int = 0


def _resampled(decoded, source_fps: float, key: str, how: Preparation, original: _Original):
    """`resampled_indices`' frames scaled and fitted, in one pass over a stream whose length is
    known only at its end: each source frame is scaled once if any tick of the target rate shows
    it, and a tick is released once the frames seen so far prove the video lasts that long."""
    offset = 0.5 if how.fit != "random" else key_unit(f"{how.seed}:{key}")  # one crop per video
    tick, released, waiting = 0, 0, []
    for index, frame in enumerate(decoded):
        if index == 0:
            original.width, original.height = frame.width, frame.height
            width, height = scaled_size(frame.width, frame.height, how.size, how.fit)
        original.num_frames = index + 1
        picture = None
        while _frame_of_tick(tick, source_fps, how.fps) == index:
            if picture is None:
                pixels = frame.to_ndarray(
                    format="rgb24", width=width, height=height, interpolation="BILINEAR"
                )
                picture = fit_square(pixels[None], how.size, how.fit, offset)[0]
            waiting.append(picture)
            tick += 1
        while waiting and released < _tick_count(index + 1, source_fps, how.fps):
            yield waiting.pop(0)
            released += 1
    while waiting and released < _tick_count(original.num_frames, source_fps, how.fps):
        yield waiting.pop(0)
        released += 1


def prepare(stream: IO[bytes] | bytes, key: str, path: str, how: Preparation) -> PreparedVideo:
    """Decode a video once, start to end, at the training rate and size, find its shots and encode
    it again. `stream` is read as the decoder needs it: neither the file nor a full-size frame is
    held whole, so memory does not grow with a video's length or resolution."""
    if isinstance(stream, bytes):
        stream = io.BytesIO(stream)
    if stream.seek(0, io.SEEK_END) == 0:
        raise RejectedVideo("empty file (0 bytes)")
    stream.seek(0)
    try:
        container = av.open(stream)
    except Exception as err:  # PyAV's FFmpegError family, or the stream's own
        raise RejectedVideo(f"not a readable video: {_reason(err)}") from None
    original, shots = _Original(), ShotDetector(how.shot_threshold)
    with container, Mp4Writer(how.fps, **how.encoding) as writer:
        if not container.streams.video:
            raise RejectedVideo("not a readable video: no video stream (an audio-only file?)")
        video = container.streams.video[0]
        rate = video.average_rate or video.guessed_rate
        fps = float(rate) if rate else 0.0
        if fps <= 0:
            raise RejectedVideo("no frame rate")
        try:
            for frame in _resampled(container.decode(video), fps, key, how, original):
                writer.write(frame)
                shots.add(frame)
        except Exception as err:
            failed = "decoding failed" if original.num_frames else "not a readable video"
            raise RejectedVideo(f"{failed}: {_reason(err)}") from None
        if not original.num_frames:  # e.g. cut before its first frame: ffmpeg opens it and finds none
            raise RejectedVideo("not a readable video: no frame could be decoded")
    described = {
        "path": path,
        "width": original.width,
        "height": original.height,
        "fps": fps,
        "num_frames": original.num_frames,
        "duration_s": round(original.num_frames / fps, 3),
    }
    return PreparedVideo(data=writer.data, num_frames=shots.count, original=described, shots=shots.shots())
