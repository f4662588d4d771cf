"""What every stage returns, and the errors a stage raises for bad input."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from jobs.config import PipelineConfig
from pipeline.clips import clip_windows, longest_stretch
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


@dataclass
class ClipTally:
    """Each split's clips that the raw manifest's videos will give encode, tallied as the shards'
    videos pass; and the kept videos that give none (too short for a clip once split and cut)."""

    cfg: PipelineConfig
    counts: Counter = field(default_factory=Counter)
    clipless: int = 0
    named: list[str] = field(default_factory=list)  # the first few clipless videos, with why

    def add(self, videos: list[dict]) -> None:
        data = self.cfg.data
        fractions = (data.val_fraction, data.test_fraction)
        stride = self.cfg.encode.clip_stride or data.clip_frames
        for video in videos:
            _, splits, step = clip_windows(video, data.clip_frames, stride, self.cfg.encode.fps, fractions)
            self.counts.update(splits)
            if not splits:
                self.clipless += 1
                if len(self.named) < 5:
                    needed = (data.clip_frames - 1) * step + 1
                    longest = longest_stretch(video, fractions)
                    self.named.append(
                        f"{video['key']} ({video['num_frames']} frames; its longest stretch inside one shot "
                        f"and one split is {longest}, a clip needs {needed})"
                    )

    def clipless_note(self) -> str:
        if not self.clipless:
            return ""
        more = ", …" if self.clipless > len(self.named) else ""
        return f"; {self.clipless} kept videos give no clip: {', '.join(self.named)}{more}"


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
