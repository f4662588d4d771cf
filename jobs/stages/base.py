"""What every stage returns, and the errors a stage raises for bad input."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from jobs.config import PipelineConfig
from pipeline.clips import clip_windows
from pipeline.splits import SPLIT_CODES, SPLIT_NAMES, TRAIN, VAL


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


def split_clip_counts(cfg: PipelineConfig, videos: list[dict]) -> Counter:
    """How many clips of each split the raw manifest's `videos` will give encode."""
    fractions = (cfg.data.val_fraction, cfg.data.test_fraction)
    stride = cfg.encode.clip_stride or cfg.data.clip_frames
    counts: Counter = Counter()
    for video in videos:
        counts.update(clip_windows(video, cfg.data.clip_frames, stride, cfg.encode.fps, fractions)[1])
    return counts


def check_splits(cfg: PipelineConfig, counts: Counter, num_videos: int, mode: str) -> str:
    """Clips per split (`counts`, of `num_videos` kept videos), as a phrase; a split a later stage
    needs that would be empty is an input error now, not after the hours of training before the
    stage that needs it."""
    fractions = (cfg.data.val_fraction, cfg.data.test_fraction)
    needed = {TRAIN, VAL}  # the training stages train on one and evaluate on the other
    if not cfg.generate.videos:  # generate continues a split of the store unless given videos
        needed.add(SPLIT_CODES[cfg.generate.split])
    found = ", ".join(f"{name} {counts[code]}" for code, name in SPLIT_NAMES.items())
    by = f"by {mode}" + (
        " (data.split_by)" if mode == cfg.data.split_by else ", chosen by data.split_by=auto"
    )
    empty = [SPLIT_NAMES[code] for code in sorted(needed) if counts[code] == 0]
    if empty:
        raise StageInputError(
            f"data.val_fraction/test_fraction: given {fractions[0]}/{fractions[1]}; split {by}, the "
            f"{num_videos} videos kept give the {' and '.join(empty)} split no clip (clips: {found}) and "
            "a later stage needs it: change the fractions or data.split_by, or bring more videos"
        )
    return f"clips {found}, split {by}"
