"""`stvideo submit` against a real Ray head and a real MLflow server, both on 127.0.0.1 (infra/local)."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import REPO, run_stvideo

pytestmark = [pytest.mark.slow, pytest.mark.integration]
STAGES = ["ingest", "train-tokenizer", "encode", "train-dynamics", "generate"]
# what each stage reads, by the name its producer writes it under
READS = {
    "train-tokenizer": {"raw": "ingest"},
    "encode": {"raw": "ingest", "tokenizer": "train-tokenizer"},
    "train-dynamics": {"latents": "encode", "tokenizer": "train-tokenizer"},
    "generate": {"latents": "encode", "dynamics": "train-dynamics", "tokenizer": "train-tokenizer"},
}


def wait_for(client, submission_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = str(client.get_job_status(submission_id).value)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status
        time.sleep(1)
    raise TimeoutError(submission_id)


def test_submit_runs_every_stage_as_a_ray_job_with_lineage_in_mlflow(ray_head, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient
    from ray.job_submission import JobSubmissionClient

    root = tmp_path / "tiny"
    config = [
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "--set",
        f"root={root}",
        "--set",
        f"tracking.uri={mlflow_server['uri']}",
        "--address",
        ray_head["dashboard"],
    ]

    # generate is pointed at videos that are not there: it fails, the four before it stand
    failed = run_stvideo("submit", *config, "--set", f"generate.videos={tmp_path}/missing/*.mp4")
    assert failed.returncode == 1, failed.stdout[-3000:] + failed.stderr[-3000:]
    assert "generate: Ray job stvideo-tiny-generate-" in failed.stderr
    assert "generate.videos" in failed.stderr  # the stage's own error, from the job's log tail
    for stage in STAGES[:4]:
        assert f"== {stage}: SUCCEEDED" in failed.stdout
    assert "[ingest] ingest: kept 48 of 48 videos" in failed.stdout  # logs stream through
    for folder in ("raw", "tokenizer", "latents.zarr", "dynamics"):
        assert (root / folder / "_stage.json").exists(), folder
    assert not (root / "generations" / "default" / "_stage.json").exists()

    # fixed: only generate runs
    fixed = run_stvideo("submit", *config)
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    for stage in STAGES[:4]:
        assert f"== {stage}: skipped" in fixed.stdout
    assert "== generate: SUCCEEDED" in fixed.stdout

    jobs = JobSubmissionClient(ray_head["dashboard"])
    ours = [job for job in jobs.list_jobs() if (job.metadata or {}).get("stvideo.root") == str(root)]
    outcomes = sorted((job.metadata["stvideo.stage"], str(job.status.value)) for job in ours)
    assert outcomes == sorted([(stage, "SUCCEEDED") for stage in STAGES] + [("generate", "FAILED")]), outcomes

    # outputs validate
    metrics = json.loads((root / "generations" / "default" / "metrics.json").read_text())
    assert metrics["clips"] > 0 and len(metrics["per_step"]["model"]["mse"]) == 10
    assert (root / "generations" / "default" / "preview.gif").stat().st_size > 0
    from pipeline.latents import open_latents

    assert open_latents(str(root / "latents.zarr")).num_clips == 48

    # MLflow: two parent runs (failed, then finished); one nested run per stage job
    client = MlflowClient(tracking_uri=mlflow_server["uri"])
    experiment = client.get_experiment_by_name("stvideo-tiny")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [run for run in runs if "stvideo.stage" not in run.data.tags]
    assert [run.info.status for run in parents] == ["FAILED", "FINISHED"]
    first, second = parents
    children = {
        parent.info.run_id: {
            run.data.tags["stvideo.stage"]: run
            for run in runs
            if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        }
        for parent in parents
    }
    assert sorted(children[first.info.run_id]) == sorted(STAGES)
    assert children[first.info.run_id]["generate"].info.status == "FAILED"
    assert list(children[second.info.run_id]) == ["generate"]
    # the second invocation names the runs that made what it skipped
    made = {stage: run for stage, run in children[first.info.run_id].items() if stage != "generate"}
    made["generate"] = children[second.info.run_id]["generate"]
    for stage in STAGES[:4]:
        assert second.data.tags[f"stvideo.skipped.{stage}"] == made[stage].info.run_id
        assert made[stage].info.status == "FINISHED"

    # each stage run: its config as params and YAML, its Ray job, and lineage by identity
    for stage, run in made.items():
        tags = run.data.tags
        assert tags["ray.submission_id"].startswith(f"stvideo-tiny-{stage}-")
        assert any(a.path == "config.yaml" for a in client.list_artifacts(run.info.run_id))
        assert run.data.params, stage
        for name, producer in READS.get(stage, {}).items():
            produced = made[producer].data.tags[f"output.{name}.identity"]
            assert produced not in ("", "None")
            assert tags[f"input.{name}.identity"] == produced, (stage, name)
    assert made["train-tokenizer"].data.params["tokenizer.model.codebook_size"] == "128"
    assert made["generate"].data.metrics["model_mse"] == metrics["mean"]["model"]["mse"]

    status = run_stvideo("status", *config)
    assert status.returncode == 0, status.stderr[-3000:]
    lines = {line.split()[0]: line for line in status.stdout.splitlines()[1:]}
    for stage in STAGES:
        assert lines[stage].split()[1] == "done", status.stdout
        assert made[stage].info.run_id in lines[stage]
        assert made[stage].data.tags["ray.submission_id"] in lines[stage]

    # --no-wait: the submission itself runs as a Ray job; everything is already done
    detached = run_stvideo("submit", *config, "--no-wait")
    assert detached.returncode == 0, detached.stderr[-3000:]
    job_id = detached.stdout.split("as Ray job ")[1].split()[0]
    assert wait_for(jobs, job_id) == "SUCCEEDED", jobs.get_job_logs(job_id)[-3000:]
    assert "== generate: skipped" in jobs.get_job_logs(job_id)


def test_sigterm_to_submit_stops_its_ray_job_and_says_so(ray_head, tmp_path):
    """`ray job stop` of a detached submission, or Kubernetes, sends SIGTERM: the stage's job
    must not go on writing the root with nobody watching."""
    import signal
    import subprocess

    from ray.job_submission import JobSubmissionClient

    from tests.conftest import start_stvideo

    root = tmp_path / "run"
    args = ["submit", "--stages", "ingest", "--address", ray_head["dashboard"], "--set", f"root={root}"]
    args += ["--set", "tracking.enabled=false", "--set", "data.moving_mnist.num_videos=3000"]
    submit = start_stvideo(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    client = JobSubmissionClient(ray_head["dashboard"])
    deadline, running = time.monotonic() + 120, None
    while running is None and time.monotonic() < deadline and submit.poll() is None:
        jobs = [job for job in client.list_jobs() if (job.metadata or {}).get("stvideo.root") == str(root)]
        running = next((job for job in jobs if str(job.status.value) == "RUNNING"), None)
        time.sleep(0.5)
    assert running is not None, submit.communicate(timeout=30)
    submit.send_signal(signal.SIGTERM)
    out, err = submit.communicate(timeout=90)
    assert submit.returncode == 1, out[-2000:] + err[-2000:]
    assert f"ingest: terminated; stopped Ray job {running.submission_id}" in err
    assert wait_for(client, running.submission_id, timeout=60) == "STOPPED"
