"""This machine's speed, measured, and the time a run can be planned by.

Machines of one kind differ up to 3x in matmul rate, so a run's time is stated against the
rate it was measured at: a config's reference run (`expected`: each stage's seconds and the
matmul rates of the machine it ran on) scales to this machine by the rate of the precision
each stage multiplies in. Figures are set by step budgets, so only the time scales.
"""

from __future__ import annotations

import time

import torch

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_rate(device: str, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """FLOP/s of the best square matmul size here (each size timed for about `seconds`/4)."""
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
        best = max(best, 2 * size**3 * count / (time.perf_counter() - started))
    return best


def expected_seconds(
    reference_seconds: dict[str, float],
    reference_gflops: dict[str, float],
    gflops: dict[str, float],
    precision_of: dict[str, str],
) -> dict[str, float]:
    """Each stage's reference seconds scaled by how much faster the reference machine multiplies
    in the stage's precision (`precision_of`, fp32 where a stage is not named) than this one."""
    scaled = {}
    for stage, seconds in reference_seconds.items():
        precision = precision_of.get(stage, "fp32")
        if precision not in reference_gflops or precision not in gflops:
            precision = "fp32"
        scaled[stage] = seconds * reference_gflops[precision] / gflops[precision]
    return scaled
