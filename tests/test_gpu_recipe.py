"""configs/mmnist-gpu.yaml: no GPU here, so check that it loads and that every stage starts
and runs a few steps on the CPU at its real model sizes, with only the step counts and data
capped."""

import json

import pytest

from jobs.config import load_config
from tests.conftest import REPO, run_stvideo

RECIPE = REPO / "configs" / "mmnist-gpu.yaml"


def test_the_gpu_recipe_loads_with_the_standard_protocol():
    cfg = load_config(RECIPE)
    assert cfg.name == "mmnist-gpu" and cfg.data.source == "moving-mnist"
    assert (cfg.generate.prompt_frames, cfg.generate.generate_frames) == (10, 10)
    assert cfg.data.moving_mnist.canvas_size == 64 and cfg.data.clip_frames == 20
    assert cfg.dynamics.rollout_passes > 0 and cfg.generate.samples > 1


@pytest.mark.slow
def test_the_gpu_recipe_runs_a_few_steps_on_the_cpu(tmp_path):
    caps = {
        "root": str(tmp_path / "gpu"),
        "tracking.enabled": "false",
        "data.moving_mnist.num_videos": "24",
        "data.val_fraction": "0.25",
        "data.test_fraction": "0.25",
        "ingest.videos_per_shard": "8",
        "tokenizer.max_steps": "2",
        "tokenizer.batch_videos": "2",
        "tokenizer.eval_every": "2",
        "tokenizer.eval_videos": "2",
        "tokenizer.checkpoint_every": "2",
        "tokenizer.num_workers": "0",
        "encode.clips_per_shard": "8",
        "encode.batch_size": "8",
        "dynamics.max_steps": "1",
        "dynamics.batch_size": "1",
        "dynamics.eval_every": "1",
        "dynamics.eval_batches": "1",
        "dynamics.checkpoint_every": "1",
        "dynamics.num_workers": "0",
        "generate.max_clips": "1",
        "generate.batch_size": "1",
        "generate.samples": "2",
    }
    args = [arg for key, value in caps.items() for arg in ("--set", f"{key}={value}")]
    result = run_stvideo("run", "--config", str(RECIPE), *args, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    root = tmp_path / "gpu"
    # the real architecture was built and trained (caps touched only steps and data)
    dynamics = json.loads((root / "dynamics" / "config.json").read_text())["model"]
    assert (dynamics["d_model"], dynamics["n_layers"], dynamics["head"]) == (256, 8, "factorized")
    tokenizer = json.loads((root / "tokenizer" / "config.json").read_text())["model"]
    assert tokenizer["base_channels"] == 64 and tokenizer["quantizer"] == "fsq"
    # FSQ codes end to end: stored in the latent store, modelled per dimension, decoded
    levels = json.loads((root / "dynamics" / "config.json").read_text())["code_levels"]
    assert levels == tokenizer["fsq_levels"] == [8, 8, 8, 5, 5, 5]
    metrics = json.loads((root / "generations" / "default" / "metrics.json").read_text())
    assert metrics["clips"] == 1 and len(metrics["per_step"]["model"]["mse"]) == 10
    assert {"copy_last", "black", "train_mean", "reconstruction"} <= set(metrics["per_step"])
    assert "diversity" in metrics and set(metrics["protocols"]) == {"15->5"}
    assert len(metrics["protocols"]["15->5"]["per_step"]["model"]["mse"]) == 5
