"""What every stage returns, and the errors a stage raises for bad input."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from jobs.config import PipelineConfig
from pipeline.splits import SPLIT_CODES, SPLIT_NAMES, TRAIN, VAL, split_of


class StageInputError(Exception):
    """The stage's inputs are unusable (a config key points at nothing usable); exit code 2."""

    def __init__(self, message: str, stage: str | None = None):
        super().__init__(message)
        self.stage = stage  # filled in by the runner


@dataclass
class StageResult:
    stage: str
    inputs: dict[str, str] = field(default_factory=dict)  # name -> URI
    outputs: dict[str, str] = field(default_factory=dict)  # name -> URI
    metrics: dict[str, float] = field(default_factory=dict)
    summary: str = ""


def check_splits(cfg: PipelineConfig, keys: list[str], what: str) -> str:
    """Videos per split, as a phrase; a split a later stage needs that would be empty is an input
    error now, not after the hours of training before the stage that needs it."""
    counts = Counter(split_of(key, cfg.data.val_fraction, cfg.data.test_fraction) for key in keys)
    needed = {TRAIN, VAL}  # the training stages train on one and evaluate on the other
    if not cfg.generate.videos:  # generate continues a split of the store unless given videos
        needed.add(SPLIT_CODES[cfg.generate.split])
    found = ", ".join(f"{name} {counts[code]}" for code, name in SPLIT_NAMES.items())
    empty = [SPLIT_NAMES[code] for code in sorted(needed) if counts[code] == 0]
    if empty:
        raise StageInputError(
            f"data.val_fraction/test_fraction: given {cfg.data.val_fraction}/{cfg.data.test_fraction}; "
            f"of the {len(keys)} {what}, the {' and '.join(empty)} split would be empty ({found}) and a "
            "later stage needs it: change the fractions or bring more videos"
        )
    return found
