"""`stvideo train-dynamics`: the Spatial-Temporal Transformer, trained on latents.zarr.

In this process by default; with `ray.train_workers: N` the same training
function runs in N Ray Train workers (`TorchTrainer`), which is how it spreads
over a cluster's nodes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from jobs import tracking
from jobs.config import PipelineConfig
from jobs.layout import Layout
from jobs.stages.base import StageInputError, StageResult
from pipeline.latents import LatentStoreError


def _ray_train_worker(config: dict) -> None:
    """Runs inside each Ray Train worker; Ray Train has set up the process group."""
    import ray.train

    from dynamics.train import train_dynamics

    summary = train_dynamics(config["settings"], config["latents"], config["tokenizer"], config["out_dir"])
    context = ray.train.get_context()
    if context.get_world_rank() == 0:
        # Ray Train returns no metrics unless a checkpoint is reported: hand them over in a file
        report = {**summary, "world_size": context.get_world_size()}
        (Path(config["out_dir"]) / "ray_train.json").write_text(json.dumps(report))


def run_train_dynamics(cfg: PipelineConfig, layout: Layout) -> StageResult:
    from dynamics.checkpoint import DynamicsCheckpointError
    from dynamics.train import train_dynamics

    if not layout.is_local:
        raise StageInputError(
            f"root: given {cfg.root!r}; train-dynamics writes its checkpoint to a local root"
        )
    latents = str(Layout.local(layout.latents))
    tokenizer_dir = layout.tokenizer
    out_dir = Layout.local(layout.dynamics)
    started = time.perf_counter()
    try:
        if cfg.ray.train_workers:
            summary = _train_on_ray(cfg, latents, tokenizer_dir, str(out_dir), layout)
        else:
            summary = train_dynamics(
                cfg.dynamics, latents, tokenizer_dir, out_dir, log_metrics=tracking.log_metrics
            )
    except (LatentStoreError, DynamicsCheckpointError) as err:
        raise StageInputError(f"{err}; run `stvideo encode` with this tokenizer first") from None
    result = StageResult(
        stage="train-dynamics",
        inputs={"latents": latents, "tokenizer": tokenizer_dir},
        outputs={"dynamics": str(out_dir)},
        metrics={**summary, "seconds": time.perf_counter() - started},
        summary=f"train-dynamics: checkpoint {out_dir}",
    )
    if "world_size" in summary:
        result.summary += f" ({int(summary['world_size'])} Ray Train workers)"
    if summary:
        loss_key = "val_mse" if "val_mse" in summary else "val_ce"
        result.summary += f"; {loss_key} {summary[loss_key]:.4f}, val_kl {summary['val_kl']:.3g}" + (
            f", {summary['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in summary else ""
        )
    return result


def _train_on_ray(
    cfg: PipelineConfig, latents: str, tokenizer_dir: str, out_dir: str, layout: Layout
) -> dict:
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.ray_runtime import ray_session

    with ray_session(cfg.ray):
        trainer = TorchTrainer(
            _ray_train_worker,
            train_loop_config={
                "settings": cfg.dynamics,
                "latents": latents,
                "tokenizer": tokenizer_dir,
                "out_dir": out_dir,
            },
            scaling_config=ScalingConfig(
                num_workers=cfg.ray.train_workers, use_gpu=torch.cuda.is_available()
            ),
            run_config=RunConfig(name="train-dynamics", storage_path=str(Layout.local(layout.ray_results))),
        )
        trainer.fit()
    return json.loads((Path(out_dir) / "ray_train.json").read_text())
