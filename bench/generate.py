"""Generation speed: the key/value-cached rollout vs the original's full re-run per frame.

Same model, same prompts, deterministic mode (so both produce the same codes):
frames/s of each at P=15, K=5 and P=10, K=30, their ratio, and the cost of each
new frame as K grows (flat with the cache until the context window is full).

    .venv/bin/python bench/generate.py [--dynamics out/demo/dynamics] [--batch 8]

Without a trained checkpoint it uses a freshly initialised model of the demo
config's shape; speed does not depend on the weights.
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

REPO = Path(__file__).resolve().parents[1]


def demo_model() -> STTransformer:
    cfg = load_config(REPO / "configs" / "demo.yaml")
    arch = cfg.tokenizer.model
    torch.manual_seed(0)
    return STTransformer(
        cfg.dynamics.model, torch.randn(arch.codebook_size, arch.code_dim), (arch.grid, arch.grid)
    )


def timed(fn, *args, **kwargs) -> tuple[float, torch.Tensor]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description="cached vs uncached rollout")
    parser.add_argument("--dynamics", type=Path, default=REPO / "out" / "demo" / "dynamics")
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)

    if (args.dynamics / "model.safetensors").exists():
        model, _ = load_dynamics(args.dynamics)
        source = str(args.dynamics)
    else:
        model, source = demo_model().eval(), "freshly initialised demo-shaped model"
    height, width = model.grid
    print(
        f"model: {source}; grid {height}x{width}, {model.config.n_layers} layers, "
        f"d_model {model.config.d_model}, {model.config.max_frames} temporal positions; batch {args.batch}"
    )

    for prompt_frames, steps in [(15, 5), (10, 30)]:
        prompt = torch.randint(
            0,
            model.codebook_size,
            (args.batch, prompt_frames, height, width),
            generator=torch.Generator().manual_seed(0),
        )
        rollout(model, prompt[:1, :2], 1, deterministic=True)  # warm-up
        cached_s, cached = timed(rollout, model, prompt, steps, deterministic=True)
        full_s, full = timed(rollout_uncached, model, prompt, steps, deterministic=True)
        frames = args.batch * steps
        same = "identical codes" if torch.equal(cached, full) else "codes differ (float near-ties)"
        print(
            f"P={prompt_frames:2d} K={steps:2d}: cached {frames / cached_s:8.1f} frames/s, "
            f"re-run {frames / full_s:8.1f} frames/s, ratio {full_s / cached_s:.1f}x ({same})"
        )

    print("cost per new frame as K grows (P=10), seconds per frame of the batch:")
    prompt = torch.randint(
        0, model.codebook_size, (args.batch, 10, height, width), generator=torch.Generator().manual_seed(1)
    )
    for steps in (5, 10, 20, 40):
        cached_s, _ = timed(rollout, model, prompt, steps, deterministic=True)
        full_s, _ = timed(rollout_uncached, model, prompt, steps, deterministic=True)
        print(f"  K={steps:2d}: cached {cached_s / steps:.4f}   re-run {full_s / steps:.4f}")


if __name__ == "__main__":
    main()
