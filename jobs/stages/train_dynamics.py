"""`stvideo train-dynamics`: the Spatial-Temporal Transformer, trained on latents.zarr.

In this process by default; with `ray.train_workers: N` the same training function runs
in N Ray Train workers (`jobs.ray_train`), which is how it spreads over a cluster's nodes.
The root may be any URI: the latents are streamed from it, the tokenizer's checkpoint is
fetched into the scratch cache, and checkpoints are written there and sent to the root.
"""

from __future__ import annotations

import time
from pathlib import Path

from common import training
from common.training import DeviceUnavailable, pick_device
from jobs import model_registry, tracking
from jobs.config import PipelineConfig
from jobs.layout import Layout
from jobs.stages.base import StageInputError, StageResult
from pipeline import storage
from pipeline.latents import LatentStoreError


def _ray_train_worker(config: dict) -> None:
    """Runs inside each Ray Train worker; Ray Train has set up the process group."""
    from dynamics.train import train_dynamics
    from jobs.ray_train import worker_folder

    out = worker_folder(config)
    scratch = Path(config["scratch"])
    tokenizer = model_registry.checkpoint_folder(config["tokenizer"], scratch, config["registry"])
    train_dynamics(config["settings"], config["latents"], tokenizer, out, log_metrics=out.log_metrics)


def run_train_dynamics(cfg: PipelineConfig, layout: Layout) -> StageResult:
    from dynamics.checkpoint import DynamicsCheckpointError
    from dynamics.train import train_dynamics

    started = time.perf_counter()
    if not cfg.ray.train_workers:  # trains here: the device must be here (workers check their own)
        try:
            pick_device(cfg.dynamics.device)
        except DeviceUnavailable as err:
            raise StageInputError(f"dynamics.{err}") from None
    registry = model_registry.registry_uri(cfg, layout.tokenizer)
    try:
        tokenizer = model_registry.pin(layout.tokenizer, registry)  # every worker reads the same version
        if cfg.ray.train_workers:
            from jobs import ray_train

            summary = ray_train.fit(
                cfg,
                layout,
                "train-dynamics",
                layout.trained_dynamics,
                _ray_train_worker,
                {
                    "settings": cfg.dynamics,
                    "latents": layout.latents,
                    "tokenizer": tokenizer,
                    "registry": registry,
                },
            )
        else:
            scratch = storage.scratch_root(cfg.scratch)
            summary = train_dynamics(
                cfg.dynamics,
                layout.latents,
                model_registry.checkpoint_folder(tokenizer, scratch, registry),
                storage.run_folder(layout.trained_dynamics, scratch),
                log_metrics=tracking.log_metrics,
            )
    except model_registry.ModelURIError as err:
        raise StageInputError(f"encode.tokenizer: {err}") from None
    except (LatentStoreError, DynamicsCheckpointError, FileNotFoundError) as err:
        raise StageInputError(f"{err}; run `stvideo encode` with this tokenizer first") from None
    except ValueError as err:  # a setting the store cannot meet (max_frames, min_motion)
        raise StageInputError(f"dynamics.{err}") from None
    result = StageResult(
        stage="train-dynamics",
        inputs={"latents": layout.latents, "tokenizer": tokenizer},
        outputs={"dynamics": layout.trained_dynamics},
        metrics={**summary, "seconds": time.perf_counter() - started},
        summary=f"train-dynamics: checkpoint {layout.trained_dynamics}",
    )
    if "world_size" in summary:
        result.summary += f" ({int(summary['world_size'])} Ray Train workers)"
    if "steps" in summary:  # the time guard may have ended it before max_steps
        result.summary += "; " + training.time_guard_note(summary, cfg.dynamics.max_minutes)
    if cfg.dynamics.min_motion is not None and "clips_train" in summary:
        result.summary += (
            f"; clips with motion >= {cfg.dynamics.min_motion:g}: "
            + ", ".join(
                f"{split} {int(summary[f'clips_{split}_moving'])} of {int(summary[f'clips_{split}'])}"
                for split in ("train", "val", "test")
            )
            + " (only train's are left out)"
        )
    if "val_kl" in summary:
        loss_key = "val_mse" if "val_mse" in summary else "val_ce"
        result.summary += f"; {loss_key} {summary[loss_key]:.4f}, val_kl {summary['val_kl']:.3g}" + (
            f", {summary['tokens_per_s']:.0f} tokens/s" if "tokens_per_s" in summary else ""
        )
    return result
