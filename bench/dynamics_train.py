"""Dynamics training throughput: tokens/s and FLOPs per token, measured in one run.

Times training steps (forward, backward, AdamW) of the demo config's model on
random codes of the demo's shape, counts the FLOPs of one step with PyTorch's
FlopCounterMode, and prints tokens/s and achieved FLOP/s. On a GPU it also
compares bf16 + SDPA (flash) with fp32 and reports MFU against the card's peak.
The ratio printed is against the fp32 baseline measured in the same run.

    .venv/bin/python bench/dynamics_train.py [--config configs/demo.yaml] [--steps 10] [--batch 8]
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dynamics.model import STTransformer
from jobs.config import load_config

REPO = Path(__file__).resolve().parents[1]
# dense bf16 peaks, FLOP/s, for MFU
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}


def make_model(cfg, device: str) -> STTransformer:
    grid = cfg.tokenizer.model.grid
    codebook = torch.randn(cfg.tokenizer.model.codebook_size, cfg.tokenizer.model.code_dim)
    return STTransformer(cfg.dynamics.model, codebook, (grid, grid)).to(device)


def run(model, codes, steps: int, autocast) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        with autocast():
            loss = model(codes).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    if codes.is_cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if codes.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description="dynamics training tokens/s and FLOPs per token")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=None)
    args = parser.parse_args()

    cfg = load_config(args.config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = make_model(cfg, device)
    batch = args.batch or cfg.dynamics.batch_size
    grid = cfg.tokenizer.model.grid
    frames = cfg.data.clip_frames
    codes = torch.randint(0, cfg.tokenizer.model.codebook_size, (batch, frames, grid, grid), device=device)
    tokens = batch * frames * grid * grid

    with FlopCounterMode(display=False) as counter:
        model(codes).loss.backward()
    model.zero_grad(set_to_none=True)
    flops_per_token = counter.get_total_flops() / tokens
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)

    print(
        f"model: {params / 1e6:.2f} M parameters, {cfg.dynamics.model.n_layers} layers, "
        f"d_model {cfg.dynamics.model.d_model}, head {cfg.dynamics.model.head}"
    )
    print(f"batch: {batch} clips x {frames} frames x {grid}x{grid} codes = {tokens} tokens; device {device}")
    print(f"FLOPs per token (forward + backward): {flops_per_token / 1e6:.2f} MFLOP")

    fp32 = run(model, codes, args.steps, nullcontext)
    achieved = flops_per_token * tokens / fp32
    print(f"fp32      : {tokens / fp32:10.0f} tokens/s  {achieved / 1e12:7.3f} TFLOP/s  (baseline)")
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((value for key, value in PEAKS.items() if key in name), None)

        def bf16():
            return torch.autocast("cuda", dtype=torch.bfloat16)

        mixed = run(model, codes, args.steps, bf16)
        achieved = flops_per_token * tokens / mixed
        mfu = f", MFU {achieved / peak:.1%} of {name}'s {peak / 1e12:.0f} TFLOP/s" if peak else ""
        print(f"bf16+SDPA : {tokens / mixed:10.0f} tokens/s  {achieved / 1e12:7.3f} TFLOP/s{mfu}")
        print(f"ratio bf16/fp32: {fp32 / mixed:.2f}x")
    else:
        print("ratio: no GPU here, so only the fp32 baseline ran (bf16/SDPA-flash and MFU need a GPU)")


if __name__ == "__main__":
    main()
