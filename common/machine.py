"""This machine's speed, measured, and the time a run can be planned by.

Machines of one kind differ up to 3x in matmul rate, so a run's time is stated against the
rate it was measured at: a config's reference runs (`expected`: each stage's seconds, the
matmul rates of the machine it ran on and the precision each stage multiplied in) scale to this
machine by the rate of that precision. A CPU without bf16 hardware trains in fp32, so a config
keeps a reference run from such a machine too. Figures are set by step budgets, so only the time
scales.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Protocol

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


class ReferenceRun(Protocol):
    """A run to plan by (a config's `expected` entries): each stage's seconds, the machine's
    matmul rates (GFLOP/s) and the precision each stage multiplied in (fp32 where not named)."""

    stage_seconds: dict[str, float]
    matmul_gflops: dict[str, float]
    precision: dict[str, str]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: str, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """FLOP/s of the best square matmul size here (each size timed for about `seconds`/4; no
    larger size once one product outlasts that: bf16 without hardware support is 100x slower)."""
    best = 0.0
    for size in (512, 1024, 2048) if device == "cpu" else (4096, 8192):
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        a @ b  # warm-up
        synchronize(device)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 4:
            a @ b
            count += 1
        synchronize(device)
        elapsed = time.perf_counter() - started
        best = max(best, 2 * size**3 * count / elapsed)
        if count == 1 and elapsed > seconds / 4:
            break
    return best


def expected_seconds(
    stages: Sequence[str],
    references: Sequence[ReferenceRun],
    gflops: dict[str, float],
    precision_of: dict[str, str],
) -> dict[str, tuple[float, str]]:
    """Each of `stages`' seconds here (those a reference ran) and a caveat (else ""): from the
    reference run that multiplied in the precision this machine will (`precision_of`, fp32 where
    a stage is not named) at the rate nearest this machine's, scaled by the ratio of the two
    rates. A stage no reference ran in this precision scales from the first that ran it, by its
    rate in its own precision over this machine's in ours, with a caveat: a step is seldom bound
    by matmuls alone, so across precisions that ratio is a rough guess."""
    plan: dict[str, tuple[float, str]] = {}
    for stage in stages:
        here = precision_of.get(stage, "fp32")
        ran = [run for run in references if stage in run.stage_seconds]
        if not ran:
            continue
        same = [run for run in ran if run.precision.get(stage, "fp32") == here]
        if same:
            run = min(same, key=lambda run: abs(math.log(run.matmul_gflops[here] / gflops[here])))
        else:
            run = ran[0]
        theirs = run.precision.get(stage, "fp32")
        caveat = "" if same else f"{stage}: the reference multiplied in {theirs}, this machine in {here}"
        plan[stage] = run.stage_seconds[stage] * run.matmul_gflops[theirs] / gflops[here], caveat
    return plan
