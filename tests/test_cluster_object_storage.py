"""Two Ray nodes that share no disk, an S3 root: the tiny pipeline as a cluster runs it.

A Ray head (token auth, on this host's network address) and a second Ray node started on
this machine with its own temp dir and a custom resource, an S3 server (moto) on 127.0.0.1
and the session's MLflow server. Every node has the S3 credentials in its environment, as
a cloud node has its role; the submitting process works from a folder holding only a copy
of the config.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import (
    REPO,
    STVIDEO,
    local_service,
    moto_s3,
    ray_head_env,
    ray_worker_node,
    reachable_ip,
    run_stvideo,
)

# the first test's setup holds the whole submitted pipeline (two nodes, Ray Train, a worker
# killed in each training stage): 560-600 s on a slow machine of this kind, past the suite's
# 600 s per test
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(1500)]
STAGES = ["ingest", "train-tokenizer", "encode", "train-dynamics", "generate"]
BUCKET = "stvideo"


def alive_nodes(dashboard: str, token: str) -> list[dict]:
    request = urllib.request.Request(
        f"{dashboard}/api/v0/nodes?limit=10", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        nodes = json.load(answer)["data"]["result"]["result"]
    return [node for node in nodes if node["state"] == "ALIVE"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, mlflow_server):
    tmp = tmp_path_factory.mktemp("two-nodes")
    token, ip = secrets.token_hex(16), reachable_ip()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    with moto_s3(BUCKET) as s3:
        head_env = ray_head_env(cpus=2, RAY_HEAD_IP=ip, **auth, **s3)
        with local_service("ray-head.sh", tmp / "head", head_env) as head_pid:
            address, dashboard = (
                f"{ip}:{head_env['RAY_PORT']}",
                f"http://{ip}:{head_env['RAY_DASHBOARD_PORT']}",
            )
            # its own temp dir, short: Ray's socket paths under it must fit in 107 bytes
            node_dir = Path(tempfile.mkdtemp(prefix="stv-node2-", dir="/tmp"))
            with ray_worker_node(address, node_dir, 2, {"node2": 4}, {**auth, **s3}) as node_pid:
                deadline = time.monotonic() + 60
                while len(alive_nodes(dashboard, token)) < 2:
                    assert time.monotonic() < deadline, (node_dir / "node.log").read_text()[-3000:]
                    time.sleep(0.5)
                yield SimpleNamespace(
                    tmp=tmp,
                    dashboard=dashboard,
                    client_env={**auth, **s3},  # what the submitting user has: the token, S3 access
                    pids=(head_pid, node_pid),
                    node2_logs=node_dir,
                    mlflow=mlflow_server["uri"],
                )
            shutil.rmtree(node_dir, ignore_errors=True)


def client_folder(cluster, name: str) -> Path:
    """A working folder holding only a copy of the config: no root, nothing shared."""
    folder = cluster.tmp / name
    folder.mkdir()
    shutil.copy(REPO / "configs" / "tiny.yaml", folder / "tiny.yaml")
    return folder


def settings(cluster, scratch: Path) -> list[str]:
    pairs = {
        "root": f"s3://{BUCKET}/tiny",
        "tracking.uri": cluster.mlflow,
        "tracking.experiment": "stvideo-two-nodes",
        "ray.train_workers": "2",
        "generate.actor_resources": "{node2: 1}",  # only the second node has it
        "scratch": str(scratch),
        "submit.python": sys.executable,
        "tokenizer.max_steps": str(STEPS["train-tokenizer"]),
        "dynamics.max_steps": str(STEPS["train-dynamics"]),
    }
    return [arg for key, value in pairs.items() for arg in ("--set", f"{key}={value}")]


def submit_args(cluster, scratch: Path | None = None) -> list[str]:
    args = ["submit", "--config", "tiny.yaml", "--address", cluster.dashboard]
    return args + settings(cluster, scratch or cluster.tmp / "scratch")


def submit(cluster, folder: Path, *extra: str, scratch: Path | None = None):
    return run_stvideo(
        *submit_args(cluster, scratch), *extra, cwd=folder, env=cluster.client_env, timeout=900
    )


def s3(cluster):
    import s3fs

    return s3fs.S3FileSystem(
        key="test",
        secret="test",
        client_kwargs={"endpoint_url": cluster.client_env["AWS_ENDPOINT_URL"]},
        skip_instance_cache=True,
    )


def stage_runs(cluster, stage: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=cluster.mlflow)
    experiment = client.get_experiment_by_name("stvideo-two-nodes")
    if experiment is None:  # not yet: the first stage has not started
        return []
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    return [run for run in runs if run.data.tags.get("stvideo.stage") == stage]


def metric_steps(cluster, run, key: str) -> list[int]:
    from mlflow.tracking import MlflowClient

    return [
        point.step
        for point in MlflowClient(tracking_uri=cluster.mlflow).get_metric_history(run.info.run_id, key)
    ]


def written_since(folder: Path, started: float) -> list[str]:
    """Files under `folder` changed after `started`, leaving out the environment, caches and the
    browser test's screenshots (tests run two at a time: it may take them meanwhile)."""
    skipped = {".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".git", "test-artifacts"}
    changed = []
    for parent, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if name not in skipped and not name.endswith(".egg-info")]
        for name in files:
            path = Path(parent) / name
            if path.stat().st_mtime > started:
                changed.append(str(path.relative_to(folder)))
    return changed


# longer than configs/tiny.yaml's 40 and 30 steps, so that a worker killed after the first
# checkpoint (steps 20 and 15) dies with steps still to train
STEPS = {"train-tokenizer": 80, "train-dynamics": 60}
LOG_EVERY = {"train-tokenizer": 10, "train-dynamics": 5}


def ray_train_workers(cluster) -> list:
    import psutil

    workers = []
    for process in psutil.process_iter(["cmdline"]):
        try:  # a process may exit between the listing and its parents (a stage's workers at its end)
            if (process.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker") and any(
                parent.pid in cluster.pids for parent in process.parents()
            ):
                workers.append(process)
        except psutil.Error:
            continue
    return workers


@pytest.fixture(scope="module")
def pipeline(cluster):
    """The tiny pipeline submitted to the two nodes. In each training stage, once Ray Train has
    taken its first checkpoint (the stage's metrics reach MLflow only then), one of its workers
    is killed: the stage must resume from that checkpoint within the same submission."""
    import psutil

    folder = client_folder(cluster, "laptop")
    before = sorted(path.name for path in folder.iterdir())
    started = time.time()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        submitting = subprocess.Popen(
            [*STVIDEO, *submit_args(cluster)],
            cwd=folder,
            env={**os.environ, "RAY_AUTH_MODE": "disabled", **cluster.client_env},
            stdout=out,
            stderr=err,
            text=True,
        )
        killed, deadline = [], time.monotonic() + 900
        while submitting.poll() is None and time.monotonic() < deadline:
            for stage in STEPS.keys() - set(killed):
                runs = stage_runs(cluster, stage)
                workers = ray_train_workers(cluster)
                if runs and metric_steps(cluster, runs[-1], "train/loss") and workers:
                    try:
                        workers[0].kill()
                        killed.append(stage)
                    except psutil.NoSuchProcess:  # it ended first: try the next one
                        pass
            time.sleep(0.2)
        if submitting.poll() is None:
            submitting.kill()
        submitting.wait(timeout=60)
        out.seek(0), err.seek(0)
        done = subprocess.CompletedProcess(submitting.args, submitting.returncode, out.read(), err.read())
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return SimpleNamespace(folder=folder, before=before, started=started, result=done, killed=killed)


def test_every_stage_runs_on_two_nodes_with_an_s3_root_and_nothing_local(cluster, pipeline):
    for stage in STAGES:
        assert f"== {stage}: SUCCEEDED" in pipeline.result.stdout, pipeline.result.stdout[-3000:]
    assert "(2 Ray Train workers)" in pipeline.result.stdout  # both training stages
    assert pipeline.result.stdout.count("Ray Train workers)") == 2
    assert "joined the cluster at" in pipeline.result.stdout  # each job's driver, not a Ray of its own
    assert "started an embedded Ray" not in pipeline.result.stdout

    fs = s3(cluster)
    for output in ("raw", "tokenizer", "latents.zarr", "dynamics", "generations/default"):
        assert fs.exists(f"{BUCKET}/tiny/{output}/_stage.json"), output
    for checkpoint in ("tokenizer", "dynamics"):
        assert fs.exists(f"{BUCKET}/tiny/{checkpoint}/model.safetensors")
    metrics = json.loads(fs.cat_file(f"{BUCKET}/tiny/generations/default/metrics.json"))
    assert metrics["clips"] > 0 and len(metrics["per_step"]["model"]["mse"]) == 10
    assert len(fs.ls(f"{BUCKET}/tiny/generations/default/videos")) == metrics["clips"]
    assert fs.info(f"{BUCKET}/tiny/generations/default/preview.gif")["size"] > 0
    assert fs.ls(f"{BUCKET}/tiny/ray_results")  # Ray Train's own runs, under the root

    # generate's actors ran on the second node: their logs are in its own temp dir
    logs = "".join(path.read_text(errors="replace") for path in cluster.node2_logs.rglob("worker-*.out"))
    assert "ClipGenerator" in logs

    # nothing was written locally but the scratch cache, which can go: not in the submitting
    # folder, and not in the repository, which is where the Ray nodes (and so the jobs) started
    assert sorted(path.name for path in pipeline.folder.iterdir()) == pipeline.before
    assert written_since(REPO, pipeline.started) == []
    scratch = cluster.tmp / "scratch"
    assert (scratch / "fetched").is_dir() and (scratch / "ray-train").is_dir()

    # a worker of each training stage was killed after its first checkpoint; each stage went on
    # from that checkpoint, not from step 0, and its MLflow run has its whole curve, every step once
    assert sorted(pipeline.killed) == sorted(STEPS), pipeline.killed
    assert pipeline.result.stdout.count("resumed from") >= 2, pipeline.result.stdout[-6000:]
    for stage in STEPS:
        assert f"{stage}: resumed from" in pipeline.result.stdout, stage
        [run] = stage_runs(cluster, stage)
        every = LOG_EVERY[stage]
        assert metric_steps(cluster, run, "train/loss") == list(range(every, STEPS[stage] + 1, every)), stage
        assert run.data.metrics["summary/world_size"] == 2 and run.info.status == "FINISHED"


def test_a_second_submit_from_another_folder_finds_every_stage_complete(cluster, pipeline):
    folder = client_folder(cluster, "another-laptop")
    shutil.rmtree(cluster.tmp / "scratch")  # the cache is only a cache
    again = submit(cluster, folder, scratch=cluster.tmp / "other-scratch")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for stage in STAGES:
        assert f"== {stage}: skipped, complete" in again.stdout
    status = run_stvideo(
        "status",
        "--config",
        "tiny.yaml",
        "--address",
        cluster.dashboard,
        *settings(cluster, cluster.tmp / "other-scratch"),
        cwd=folder,
        env=cluster.client_env,
    )
    assert status.returncode == 0, status.stderr[-3000:]
    *table, lock = status.stdout.splitlines()[1:]
    states = {line.split()[0]: line.split()[1] for line in table}
    assert states == dict.fromkeys(STAGES, "done") and lock == "lock: free", status.stdout


def test_a_plain_ray_job_joins_the_cluster_it_runs_on(cluster, pipeline):
    """`ray job submit -- stvideo <stage>`, with no `ray.address`: the stage joins this cluster."""
    folder = client_folder(cluster, "plain-job")
    stage = [*STVIDEO, "generate", "--config", str(folder / "tiny.yaml")]
    stage += settings(cluster, cluster.tmp / "scratch") + ["--set", "generate.name=plain"]
    stage += ["--set", "generate.max_clips=2", "--set", "generate.samples=2"]  # joining is the point
    ray = str(Path(sys.executable).parent / "ray")
    submitted = subprocess.run(
        [ray, "job", "submit", "--address", cluster.dashboard, "--", *stage],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **cluster.client_env},
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    output = submitted.stdout + submitted.stderr
    assert "ray: joined the cluster at" in output and "the cluster of this Ray job" in output
    assert "2 nodes" in output and "embedded" not in output
    assert s3(cluster).exists(f"{BUCKET}/tiny/generations/plain/metrics.json")
