"""`stvideo train-tokenizer`: the VQGAN, trained on frames decoded from the raw shards.

In this process by default; with `ray.train_workers: N` in N Ray Train workers
(`jobs.ray_train`). The root may be any URI: frames are streamed from its shards, and
checkpoints are written to a scratch folder and sent to the root.
"""

from __future__ import annotations

import time

from common import training
from common.identity import file_identity
from common.training import DeviceUnavailable, pick_device
from jobs import tracking
from jobs.config import PipelineConfig
from jobs.layout import Layout
from jobs.stages.base import StageInputError, StageResult
from pipeline import storage
from pipeline.frames import raw_shard_uris
from tokenizer.train import FrameSource, train_tokenizer


def _ray_train_worker(config: dict) -> None:
    """Runs inside each Ray Train worker; Ray Train has set up the process group."""
    from jobs.ray_train import worker_folder

    out = worker_folder(config)
    train_tokenizer(config["settings"], config["source"], out, log_metrics=out.log_metrics)


def _log_recon(path: str, key: str, step: int) -> None:
    """A recon grid: a file under recon/, and a picture at its step on the run's image charts,
    among the evaluations (`val/recon`)."""
    tracking.log_artifact(path, key)
    tracking.log_image(path, f"val/{key}", step)


def run_train_tokenizer(cfg: PipelineConfig, layout: Layout) -> StageResult:
    if not cfg.ray.train_workers:  # trains here: the device must be here (workers check their own)
        try:
            pick_device(cfg.tokenizer.device)
        except DeviceUnavailable as err:
            raise StageInputError(f"tokenizer.{err}") from None
    try:
        shards = raw_shard_uris(layout.raw)
    except FileNotFoundError as err:
        raise StageInputError(str(err)) from None
    output = layout.trained_tokenizer
    source = FrameSource(shards, cfg.data.val_fraction, cfg.data.test_fraction)
    started = time.perf_counter()
    if cfg.ray.train_workers:
        from jobs import ray_train

        summary = ray_train.fit(
            cfg,
            layout,
            "train-tokenizer",
            output,
            _ray_train_worker,
            {"settings": cfg.tokenizer, "source": source},
        )
        for name in storage.list_names(storage.join(output, "recon")):  # the workers log no files
            tracking.log_bytes(storage.read_bytes(storage.join(output, "recon", name)), f"recon/{name}")
    else:
        summary = train_tokenizer(
            cfg.tokenizer,
            source,
            storage.run_folder(output, storage.scratch_root(cfg.scratch)),
            log_metrics=tracking.log_metrics,
            log_image=_log_recon,
        )
    identity = file_identity(storage.join(output, "model.safetensors"))
    result = StageResult(
        stage="train-tokenizer",
        inputs={"raw": layout.raw},
        outputs={"tokenizer": output},
        metrics={**summary, "seconds": time.perf_counter() - started},
        summary=f"train-tokenizer: checkpoint {output} (identity {identity})",
    )
    if "world_size" in summary:
        result.summary += f" ({int(summary['world_size'])} Ray Train workers)"
    if "steps" in summary:  # the time guard may have ended it before max_steps
        result.summary += "; " + training.time_guard_note(summary, cfg.tokenizer.max_minutes)
    if "psnr" in summary:  # the main process evaluated; other ranks only trained
        tracking.log_bytes(storage.read_bytes(storage.join(output, "config.json")), "checkpoint/config.json")
        result.summary += (
            f"; val PSNR {summary['psnr']:.2f} dB (mean frame: {summary['psnr_mean_frame']:.2f} dB)"
            f", SSIM {summary['ssim']:.3f}, codebook usage {summary['usage']:.0%}"
            + (f", {summary['frames_per_s']:.0f} frames/s" if "frames_per_s" in summary else "")
        )
    return result
