"""What every typed settings class shares: pydantic validation, and problems that name their key.

The pipeline config (`jobs/config.py`) and the model settings (`tokenizer/settings.py`,
`dynamics/settings.py`) are validated by the same pydantic machinery, so a bad value
anywhere is reported as `dotted.key: given X, expected Y` without any error text parsed.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from pydantic_core import PydanticCustomError

# Unknown keys are errors: a typo must not silently fall back to a default. Assignments are
# checked like construction, so code that sets a value cannot slip past a rule either.
STRICT = ConfigDict(extra="forbid", validate_assignment=True, validate_default=True)


def problem(key: str, given: Any, expected: str) -> PydanticCustomError:
    """A cross-field error naming the offending key relative to the class that raises it."""
    return PydanticCustomError(
        "stvideo_problem", "{key}: {expected}", {"key": key, "given": given, "expected": expected}
    )


@dataclass(config=STRICT)
class TrainingRun:
    """What a training run of either model takes; `TokenizerSettings` and `DynamicsSettings`
    add their own (steps, batches, learning rates, the model)."""

    max_minutes: float | None = Field(
        None,
        gt=0,
        description="a wall-clock guard besides the steps: the run stops (evaluating and saving) at "
        "whichever comes first, says so, and the LR decays over it; a resumed run spends only what is left",
    )
    warmup_steps: int = Field(50, ge=0, description="linear warmup of the learning rate, in steps")
    grad_accum: int = Field(1, ge=1, description="batches whose gradients make one step")
    grad_clip: float = Field(1.0, gt=0, description="clip the gradient's norm to this")
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 on a GPU that has it (else fp16) and on a CPU that multiplies it in "
        "hardware, else fp32 (no)",
    )
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto", description="where it trains; auto: CUDA, then MPS (Apple silicon), then the CPU"
    )
    log_every: int = Field(10, ge=1, description="steps between logged training metrics")
    eval_every: int = Field(200, ge=1, description="steps between validations")
    checkpoint_every: int = Field(
        200, ge=1, description="steps between checkpoints a killed run resumes from"
    )
    seed: int = Field(
        0, description="seed of the weights' initialisation, the data order and every draw in training"
    )
