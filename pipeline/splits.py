"""Train/val/test splits: of whole videos by a hash of each video's key, or of every video's
frames by time (`data.split_by`).

Ingest records each video's segments (`[split, start, end)`) and every later stage cuts its
clips from them, so a frame lands in the same split in the tokenizer's data, the latent store
and the evaluation. Split by video, no video straddles two splits; split by time, each video's
first part trains, then validation, then test, with a clip's gap between, so no frame is in
two splits and no clip sits beside another split's.
"""

from __future__ import annotations

import hashlib

TRAIN, VAL, TEST = 0, 1, 2
SPLIT_NAMES = {TRAIN: "train", VAL: "val", TEST: "test"}
SPLIT_CODES = {name: code for code, name in SPLIT_NAMES.items()}


def key_unit(key: str) -> float:
    """A stable number in [0, 1) for a key (independent of Python's hash seed)."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2.0**64


def split_of(key: str, val_fraction: float, test_fraction: float) -> int:
    unit = key_unit(key)
    if unit < val_fraction:
        return VAL
    if unit < val_fraction + test_fraction:
        return TEST
    return TRAIN


# A split is a list of (split, start, end) frame ranges per video, decided at ingest and stored
# with the video (manifest and sample metadata), so every stage reads the same ranges.
Segment = tuple[int, int, int]


def split_mode(num_videos: int, val_fraction: float, test_fraction: float, wanted: str) -> str:
    """ "video" (whole videos per split) or "time" (segments within every video). Auto takes
    "video" once each held-out split can expect three videos or more."""
    if wanted != "auto":
        return wanted
    held_out = [fraction for fraction in (val_fraction, test_fraction) if fraction > 0]
    return "video" if all(num_videos * fraction >= 3 for fraction in held_out) else "time"


def video_segments(
    key: str, num_frames: int, mode: str, val_fraction: float, test_fraction: float, gap: int
) -> list[Segment]:
    """The video's frames by split. By time: train, then val, then test, each held-out part
    after a gap of `gap` frames that belongs to no split, so that no clip of one split sits
    right beside a clip of another."""
    if mode == "video":
        return [(split_of(key, val_fraction, test_fraction), 0, num_frames)]
    parts = [(VAL, val_fraction), (TEST, test_fraction)]
    gaps = gap * sum(1 for _, fraction in parts if fraction > 0)
    usable = max(0, num_frames - gaps)
    lengths = {split: int(round(usable * fraction)) for split, fraction in parts}
    segments, position = [(TRAIN, 0, usable - sum(lengths.values()))], usable - sum(lengths.values())
    for split, fraction in parts:
        if fraction > 0:
            position += gap
            segments.append((split, position, position + lengths[split]))
            position += lengths[split]
    return [segment for segment in segments if segment[2] > segment[1]]


def stored_segments(key: str, video: dict, val_fraction: float, test_fraction: float) -> list[Segment]:
    """A manifest's or sample's segments; a raw store written before segments is split by video."""
    if "segments" in video:
        return [tuple(segment) for segment in video["segments"]]
    return video_segments(key, video["num_frames"], "video", val_fraction, test_fraction, 0)


def stored_shots(video: dict) -> list[tuple[int, int]]:
    return [tuple(shot) for shot in video.get("shots", [(0, video["num_frames"])])]
