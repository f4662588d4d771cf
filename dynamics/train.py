"""Train the Spatial-Temporal Transformer with Accelerate on codes streamed from latents.zarr.

Read top to bottom: setup (codebook, store, model), resume, the step, logging,
validation, checkpoints. No pixels are ever decoded: the data are codebook
indices, and the model embeds them with the tokenizer's frozen code vectors.
Each rank reads its own shards through `LatentClips`; the DataLoader is not
handed to Accelerate, which would dispatch or re-shard it.

The same function runs in one process, under `accelerate launch` or torchrun,
and inside Ray Train workers (`TorchTrainer`), which set up the process group
that Accelerate then joins.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.training import Progress, make_accelerator, resume, save_state, skip_per_worker, warmup_cosine
from dynamics.checkpoint import load_codebook, save_dynamics
from dynamics.model import STTransformer
from dynamics.settings import DynamicsSettings
from pipeline.latents import LatentClips, open_latents
from pipeline.splits import TRAIN, VAL

MetricsLogger = Callable[[dict[str, float], int], None]


def train_dynamics(
    settings: DynamicsSettings,
    latents_uri: str,
    tokenizer_dir: str | Path,
    out_dir: str | Path,
    log_metrics: MetricsLogger | None = None,
) -> dict[str, float]:
    out_dir = Path(out_dir)
    accelerator = make_accelerator(settings.mixed_precision, settings.grad_accum)
    main, device = accelerator.is_main_process, accelerator.device

    def log(metrics: dict[str, float], step: int) -> None:
        if main and log_metrics:
            log_metrics(metrics, step)

    # --- the tokenizer's codebook and the store it encoded (refused if another tokenizer's) ---
    codebook, tokenizer_identity, _ = load_codebook(tokenizer_dir)
    store = open_latents(latents_uri, tokenizer_identity=tokenizer_identity)
    clip_frames, grid = int(store.attrs["clip_frames"]), tuple(store.attrs["grid"])
    arch = settings.model
    if arch.max_frames < clip_frames:
        raise ValueError(
            f"model.max_frames: given {arch.max_frames}, expected at least clip_frames ({clip_frames})"
        )

    torch.manual_seed(settings.seed)
    model = STTransformer(arch, codebook, grid)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay
    )
    # Outside `prepare`: Accelerate would step it once per process.
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(settings.warmup_steps, settings.max_steps)
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    # every rank starts from the same weights (seeded above) but draws its own Gaussian-layer noise
    torch.manual_seed(settings.seed + accelerator.process_index)
    # a missing split must fail on every rank now, not on rank 0 at the first evaluation
    if not (store.group["split"][:] == VAL).any():
        raise RuntimeError("no validation clips: raise data.val_fraction or ingest more videos")
    progress = Progress()
    accelerator.register_for_checkpointing(schedule, progress)
    if resume(accelerator, out_dir) and main:
        tqdm.write(f"train-dynamics: resumed from {out_dir / 'train_state'} at step {progress.step}")

    dataset = LatentClips(
        latents_uri,
        TRAIN,
        tokenizer_identity=tokenizer_identity,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        shuffle_buffer=settings.shuffle_buffer,
        seed=settings.seed,
        repeat=True,
        skip_per_worker=skip_per_worker(
            progress.step * settings.grad_accum, settings.num_workers, settings.batch_size
        ),
    )
    # its own generator: starting a DataLoader draws a seed, and from the global RNG that draw
    # would shift the Gaussian layers' noise of a resumed run away from the uninterrupted one
    loader_seed = torch.Generator().manual_seed(settings.seed)
    batches = iter(
        DataLoader(
            dataset, batch_size=settings.batch_size, num_workers=settings.num_workers, generator=loader_seed
        )
    )

    plain = accelerator.unwrap_model(model)
    tokens_per_clip = clip_frames * grid[0] * grid[1]
    tokens, train_seconds = 0, 0.0
    summary: dict[str, float] = {}
    bar = tqdm(total=settings.max_steps, initial=progress.step, desc="train-dynamics", disable=not main)

    while progress.step < settings.max_steps:
        started = time.perf_counter()
        codes = next(batches).to(device)
        lengths = None
        if settings.min_frames:  # the original trained on 10 to 20 frames: random lengths, padded
            draw = torch.Generator().manual_seed(settings.seed * 1_000_003 + progress.step)
            lengths = torch.randint(settings.min_frames, clip_frames + 1, (len(codes),), generator=draw).to(
                device
            )

        inputs = None
        prompt = rollout_prompt(settings, codes.shape[1], progress.step, accelerator.process_index)
        if prompt is not None:
            with accelerator.autocast():
                inputs = free_running_inputs(plain, codes, prompt, settings.rollout_passes)

        with accelerator.accumulate(model):
            with accelerator.autocast():
                losses = model(codes, lengths, inputs=inputs)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue

        progress.step += 1
        schedule.step()
        tokens += len(codes) * tokens_per_clip * accelerator.num_processes * settings.grad_accum
        train_seconds += time.perf_counter() - started
        bar.update(1)
        last = progress.step == settings.max_steps

        if progress.step % settings.log_every == 0 or last:
            values = {key: float(value.detach()) for key, value in losses.items()}
            values.update(
                {"lr": schedule.get_last_lr()[0], "tokens_per_s": tokens / max(train_seconds, 1e-9)}
            )
            bar.set_postfix(loss=f"{values['loss']:.4f}")
            log(values, progress.step)
        if progress.step % settings.eval_every == 0 or last:
            if main:
                summary = {
                    **validate(plain, latents_uri, settings),
                    "tokens_per_s": tokens / max(train_seconds, 1e-9),
                }
                log(summary, progress.step)
                tqdm.write(f"step {progress.step}: " + ", ".join(f"{k} {v:.4g}" for k, v in summary.items()))
            accelerator.wait_for_everyone()
        if progress.step % settings.checkpoint_every == 0 or last:
            save_state(accelerator, out_dir)
            if main:
                save_dynamics(plain, out_dir, tokenizer_identity, {"clip_frames": clip_frames})
                if summary:
                    (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
            accelerator.wait_for_everyone()
    bar.close()
    if not summary and main:  # resumed a finished run: report what the checkpoint holds
        summary = validate(plain, latents_uri, settings)
    accelerator.wait_for_everyone()
    return summary


def rollout_prompt(settings: DynamicsSettings, frames: int, step: int, rank: int) -> int | None:
    """How many true frames this step's free-running inputs start from; None: teacher forcing."""
    draw = torch.Generator().manual_seed(settings.seed * 7_919 + step * 31 + rank)
    if not settings.rollout_passes or float(torch.rand((), generator=draw)) >= settings.rollout_prob:
        return None
    return int(torch.randint(min(settings.rollout_prompt, frames - 1), frames, (), generator=draw))


@torch.no_grad()
def free_running_inputs(model: STTransformer, codes: torch.Tensor, prompt: int, passes: int) -> torch.Tensor:
    """Input frames from `prompt` on replaced by the model's own predictions (nearest codes,
    Gaussian layers sampled, as generation does). Each pass redoes every prediction from the
    previous pass's inputs, so after pass k the first k predicted frames are exactly what
    free running would feed, and the later ones carry errors of about k steps."""
    inputs = codes.clone()
    for _ in range(passes):
        out, _ = model.predict(inputs)
        inputs[:, prompt:] = model.to_codes(out[:, prompt:].flatten(0, 1)).view_as(inputs[:, prompt:])
    return inputs


@torch.no_grad()
def validate(model: STTransformer, latents_uri: str, settings: DynamicsSettings) -> dict[str, float]:
    """Mean loss terms over the validation clips, Gaussian layers at their means."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    clips = LatentClips(latents_uri, VAL, shuffle_buffer=1, seed=0)
    for index, codes in enumerate(DataLoader(clips, batch_size=settings.batch_size)):
        if index >= settings.eval_batches:
            break
        for key, value in model(codes.to(device), deterministic=True).items():
            totals[key] = totals.get(key, 0.0) + float(value) * len(codes)
        count += len(codes)
    model.train(was_training)
    if not count:
        raise RuntimeError("no validation clips: raise data.val_fraction or ingest more videos")
    return {f"val_{key}": value / count for key, value in totals.items()}
