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
        steps = [metric.step for metric in client.get_metric_history(tokenizer.info.run_id, "recon_loss")]
        assert max(steps) == 120  # logged after the outage, sent on the return
        assert tokenizer.info.status == "FINISHED" and "output.tokenizer.identity" in tokenizer.data.tags
    finally:
        server("stop", state, port)
