"""The pipeline's stages, in order. A stage is `run_<stage>(cfg) -> StageResult`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jobs.config import PipelineConfig
from jobs.stages.base import StageInputError, StageResult


@dataclass(frozen=True)
class Stage:
    name: str
    help: str
    run: Callable[[PipelineConfig], StageResult]


def _ingest(cfg: PipelineConfig) -> StageResult:
    # Imported on use: `stvideo --help` should not pay for Ray, decord and torch.
    from jobs.stages.ingest import run_ingest

    return run_ingest(cfg)


def _train_tokenizer(cfg: PipelineConfig) -> StageResult:
    from jobs.stages.train_tokenizer import run_train_tokenizer

    return run_train_tokenizer(cfg)


def _encode(cfg: PipelineConfig) -> StageResult:
    from jobs.stages.encode import run_encode

    return run_encode(cfg)


def _train_dynamics(cfg: PipelineConfig) -> StageResult:
    from jobs.stages.train_dynamics import run_train_dynamics

    return run_train_dynamics(cfg)


def _generate(cfg: PipelineConfig) -> StageResult:
    from jobs.stages.generate import run_generate

    return run_generate(cfg)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in [
        Stage("ingest", "Videos (a folder or Moving MNIST) -> raw webdataset shards, in Ray tasks.", _ingest),
        Stage("train-tokenizer", "Train the per-frame VQGAN on decoded frames.", _train_tokenizer),
        Stage("encode", "Encode every clip into codebook indices in latents.zarr (Ray Data).", _encode),
        Stage("train-dynamics", "Train the ST-transformer on streamed latents.", _train_dynamics),
        Stage("generate", "Batch-generate continuations, previews and metrics (Ray Data).", _generate),
    ]
}

__all__ = ["STAGES", "Stage", "StageInputError", "StageResult"]
