"""The training-loop skeleton both stages share, and its pieces: the step counter
that is checkpointed, the precision choice, readers fast-forwarded on resume, and a
training state that is swapped in whole.

A stage sets up its models, optimizers and data, then hands `run_loop` a function
that takes one (micro-)step, an evaluation and a checkpoint writer; the loop owns the
cadence (log, evaluate, checkpoint every so many steps and at the last), the
throughput, the progress bar and the ending of a run resumed after it finished.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast
from torch.utils.data import DataLoader, IterableDataset

from common import logs
from common.progress import progress_bar

MetricsLogger = Callable[[dict[str, float], int], None]


PROGRESS_FILE = "progress.json"
logger = logs.get("training")


@dataclass
class Budget:
    """A wall-clock limit on a training run (`max_minutes`; None: none) and the seconds it has
    run, saved with the step counter so that a resumed run spends only what is left. The LR
    schedule decays by whichever comes first, the steps or the minutes."""

    minutes: float | None = None
    seconds: float = 0.0

    def fraction(self) -> float:
        """The share of the budget spent (0 without one)."""
        return self.seconds / (60.0 * self.minutes) if self.minutes else 0.0

    @property
    def spent(self) -> bool:
        return self.fraction() >= 1.0


class Progress:
    """The step counter, the seconds trained and the LR schedules' positions, saved beside the
    Accelerate state as JSON. Registered with Accelerate they would be pickled, and loading a
    pickle runs whatever code the file names: a resume must not trust the training folder that
    much."""

    def __init__(
        self, *schedules: torch.optim.lr_scheduler.LRScheduler, budget: Budget | None = None
    ) -> None:
        self.step = 0
        self.schedules = schedules
        self.budget = budget or Budget()

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "seconds": self.budget.seconds,
            "schedules": [schedule.state_dict() for schedule in self.schedules],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["schedules"]) != len(self.schedules):
            raise ValueError(f"{len(state['schedules'])} LR schedules saved, {len(self.schedules)} now")
        self.step = int(state["step"])
        self.budget.seconds = float(state.get("seconds", 0.0))  # states saved before budgets: none
        for schedule, saved in zip(self.schedules, state["schedules"], strict=True):
            schedule.load_state_dict(saved)


class Persistence(Protocol):
    """Where a run's checkpoints become durable. `local` is the folder the loop writes (the
    output itself on a local root, a scratch copy otherwise); `restore` makes it hold the last
    durable state before a resume (on each machine's first process), `persist` makes a fresh
    checkpoint durable (on every process: some backends synchronise there)."""

    local: Path

    def restore(self) -> None: ...

    def persist(self, step: int, summary: dict[str, float], main: bool) -> None: ...


@dataclass
class LocalFolder:
    """A run folder on a local disk: what the loop writes there is already durable."""

    local: Path

    def restore(self) -> None:
        pass

    def persist(self, step: int, summary: dict[str, float], main: bool) -> None:
        pass


def persistence_of(out: Path | str | Persistence) -> Persistence:
    """A plain folder as a `LocalFolder`; a `Persistence` as it is."""
    return LocalFolder(Path(out)) if isinstance(out, str | Path) else out


class DeviceUnavailable(ValueError):
    """The settings name a device this machine does not have."""


def pick_device(device: str = "auto") -> str:
    """`auto`: CUDA, then MPS, then the CPU; a device asked for by name must be there."""
    available = {
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "cpu": True,
    }
    if device == "auto":
        return next(name for name, present in available.items() if present)
    if not available[device]:
        raise DeviceUnavailable(f"device: given {device}; this machine has none (auto picks what it has)")
    if device == "mps" and available["cuda"]:
        raise DeviceUnavailable("device: given mps; Accelerate takes CUDA where it exists (use cuda or cpu)")
    return device


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX). There autocast to bf16
    runs the matmuls at about 4x the fp32 rate (a training step of the demo's dynamics model
    1.7x faster); elsewhere bf16 is emulated, slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no way to ask without trying; stay in fp32
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", flags) is not None


def resolve_precision(mixed_precision: str, device: str) -> str:
    """`auto`: bf16 on a GPU that has it (else fp16), and on a CPU that multiplies bf16 in
    hardware; fp32 ("no") elsewhere."""
    if mixed_precision != "auto":
        return mixed_precision
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if device == "cpu" and cpu_has_bf16() else "no"


def make_accelerator(mixed_precision: str, grad_accum: int, device: str = "auto") -> Accelerator:
    device = pick_device(device)
    mixed_precision = resolve_precision(mixed_precision, device)
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision") not in (None, mixed_precision):
        # `stvideo run` trains the tokenizer, then the dynamics model, in one process, each in
        # its own precision; Accelerate keeps one state per process and refuses another
        # precision, so the previous stage's goes (the process group, PartialState, stays)
        AcceleratorState._reset_state(reset_partial_state=False)
    # Accelerate takes CUDA, else MPS, unless told cpu=True; which it also needs to keep
    # torchrun's ranks on a machine with no GPU
    return Accelerator(
        cpu=device == "cpu",
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
    )


def adamw(
    parameters,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float,
    warmup: int,
    total: int,
    budget: Budget | None = None,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its warmup-cosine schedule (over `total` steps or the `budget`'s minutes,
    whichever ends first). Keep the schedule out of `accelerator.prepare`: Accelerate would
    step it once per process."""
    optimizer = torch.optim.AdamW(parameters, lr=lr, betas=betas, weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(warmup, total, budget))


def skip_per_worker(batches_done: int, workers: int, batch_size: int) -> list[int]:
    """Samples each DataLoader worker already delivered: batches come round-robin from workers."""
    workers = max(1, workers)
    return [
        (batches_done // workers + (1 if worker < batches_done % workers else 0)) * batch_size
        for worker in range(workers)
    ]


def resume(accelerator: Accelerator, out_dir: Path, progress: Progress) -> bool:
    """Load `out_dir/train_state` when there is one; True when it did."""
    state_dir = out_dir / "train_state"
    if not state_dir.exists() and state_dir.with_suffix(".old").exists():
        state_dir = state_dir.with_suffix(".old")  # killed between the two renames in `save_state`
    if not state_dir.exists():
        return False
    try:
        # Accelerate loads the tensors with weights_only=True; the rest is JSON
        accelerator.load_state(str(state_dir))
        progress.load_state_dict(json.loads((state_dir / PROGRESS_FILE).read_text()))
    except (RuntimeError, KeyError, ValueError, FileNotFoundError) as err:
        raise RuntimeError(
            f"{state_dir} holds the state of a different model or optimizer setup ({str(err)[:200]}); "
            "train into another root, or delete that folder to start over"
        ) from None
    return True


def save_state(accelerator: Accelerator, out_dir: Path, progress: Progress) -> None:
    """The resumable state, written beside the old one and swapped in by renames,
    so a run killed while saving still finds a whole state to resume from."""
    state_dir = out_dir / "train_state"
    fresh, old = state_dir.with_suffix(".tmp"), state_dir.with_suffix(".old")
    if accelerator.is_main_process:
        shutil.rmtree(fresh, ignore_errors=True)  # left by a save that was killed
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(fresh))
    except BaseException:
        if accelerator.is_main_process:  # a full disk: give back what the half-written state took
            shutil.rmtree(fresh, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()  # every rank's RNG state is in before the swap
    if accelerator.is_main_process:
        (fresh / PROGRESS_FILE).write_text(json.dumps(progress.state_dict()))
        if state_dir.exists():
            state_dir.rename(old)
        fresh.rename(state_dir)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def warmup_cosine(warmup: int, total: int, budget: Budget | None = None, floor: float = 0.1):
    """LR multiplier: linear warmup, then cosine decay to `floor` at step `total` or when the
    `budget` is spent, whichever is nearer."""

    def multiplier(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, max((step - warmup) / max(1, total - warmup), budget.fraction() if budget else 0))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def resume_progress(
    accelerator: Accelerator,
    out: Path | Persistence,
    name: str,
    *schedules: torch.optim.lr_scheduler.LRScheduler,
    budget: Budget | None = None,
) -> Progress:
    """The step counter, the `budget`'s seconds and `schedules`, loaded with the rest of the
    state from `train_state` when a run stopped there (brought back by `out.restore` first)."""
    out = persistence_of(out)
    if accelerator.is_local_main_process:
        out.local.mkdir(parents=True, exist_ok=True)
        out.restore()
    accelerator.wait_for_everyone()
    progress = Progress(*schedules, budget=budget)
    if resume(accelerator, out.local, progress) and accelerator.is_main_process:
        logger.info(f"{name}: resumed from {out.local / 'train_state'} at step {progress.step}")
    return progress


def batches(
    dataset: IterableDataset, batch_size: int | None, num_workers: int, seed: int, collate_fn=None
) -> Iterator:
    """Batches of this rank's reader (`batch_size` None: the dataset yields them batched). The
    loader has its own generator: starting it draws a seed, and from the global RNG that draw
    would shift a resumed run's random numbers away from the uninterrupted run's."""
    generator = torch.Generator().manual_seed(seed)
    return iter(
        DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=num_workers,
            collate_fn=collate_fn,
            generator=generator,
        )
    )


class Cadence(Protocol):
    """The settings `run_loop` reads (both stages' settings have them)."""

    max_steps: int
    max_minutes: float | None
    log_every: int
    eval_every: int
    checkpoint_every: int


@dataclass
class StepResult:
    """What an optimizer step reports to the loop."""

    items: int  # frames or tokens in this rank's micro-batch
    metrics: Callable[[], dict[str, float]]  # what to log, computed on logging steps only


def reached(progress: Progress, cadence: Cadence) -> dict[str, float]:
    """How far the run got: its steps, the config's step budget, and whether the time guard
    (`max_minutes`) ended it first (1.0), so a figure is never quietly from a shorter run."""
    cut_short = progress.budget.spent and progress.step < cadence.max_steps
    return {"steps": progress.step, "max_steps": cadence.max_steps, "stopped_by_time": float(cut_short)}


def time_guard_note(summary: dict[str, float], max_minutes: float | None) -> str:
    """What a stage's summary says of the step budget: `N of M steps`, and loudly when the time
    guard ended the run first."""
    if "steps" not in summary:
        return ""
    note = f"{int(summary['steps'])} of {int(summary.get('max_steps', summary['steps']))} steps"
    if summary.get("stopped_by_time"):
        note += (
            f" (STOPPED by the {max_minutes:g}-minute time guard, max_minutes: the figures below are "
            "from a shorter run than the config's; raise it or use a faster machine)"
        )
    return note


def checkpoints_reached(folders: dict[str, Path]) -> dict[str, dict]:
    """How far each checkpoint's model trained (`reached`: its steps, the step budget, whether the
    time guard stopped it), from its metrics.json; a checkpoint without one is left out."""
    keys = ("steps", "max_steps", "stopped_by_time")
    found = {}
    for name, folder in folders.items():
        try:
            summary = json.loads((Path(folder) / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        found[name] = {key: summary[key] for key in keys if key in summary}
    return found


def cut_short_note(trained: dict[str, dict]) -> str:
    """A warning for a summary when a model's time guard ended its training early; else ''."""
    cut_short = [name for name, reached in trained.items() if reached.get("stopped_by_time")]
    if not cut_short:
        return ""
    return (
        f"; NOTE: the {' and the '.join(cut_short)} training stopped at its time guard before its "
        "step budget, so these figures are from a shorter run than the config's"
    )


def grouped(group: str, metrics: dict[str, float]) -> dict[str, float]:
    """Metric names under a chart section, as MLflow (like TensorBoard and W&B) groups them by
    their prefix: `train/loss`, `val/psnr` (a name's own `val_` is dropped: `val/loss`)."""
    return {f"{group}/{key.removeprefix(group + '_')}": value for key, value in metrics.items()}


def listed(summary: dict[str, float]) -> str:
    """A summary as one line: `name value, ...`."""
    return ", ".join(f"{key} {value:.4g}" for key, value in summary.items())


def main_clock(accelerator: Accelerator, budget: Budget, seconds: float) -> float:
    """Seconds trained, the main process's: every rank must stop at the same step and decay its
    LR alike, so one clock decides."""
    if budget.minutes and accelerator.num_processes > 1:
        seconds = float(broadcast(torch.tensor([seconds], device=accelerator.device), from_process=0))
    return seconds


def checkpoint(
    accelerator: Accelerator,
    out: Persistence,
    progress: Progress,
    summary: dict[str, float],
    write_checkpoint: Callable[[], None],
) -> None:
    """Every rank's resumable state; the main process's checkpoint and `metrics.json` (the last
    summary); then made durable (`out.persist`)."""
    save_state(accelerator, out.local, progress)
    if accelerator.is_main_process:
        write_checkpoint()
        if summary:
            (out.local / "metrics.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()
    out.persist(progress.step, summary, accelerator.is_main_process)


def run_loop(
    accelerator: Accelerator,
    progress: Progress,
    cadence: Cadence,
    out: Path | Persistence,
    *,
    name: str,
    unit: str,
    step: Callable[[], StepResult | None],
    evaluate: Callable[[], dict[str, float]],
    write_checkpoint: Callable[[], None],
    log_metrics: MetricsLogger | None = None,
    describe: Callable[[dict[str, float]], str] | None = None,
    bar_keys: tuple[str, ...] = ("loss",),
) -> dict[str, float]:
    """Call `step` until `progress.step` reaches `cadence.max_steps` or the progress's budget
    of minutes is spent; return the last summary (with the `steps` reached).

    `step` trains on one micro-batch and returns None while gradients accumulate, or a
    `StepResult` once the optimizers stepped (it steps the LR schedules too). Then the loop
    counts the step and, every so many steps and at the last: logs the step's metrics and the
    throughput (`{unit}_per_s`) under `train/`; has the main process `evaluate` (logged under
    `val/`; the summary, with the throughput and steps reached, printed by `describe`); saves
    the resumable state, the main process's `write_checkpoint` and `metrics.json`, then
    `out.persist`s them. A run resumed after its last step only evaluates."""
    out = persistence_of(out)
    main = accelerator.is_main_process

    def log(metrics: dict[str, float]) -> None:
        if main and log_metrics:
            log_metrics(metrics, progress.step)

    budget = progress.budget

    def finished() -> bool:
        return progress.step >= cadence.max_steps or budget.spent

    def due(every: int) -> bool:
        return progress.step % every == 0 or finished()

    summary: dict[str, float] = {}
    items, seconds = 0, 0.0
    spent_before, loop_started = budget.seconds, time.perf_counter()
    bar = progress_bar(total=cadence.max_steps, initial=progress.step, desc=name, disable=not main)
    while not finished():
        started = time.perf_counter()
        result = step()
        if result is None:  # gradients are still accumulating
            continue
        progress.step += 1
        items += result.items * accelerator.num_processes * accelerator.gradient_accumulation_steps
        seconds += time.perf_counter() - started
        budget.seconds = main_clock(accelerator, budget, spent_before + time.perf_counter() - loop_started)
        bar.update(1)
        throughput = {f"{unit}_per_s": items / max(seconds, 1e-9)}
        if budget.spent and main:
            logger.info(
                f"{name}: the {budget.minutes:g}-minute budget is spent at step {progress.step} "
                f"of {cadence.max_steps}; evaluating and saving"
            )

        if due(cadence.log_every):
            values = {**result.metrics(), **throughput}
            bar.set_postfix({key: f"{values[key]:.4g}" for key in bar_keys}, refresh=False)
            log(grouped("train", values))
        if due(cadence.eval_every):
            if main:
                evaluated, trained = evaluate(), {**throughput, **reached(progress, cadence)}
                summary = {**evaluated, **trained}
                log({**grouped("val", evaluated), **grouped("train", trained)})
                logger.info(f"step {progress.step}: {(describe or listed)(summary)}")
            accelerator.wait_for_everyone()
        if due(cadence.checkpoint_every):
            checkpoint(accelerator, out, progress, summary, write_checkpoint)
    bar.close()
    if not summary and main:  # resumed a finished run: report what the checkpoint holds
        summary = evaluate()
    accelerator.wait_for_everyone()
    return summary
