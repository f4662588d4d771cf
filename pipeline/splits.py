"""Train/val/test split of a clip, decided by a hash of its source video's key.

Every stage that needs a split calls this one function, so a video lands in the
same split in the tokenizer's data, the latent store and the evaluation, and no
video ever straddles two splits.
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
