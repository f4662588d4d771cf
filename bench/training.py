"""Training loops against this machine's own limit: model FLOP utilisation, measured in one run.

The limit is the dense matmul rate of this machine in the precision each loop trains in
(`mixed_precision: auto`: bf16 on a GPU, and on a CPU that multiplies bf16 in hardware; else
fp32), measured first: square matmuls of the size that runs fastest. Then each training loop's step
(forward, backward, AdamW) of the config's models, on inputs of its shape, is timed and its
FLOPs counted by PyTorch's FlopCounterMode:

- train-dynamics: the Spatial-Temporal Transformer on random codes [batch, clip_frames, h, w];
- train-tokenizer: the VQGAN (reconstruction + quantizer loss, no discriminator, as the demo's
  steps run) on random frames [batch_videos x frames_per_video, C, H, W].

It prints tokens/s (frames/s), the achieved FLOP/s and its ratio to the matmul rate of its
precision: an MFU for CPUs (on a GPU, against the card's listed peak as well). Then the steps
as the stages take them now against the way they took them before, timed in alternating rounds:
the tokenizer channels-last against contiguous; the dynamics step with the config's random
lengths and rollouts, its clips cut to their longest length, against clips fed whole; and that
step with separable Gaussian layers against full ones (`dynamics.model.gaussian_conv`).

    .venv/bin/python bench/training.py [--config configs/demo.yaml] [--steps 10]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from common.machine import matmul_rate, synchronize
from common.training import resolve_precision
from dynamics.model import STTransformer
from dynamics.train import step_batch
from jobs.config import load_config
from tokenizer.model import VQGAN, make_quantizer

REPO = Path(__file__).resolve().parents[1]
OPTIMIZERS: dict[int, torch.optim.Optimizer] = {}  # one per model, kept across the timed steps
PEAKS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}  # dense bf16, FLOP/s


def timed_steps(step, steps: int, device: str) -> float:
    """Seconds per call of `step`, after one warm-up call."""
    step()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - started) / steps


def measure(
    name: str, model, loss_of, items: int, unit: str, steps: int, device: str, autocast, limit: float
):
    """Times `steps` optimizer steps of loss_of(model) and prints the rate and its MFU."""
    with FlopCounterMode(display=False) as counter:
        with autocast():
            loss_of(model).backward()
    model.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    seconds = timed_steps(lambda: optimizer_step(model, loss_of, autocast), steps, device)
    achieved = flops / seconds
    print(
        f"{name:16s}: {items / seconds:9.0f} {unit}/s, {flops / items / 1e6:7.2f} MFLOP per {unit[:-1]}, "
        f"{achieved / 1e9:7.2f} GFLOP/s = {achieved / limit:.1%} of the matmul rate (MFU)"
    )
    return achieved


def precision_of(mixed_precision: str, device: str):
    """What the stage trains in (`common.training.resolve_precision`): the dtype its matmuls run
    in and the autocast that gets them there."""
    precision = resolve_precision(mixed_precision, device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    if dtype == torch.float32:
        return dtype, nullcontext
    return dtype, lambda: torch.autocast(device, dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description="training loops' FLOP/s against this machine's matmul rate")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()

    cfg = load_config(args.config)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rates: dict[torch.dtype, float] = {}

    def limit_of(dtype: torch.dtype) -> float:
        if dtype not in rates:
            rates[dtype] = matmul_rate(device, dtype)
            print(
                f"device {device}, {torch.get_num_threads()} threads; dense {dtype} matmul: "
                f"{rates[dtype] / 1e9:.1f} GFLOP/s"
            )
        return rates[dtype]

    limit_of(torch.float32)  # the reference, whatever the loops run in
    if device == "cuda":
        name = torch.cuda.get_device_name()
        peak = next((value for key, value in PEAKS.items() if key in name), None)
        if peak:
            print(
                f"(the card's listed bf16 peak: {peak / 1e12:.0f} TFLOP/s; "
                f"the bf16 matmul reaches {limit_of(torch.bfloat16) / peak:.0%})"
            )

    torch.manual_seed(0)
    arch = cfg.tokenizer.model
    grid = (arch.grid, arch.grid)
    quantizer = make_quantizer(arch)  # its code vectors and levels, as a checkpoint's would be
    codebook, levels = quantizer.codebook.detach(), quantizer.code_levels

    def dynamics_model(architecture):
        torch.manual_seed(0)
        return STTransformer(architecture, codebook, grid, levels).to(device).train()

    dynamics = dynamics_model(cfg.dynamics.model)
    batch, frames = cfg.dynamics.batch_size, cfg.data.clip_frames
    codes = torch.randint(0, arch.codebook_size, (batch, frames, *grid), device=device)
    dtype, autocast = precision_of(cfg.dynamics.mixed_precision, device)
    measure(
        f"train-dynamics ({str(dtype).removeprefix('torch.')})",
        dynamics,
        lambda model: model(codes).loss,
        batch * frames * grid[0] * grid[1],
        "tokens",
        args.steps,
        device,
        autocast,
        limit_of(dtype),
    )

    tokenizer, images, autocast = measure_tokenizer(cfg, args.steps, device, limit_of)

    # the Gaussian layers both ways (the config's and the other), to time one against the other
    kinds = {cfg.dynamics.model.gaussian_conv: dynamics}
    for kind in {"full", "separable"} - set(kinds):
        kinds[kind] = dynamics_model(dataclasses.replace(cfg.dynamics.model, gaussian_conv=kind))
    against_the_old_steps(cfg, tokenizer, images, autocast, dynamics, codes, args.steps, device, kinds)


def measure_tokenizer(cfg, steps: int, device: str, limit_of):
    """The tokenizer's step (`measure`) on random frames of its batch's shape; returns the
    model, the frames and the autocast it trains under."""
    arch, settings = cfg.tokenizer.model, cfg.tokenizer
    tokenizer = VQGAN(arch).to(device).train()
    images = torch.rand(
        settings.batch_videos * settings.frames_per_video,
        arch.in_channels,
        arch.frame_size,
        arch.frame_size,
        device=device,
    )
    dtype, autocast = precision_of(settings.mixed_precision, device)
    measure(
        f"train-tokenizer ({str(dtype).removeprefix('torch.')})",
        tokenizer,
        lambda model: tokenizer_loss_of(model, images),
        len(images),
        "frames",
        max(2, steps // 2),
        device,
        autocast,
        limit_of(dtype),
    )
    return tokenizer, images, autocast


def against_the_old_steps(
    cfg, tokenizer, images, tokenizer_autocast, dynamics, codes, steps, device, gaussian_kinds
) -> None:
    """Each stage's step as it trains now against the way it trained before, in alternating rounds."""
    print("as the stages train, against the way they trained before (ratio > 1: the first is faster):")
    channels_last = copy.deepcopy(tokenizer).to(memory_format=torch.channels_last)
    images_last = images.contiguous(memory_format=torch.channels_last)
    compare(
        "train-tokenizer, channels-last ÷ contiguous",
        lambda: optimizer_step(
            channels_last, lambda model: tokenizer_loss_of(model, images_last), tokenizer_autocast
        ),
        lambda: optimizer_step(tokenizer, lambda model: tokenizer_loss_of(model, images), tokenizer_autocast),
        max(2, steps // 2),
        device,
    )
    _, autocast = precision_of(cfg.dynamics.mixed_precision, device)
    whole = dataclasses.replace(cfg.dynamics, min_frames=None)  # every clip fed to its end
    now_steps, before_steps = iter(range(10**9)), iter(range(10**9))  # the same lengths and rollouts
    compare(
        "train-dynamics with its random lengths and rollouts, cut to the longest ÷ fed whole",
        lambda: dynamics_step(dynamics, cfg.dynamics, codes, next(now_steps), autocast),
        lambda: dynamics_step(dynamics, whole, codes, next(before_steps), autocast),
        2 * steps,  # half the steps roll out: enough of both kinds
        device,
    )
    separable, full = gaussian_kinds["separable"], gaussian_kinds["full"]
    separable_steps, full_steps = iter(range(10**9)), iter(range(10**9))
    compare(
        "train-dynamics, separable Gaussian layers ÷ full (dynamics.model.gaussian_conv)",
        lambda: dynamics_step(separable, cfg.dynamics, codes, next(separable_steps), autocast),
        lambda: dynamics_step(full, cfg.dynamics, codes, next(full_steps), autocast),
        2 * steps,
        device,
    )


def tokenizer_loss_of(model, images: torch.Tensor) -> torch.Tensor:
    out = model(images)
    return F.l1_loss(out.recon, images) + out.quant_loss


def optimizer_step(model, loss_of, autocast) -> None:
    """Forward, backward and AdamW (its state made on first use, as in training)."""
    optimizer = OPTIMIZERS.setdefault(id(model), torch.optim.AdamW(model.parameters(), lr=1e-4))
    with autocast():
        loss = loss_of(model)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def dynamics_step(model, settings, codes, step: int, autocast) -> None:
    """One step as `train-dynamics` takes it: random lengths, free-running inputs on the steps
    that roll out (`dynamics.train.step_batch`)."""
    fed, lengths, inputs = step_batch(settings, model, codes, step, rank=0, autocast=autocast)
    optimizer_step(model, lambda net: net(fed, lengths, inputs=inputs).loss, autocast)


def compare(name: str, now, before, steps: int, device: str) -> None:
    """Seconds per call of each, interleaved in rounds so that both see the same machine."""
    seconds = {"now": 0.0, "before": 0.0}
    for _ in range(2):
        for key, call in (("now", now), ("before", before)):
            seconds[key] += timed_steps(call, steps // 2, device)
    print(
        f"  {name}: {seconds['now'] / 2:.3f} s against {seconds['before'] / 2:.3f} s a step: "
        f"{seconds['before'] / seconds['now']:.2f}x"
    )


if __name__ == "__main__":
    main()
