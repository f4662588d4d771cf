"""`stvideo train-tokenizer`: the VQGAN, trained on frames decoded from the raw shards."""

from __future__ import annotations

import time

from common.identity import file_identity
from jobs import tracking
from jobs.config import PipelineConfig
from jobs.layout import Layout
from jobs.stages.base import StageInputError, StageResult
from pipeline.frames import raw_shard_uris
from tokenizer.train import FrameSource, train_tokenizer


def run_train_tokenizer(cfg: PipelineConfig, layout: Layout) -> StageResult:
    if not layout.is_local:
        raise StageInputError(
            f"root: given {cfg.root!r}; train-tokenizer writes its checkpoint to a local root"
        )
    try:
        shards = raw_shard_uris(layout.raw)
    except FileNotFoundError as err:
        raise StageInputError(str(err)) from None
    out_dir = Layout.local(layout.trained_tokenizer)
    source = FrameSource(shards, cfg.data.val_fraction, cfg.data.test_fraction)
    started = time.perf_counter()
    summary = train_tokenizer(
        cfg.tokenizer,
        source,
        out_dir,
        log_metrics=tracking.log_metrics,
        log_file=tracking.log_artifact,
    )
    identity = file_identity(out_dir / "model.safetensors")
    result = StageResult(
        stage="train-tokenizer",
        inputs={"raw": layout.raw},
        outputs={"tokenizer": str(out_dir), "tokenizer_identity": identity},
        metrics={**summary, "seconds": time.perf_counter() - started},
        summary=f"train-tokenizer: checkpoint {out_dir} (identity {identity})",
    )
    if summary:  # the main process evaluated; other ranks only trained
        tracking.log_artifact(str(out_dir / "config.json"), "checkpoint")
        result.summary += (
            f"; val PSNR {summary['psnr']:.2f} dB (mean frame: {summary['psnr_mean_frame']:.2f} dB)"
            f", SSIM {summary['ssim']:.3f}, codebook usage {summary['usage']:.0%}"
            + (f", {summary['frames_per_s']:.0f} frames/s" if "frames_per_s" in summary else "")
        )
    return result
