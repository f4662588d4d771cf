"""A tracking server that dies mid-stage: the stage finishes untracked within a bounded time,
says so once, and what it could not log reaches MLflow (runs ended, none left RUNNING) once the
server is back and the next command runs."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.conftest import REPO, free_port, run_stvideo, start_stvideo

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SCRIPT = REPO / "infra" / "local" / "mlflow-server.sh"


def server(action: str, state, port: int) -> None:
    env = {**os.environ, "MLFLOW_PORT": str(port)}
    done = subprocess.run(
        [str(SCRIPT), action, str(state)], env=env, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_stage_outlives_its_tracking_server_and_catches_up_when_it_returns(tmp_path):
    from mlflow.tracking import MlflowClient

    state, port, root = tmp_path / "mlflow", free_port(), tmp_path / "run"
    uri = f"http://127.0.0.1:{port}"
    args = ["run", "--config", str(REPO / "configs" / "tiny.yaml"), "--stages", "ingest,train-tokenizer"]
    args += ["--set", f"root={root}", "--set", f"tracking.uri={uri}", "--set", "tokenizer.max_steps=120"]
    server("start", state, port)
    try:
        run = start_stvideo(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # the first evaluation of train-tokenizer (step 20 of 120): the server goes away
        first_grid = root / ".staging" / "tokenizer" / "recon" / "step-000020.png"
        deadline = time.monotonic() + 240
        while not first_grid.exists() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
        assert first_grid.exists(), run.communicate(timeout=60)
        server("stop", state, port)
        stopped = time.monotonic()
        out, err = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            run.kill()
        server("stop", state, port)
    assert run.returncode == 0, err[-3000:]
    assert time.monotonic() - stopped < 200  # bounded: not stuck in HTTP retries
    assert err.count("MLflow stopped answering") == 1, err[-3000:]
    assert (root / "tokenizer" / "_stage.json").exists() and (root / "_untracked" / "journal.jsonl").exists()

    server("start", state, port)
    try:
        again = run_stvideo(*args)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "MLflow answers again: sent" in again.stderr
        assert not (root / "_untracked").exists()
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name("stvideo-tiny")
        runs = client.search_runs([experiment.experiment_id])
        assert runs and all(run.info.status != "RUNNING" for run in runs), [r.info.status for r in runs]
        [tokenizer] = [run for run in runs if run.data.tags.get("stvideo.stage") == "train-tokenizer"]
        steps = [
            metric.step for metric in client.get_metric_history(tokenizer.info.run_id, "train/recon_loss")
        ]
        assert max(steps) == 120  # logged after the outage, sent on the return
        assert tokenizer.info.status == "FINISHED" and "output.tokenizer.identity" in tokenizer.data.tags
    finally:
        server("stop", state, port)


def test_a_run_whose_server_returns_between_stages_tracks_the_next_stage_and_registers_the_model(
    tmp_path,
):
    """In one pipeline run: the server goes away in a training stage (its curve and checkpoint
    are kept) and is back when the next stage opens its run: that stage is tracked, the kept
    records are sent, and the checkpoint is registered then."""
    import torch
    from mlflow.tracking import MlflowClient
    from safetensors.torch import save_file

    from jobs import tracking
    from jobs.config import load_config

    state, port = tmp_path / "mlflow", free_port()
    uri = f"http://127.0.0.1:{port}"
    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        [f"root={tmp_path / 'run'}", f"tracking.uri={uri}", "tracking.system_metrics=false"],
    )
    checkpoint = tmp_path / "run" / "tokenizer"
    checkpoint.mkdir(parents=True)
    save_file({"weight": torch.zeros(2)}, checkpoint / "model.safetensors")
    (checkpoint / "config.json").write_text("{}")
    server("start", state, port)
    try:
        tracker = tracking.Tracker(cfg)
        with tracker.pipeline_run(["train-tokenizer", "encode"]) as parent:
            with tracker.stage_run("train-tokenizer", {}) as first:
                tracking.log_metrics({"loss": 1.0}, step=10)
                server("stop", state, port)
                tracking.log_metrics({"loss": 0.5}, step=20)  # kept: the server is gone
                lineage = {"output.tokenizer.identity": "abc"}
                assert tracker.publish_checkpoint("tokenizer", str(checkpoint), lineage) is None
            assert tracker.kept() > 0
            server("start", state, port)
            with tracker.stage_run("encode", {}) as second:
                assert second is not None
                tracking.log_metrics({"clips": 48})
        assert tracker.kept() == 0
        client = MlflowClient(tracking_uri=uri)
        assert [m.step for m in client.get_metric_history(first, "loss")] == [10, 20]
        assert client.get_run(first).info.status == "FINISHED"
        encode = client.get_run(second)
        assert encode.data.tags["mlflow.parentRunId"] == parent and encode.data.metrics["clips"] == 48
        [version] = client.search_model_versions(f"run_id='{first}'")
        assert version.tags["stvideo.identity"] == "abc"
        assert client.get_run(first).data.tags["output.tokenizer.model"].endswith(f"/{version.version}")
    finally:
        server("stop", state, port)
