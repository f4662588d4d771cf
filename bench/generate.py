"""Generation speed: the key/value-cached rollout against the original's re-run per frame.

Same model, same prompts, deterministic mode, one thread as the generate stage's actors run
(`--threads` to change it): frames/s of the cached rollout (the prompt in
one pass, then one step per frame over a ring of the last `max_frames` frames) and of the
original's way (re-running the last `max_frames - 1` frames for every new frame), and their
ratio, at P = 15, K = 5 and P = 10, K = 100, at batch 1 and batch 8. Then the cost of each new
frame as K grows from 5 to 200 (the rollout's loop after the prompt's one pass, per frame; the
best of three). With the ring it is flat; the largest is printed as a ratio to the smallest.

    .venv/bin/python bench/generate.py [--dynamics out/demo/dynamics]

Without a trained checkpoint it uses a freshly initialised model of the demo config's shape;
speed does not depend on the weights.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dynamics.checkpoint import load_dynamics
from dynamics.model import STTransformer
from dynamics.rollout import rollout, rollout_uncached
from jobs.config import load_config
from tokenizer.model import make_quantizer

REPO = Path(__file__).resolve().parents[1]


def demo_model() -> STTransformer:
    cfg = load_config(REPO / "configs" / "demo.yaml")
    arch = cfg.tokenizer.model
    torch.manual_seed(0)
    quantizer = make_quantizer(arch)  # its code vectors and levels, as a checkpoint's would be
    codebook, levels = quantizer.codebook.detach(), quantizer.code_levels
    return STTransformer(cfg.dynamics.model, codebook, (arch.grid, arch.grid), levels)


def best_of(runs: int, fn, *args, **kwargs) -> float:
    """The fastest of `runs` calls, in seconds (the least disturbed by the rest of the machine)."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn(*args, **kwargs)
        times.append(time.perf_counter() - started)
    return min(times)


STEPS = (5, 20, 50, 100, 200)


@torch.no_grad()
def step_seconds(model: STTransformer, prompt: torch.Tensor, steps: int) -> float:
    """Seconds per new frame of a rollout of `steps` frames, its prompt's one pass left out:
    `rollout`'s own loop (read the codes, step the ring cache), timed from the first new frame."""
    cache = model.new_cache()
    out = model.prefill(prompt, cache, deterministic=True)
    started = time.perf_counter()
    for _ in range(steps):
        out = model.step(model.to_codes(out), cache, deterministic=True)
    return (time.perf_counter() - started) / steps


def prompts(model: STTransformer, batch: int, frames: int, seed: int) -> torch.Tensor:
    height, width = model.grid
    return torch.randint(
        0, model.codebook_size, (batch, frames, height, width), generator=torch.Generator().manual_seed(seed)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="cached vs re-run rollout, and the cost per frame")
    parser.add_argument("--dynamics", type=Path, default=REPO / "out" / "demo" / "dynamics")
    parser.add_argument("--runs", type=int, default=3, help="timings per figure; the fastest is kept")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (the generate stage's actors use 1)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if (args.dynamics / "model.safetensors").exists():
        model, _ = load_dynamics(args.dynamics)
        source = str(args.dynamics)
    else:
        model, source = demo_model().eval(), "a freshly initialised demo-shaped model"
    height, width = model.grid
    print(
        f"model: {source}; grid {height}x{width}, {model.config.n_layers} layers, d_model "
        f"{model.config.d_model}, {model.config.temporal_positions} temporal positions, window "
        f"{model.config.max_frames}; {args.threads} thread(s)"
    )
    rollout(model, prompts(model, 1, 2, 0), 1, deterministic=True)  # warm-up

    for prompt_frames, steps in [(15, 5), (10, 100)]:
        for batch in (1, 8):
            prompt = prompts(model, batch, prompt_frames, 0)
            runs = 1 if steps > 50 else 3 * args.runs  # short ones are timed more: less noise
            cached = best_of(runs, rollout, model, prompt, steps, deterministic=True)
            rerun = best_of(runs, rollout_uncached, model, prompt, steps, deterministic=True)
            frames = batch * steps
            print(
                f"P={prompt_frames:2d} K={steps:3d} batch {batch}: cached {frames / cached:8.1f} frames/s, "
                f"re-run {frames / rerun:7.1f} frames/s; cached / re-run {rerun / cached:5.1f}x"
            )

    for batch in (1, 8):
        prompt = prompts(model, batch, 10, 1)
        per_frame = {steps: min(step_seconds(model, prompt, steps) for _ in range(3)) for steps in STEPS}
        listed = ", ".join(f"K={steps} {seconds * 1e3:.2f}" for steps, seconds in per_frame.items())
        flat = max(per_frame.values()) / min(per_frame.values())
        print(
            f"cost per new frame at batch {batch} (P=10, ms per frame of the batch): {listed}; "
            f"largest / smallest {flat:.2f}x"
        )


if __name__ == "__main__":
    main()
