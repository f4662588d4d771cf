"""Train the VQGAN with Accelerate on frames decoded from the raw shards.

Read top to bottom: setup, resume, the step (generator, then discriminator),
codebook upkeep, evaluation, checkpoints. The same function runs in one process,
under `accelerate launch --multi_gpu --num_processes N`, under torchrun, or
inside a Ray Train worker: each rank reads its own shards, so the DataLoader is
never handed to Accelerate to dispatch or re-shard.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from einops import rearrange
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.metrics import mse_per_frame, perplexity, psnr_per_frame, ssim_per_frame
from common.training import Progress, make_accelerator, resume, save_state, skip_per_worker, warmup_cosine
from pipeline.frames import RawVideoFrames, batch_frames
from pipeline.splits import TRAIN, VAL
from tokenizer.model import (
    VQGAN,
    PatchDiscriminator,
    PerceptualLoss,
    adaptive_gan_weight,
    hinge_d_loss,
)
from tokenizer.settings import TokenizerSettings
from tokenizer.tokenizer import Tokenizer, to_float, to_uint8

RESTART_CANDIDATES = 512  # encoder outputs each rank offers per dead-code restart


@dataclass
class FrameSource:
    """Where the frames come from: the raw shards and the split rule."""

    shard_uris: list[str]
    val_fraction: float
    test_fraction: float


MetricsLogger = Callable[[dict[str, float], int], None]
FileLogger = Callable[[str, str], None]  # (local path, artifact folder)


def train_tokenizer(
    settings: TokenizerSettings,
    source: FrameSource,
    out_dir: str | Path,
    log_metrics: MetricsLogger | None = None,
    log_file: FileLogger | None = None,
) -> dict[str, float]:
    out_dir = Path(out_dir)
    arch = settings.model
    accelerator = make_accelerator(settings.mixed_precision, settings.grad_accum)
    main = accelerator.is_main_process
    device = accelerator.device

    def log(metrics: dict[str, float], step: int) -> None:
        if main and log_metrics:
            log_metrics(metrics, step)

    # --- models, optimizers, schedules -----------------------------------------------------
    torch.manual_seed(settings.seed)
    model = VQGAN(arch)
    discriminator = PatchDiscriminator(arch.in_channels, arch.disc_channels)
    perceptual = (
        PerceptualLoss(settings.perceptual_weights).to(device) if settings.perceptual_weight else None
    )
    opt_g = torch.optim.AdamW(model.parameters(), lr=settings.lr, betas=settings.betas, weight_decay=0.0)
    opt_d = torch.optim.AdamW(
        discriminator.parameters(), lr=settings.disc_lr, betas=settings.betas, weight_decay=0.0
    )
    # The schedulers stay outside `prepare`: Accelerate would step them once per process.
    sched_g = torch.optim.lr_scheduler.LambdaLR(
        opt_g, warmup_cosine(settings.warmup_steps, settings.max_steps)
    )
    disc_steps = max(1, settings.max_steps - settings.disc_start)
    sched_d = torch.optim.lr_scheduler.LambdaLR(
        opt_d, warmup_cosine(min(settings.warmup_steps, disc_steps), disc_steps)
    )
    model, discriminator, opt_g, opt_d = accelerator.prepare(model, discriminator, opt_g, opt_d)
    progress = Progress()
    accelerator.register_for_checkpointing(sched_g, sched_d, progress)

    # --- resume --------------------------------------------------------------------------------
    if resume(accelerator, out_dir) and main:
        tqdm.write(f"train-tokenizer: resumed from {out_dir / 'train_state'} at step {progress.step}")

    # --- data: this rank's own readers, fast-forwarded to where the run stopped -------------
    dataset = RawVideoFrames(
        source.shard_uris,
        TRAIN,
        source.val_fraction,
        source.test_fraction,
        frame_size=arch.frame_size,
        channels=arch.in_channels,
        frames_per_video=settings.frames_per_video,
        seed=settings.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        skip_per_worker=skip_per_worker(
            progress.step * settings.grad_accum, settings.num_workers, settings.batch_videos
        ),
    )
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_videos,
        num_workers=settings.num_workers,
        collate_fn=batch_frames,
        generator=torch.Generator().manual_seed(settings.seed),  # leaves the global RNG as resumed
    )
    batches = iter(loader)

    plain_model = accelerator.unwrap_model(model)
    plain_disc = accelerator.unwrap_model(discriminator)
    quantizer = plain_model.quantizer
    summary: dict[str, float] = {}
    frames_seen, train_seconds = 0, 0.0
    bar = tqdm(total=settings.max_steps, initial=progress.step, desc="train-tokenizer", disable=not main)

    while progress.step < settings.max_steps:
        started = time.perf_counter()
        frames = to_float(next(batches)["frames"]).to(device)
        step = progress.step
        disc_on = step >= settings.disc_start

        with accelerator.accumulate(model, discriminator):
            # --- generator: reconstruction + codebook (+ perceptual) (+ adversarial) -----
            out = model(frames)
            recon = out["recon"]
            rec = F.l1_loss(recon, frames) if settings.recon_loss == "l1" else F.mse_loss(recon, frames)
            nll = rec + (settings.perceptual_weight * perceptual(recon, frames) if perceptual else 0.0)
            loss = nll + out["quant_loss"]
            gan_weight = torch.zeros((), device=device)
            if disc_on:
                # The plain module, frozen: the generator's loss must not train or sync the discriminator.
                plain_disc.requires_grad_(False)
                g_adv = -plain_disc(recon).mean()
                plain_disc.requires_grad_(True)
                gan_weight = settings.disc_weight * adaptive_gan_weight(
                    nll, g_adv, plain_model.decoder.conv_out.weight
                )
                loss = loss + gan_weight * g_adv
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
            opt_g.step()
            opt_g.zero_grad(set_to_none=True)

            # --- discriminator: hinge loss, one forward over real and fake together (DDP) ---
            d_loss = torch.zeros((), device=device)
            if disc_on:
                logits = discriminator(torch.cat([frames, recon.detach()]))
                real_logits, fake_logits = logits.chunk(2)
                d_loss = hinge_d_loss(real_logits, fake_logits)
                accelerator.backward(d_loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(discriminator.parameters(), settings.grad_clip)
                opt_d.step()
                opt_d.zero_grad(set_to_none=True)

        # --- codebook upkeep: identical on every rank (summed counts, gathered candidates) ---
        counts = torch.bincount(out["codes"].flatten(), minlength=arch.codebook_size)
        quantizer.update_usage(accelerator.reduce(counts, reduction="sum"))
        restarted = 0
        if accelerator.sync_gradients and step % settings.restart_every == 0:
            z = rearrange(out["z"].detach().float(), "b d h w -> (b h w) d")
            if "blank" in out and not out["blank"].all():  # blank patches have their code already
                z = z[~out["blank"].flatten()]
            # the same count on every rank (gather needs equal sizes): draw with replacement
            pick = torch.randint(len(z), (RESTART_CANDIDATES,), generator=torch.Generator().manual_seed(step))
            candidates = accelerator.gather(z[pick.to(z.device)].contiguous())
            restarted = quantizer.restart_dead_codes(
                candidates, torch.Generator().manual_seed(settings.seed + step)
            )

        if not accelerator.sync_gradients:
            continue
        progress.step += 1
        sched_g.step()
        if disc_on:
            sched_d.step()
        frames_seen += len(frames) * accelerator.num_processes * settings.grad_accum
        train_seconds += time.perf_counter() - started
        bar.update(1)

        if progress.step % settings.log_every == 0 or progress.step == settings.max_steps:
            values = {
                "loss": float(loss.detach()),
                "recon_loss": float(rec.detach()),
                "quant_loss": float(out["quant_loss"].detach()),
                "gan_weight": float(gan_weight.detach()),
                "disc_loss": float(d_loss.detach()),
                "lr": sched_g.get_last_lr()[0],
                "dead_codes": float(quantizer.dead_codes().sum()),
                "codes_restarted": float(restarted),
                "frames_per_s": frames_seen / max(train_seconds, 1e-9),
            }
            bar.set_postfix(loss=f"{values['loss']:.4f}", dead=int(values["dead_codes"]))
            log(values, progress.step)

        last = progress.step == settings.max_steps
        if progress.step % settings.eval_every == 0 or last:
            if main:
                summary = evaluate(plain_model, source, settings, out_dir, progress.step, log_file)
                summary["frames_per_s"] = frames_seen / max(train_seconds, 1e-9)
                log(summary, progress.step)
                tqdm.write(
                    f"step {progress.step}: PSNR {summary['psnr']:.2f} dB"
                    f" (mean frame {summary['psnr_mean_frame']:.2f})"
                    f", SSIM {summary['ssim']:.3f}, codebook usage {summary['usage']:.0%}"
                    f", perplexity {summary['perplexity']:.0f}, {summary['frames_per_s']:.0f} frames/s"
                )
            accelerator.wait_for_everyone()
        if progress.step % settings.checkpoint_every == 0 or last:
            save(accelerator, plain_model, plain_disc, out_dir, summary)
    bar.close()

    if not summary and main:  # resumed a finished run: report what the checkpoint holds
        summary = evaluate(plain_model, source, settings, out_dir, progress.step, log_file)
    accelerator.wait_for_everyone()
    return summary


def save(accelerator: Accelerator, model: VQGAN, disc, out_dir: Path, summary: dict) -> None:
    """The resumable training state, then the checkpoint later stages load."""
    save_state(accelerator, out_dir)
    if accelerator.is_main_process:
        Tokenizer(model.config, model).save_pretrained(out_dir, discriminator=disc)
        if summary:
            (out_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    accelerator.wait_for_everyone()


@torch.no_grad()
def evaluate(
    model: VQGAN,
    source: FrameSource,
    settings: TokenizerSettings,
    out_dir: Path,
    step: int,
    log_file: FileLogger | None = None,
) -> dict[str, float]:
    """Reconstruction quality and codebook health on every frame of the validation videos."""
    arch = settings.model
    device = next(model.parameters()).device
    videos = RawVideoFrames(
        source.shard_uris,
        VAL,
        source.val_fraction,
        source.test_fraction,
        frame_size=arch.frame_size,
        channels=arch.in_channels,
        repeat=False,
        limit=settings.eval_videos,
    )
    try:
        originals = [item["frames"] for item in videos]
    except RuntimeError:
        originals = []
    if not originals:
        raise RuntimeError("no validation videos: raise data.val_fraction or ingest more videos")
    firsts = torch.stack([video[len(video) // 2] for video in originals[:8]])
    frames = torch.cat(originals)
    was_training = model.training
    model.eval()
    codes, recons = [], []
    for chunk in frames.split(128):
        chunk_codes = model.encode(to_float(chunk).to(device))
        codes.append(chunk_codes.cpu())
        recons.append(to_uint8(model.decode(chunk_codes)).cpu())
    model.train(was_training)
    codes_all, recon = torch.cat(codes), torch.cat(recons)
    counts = torch.bincount(codes_all.flatten(), minlength=arch.codebook_size)
    mean_frame = frames.float().mean(0, keepdim=True).expand_as(frames)
    result = {
        "psnr": float(psnr_per_frame(recon, frames).mean()),
        "ssim": float(ssim_per_frame(recon, frames).mean()),
        "mse": float(mse_per_frame(recon, frames).mean()),
        "psnr_mean_frame": float(psnr_per_frame(mean_frame / 255.0, frames).mean()),
        "usage": float((counts > 0).float().mean()),
        "perplexity": perplexity(counts),
        "eval_frames": float(len(frames)),
    }
    # originals over reconstructions, middle frame of up to 8 validation videos
    with torch.no_grad():
        recon_firsts = to_uint8(model.decode(model.encode(to_float(firsts).to(device)))).cpu()
    grid_path = out_dir / "recon" / f"step-{step:06d}.png"
    save_grid([firsts, recon_firsts], grid_path)
    if log_file:
        log_file(str(grid_path), "recon")
    return result


def save_grid(rows: list[torch.Tensor], path: Path, scale: int = 2) -> None:
    """Rows of uint8 frames [N, C, H, W] as one PNG, a row per tensor."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [np.concatenate(list(row.permute(0, 2, 3, 1).numpy()), axis=1) for row in rows]
    grid = np.concatenate(lines, axis=0)
    image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)
