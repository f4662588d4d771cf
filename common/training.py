"""Pieces every Accelerate training loop here shares: the step counter that is
checkpointed, the precision choice, fast-forwarding readers on resume, and a
training state that is swapped in whole."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator


class Progress:
    """The step counter, saved and restored with the Accelerate state."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def make_accelerator(mixed_precision: str, grad_accum: int) -> Accelerator:
    if mixed_precision == "auto":
        mixed_precision = "no"
        if torch.cuda.is_available():
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    # without cpu=True, Accelerate ignores torchrun's ranks on a machine with no GPU
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
    )


def skip_per_worker(batches_done: int, workers: int, batch_size: int) -> list[int]:
    """Samples each DataLoader worker already delivered: batches come round-robin from workers."""
    workers = max(1, workers)
    return [
        (batches_done // workers + (1 if worker < batches_done % workers else 0)) * batch_size
        for worker in range(workers)
    ]


def resume(accelerator: Accelerator, out_dir: Path) -> bool:
    """Load `out_dir/train_state` when there is one; True when it did."""
    state_dir = out_dir / "train_state"
    if not state_dir.exists() and state_dir.with_suffix(".old").exists():
        state_dir = state_dir.with_suffix(".old")  # killed between the two renames in `save_state`
    if not state_dir.exists():
        return False
    try:
        accelerator.load_state(str(state_dir))
    except (RuntimeError, KeyError, ValueError) as err:
        raise RuntimeError(
            f"{state_dir} holds the state of a different model or optimizer setup ({str(err)[:200]}); "
            "train into another root, or delete that folder to start over"
        ) from None
    return True


def save_state(accelerator: Accelerator, out_dir: Path) -> None:
    """The resumable state, written beside the old one and swapped in by renames,
    so a run killed while saving still finds a whole state to resume from."""
    state_dir = out_dir / "train_state"
    fresh, old = state_dir.with_suffix(".tmp"), state_dir.with_suffix(".old")
    if accelerator.is_main_process:
        shutil.rmtree(fresh, ignore_errors=True)  # left by a save that was killed
    accelerator.wait_for_everyone()
    accelerator.save_state(str(fresh))
    accelerator.wait_for_everyone()  # every rank's RNG state is in before the swap
    if accelerator.is_main_process:
        if state_dir.exists():
            state_dir.rename(old)
        fresh.rename(state_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def warmup_cosine(warmup: int, total: int, floor: float = 0.1):
    """LR multiplier: linear warmup, then cosine decay to `floor`."""

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier
