"""What every stage returns, and the errors a stage raises for bad input."""

from __future__ import annotations

from dataclasses import dataclass, field


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
