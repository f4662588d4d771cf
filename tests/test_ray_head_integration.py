"""Ingest against a real Ray head on 127.0.0.1, started and stopped by PID (infra/local)."""

import io
import json
import os
import socket
import subprocess

import decord
import pytest
import webdataset as wds

from tests.conftest import REPO, run_stvideo

pytestmark = [pytest.mark.slow, pytest.mark.integration]
RAY_HEAD = REPO / "infra" / "local" / "ray-head.sh"


def alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's reaping is left


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path):
    state = tmp_path / "ray-state"
    port, dashboard = free_port(), free_port()
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_PORT": str(port),
        "RAY_DASHBOARD_PORT": str(dashboard),
        "RAY_NUM_CPUS": "2",
    }
    started = subprocess.run(
        [str(RAY_HEAD), "start", str(state)], env=env, capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0, started.stdout + started.stderr
    pid = int((state / "ray-head.pid").read_text())
    try:
        yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}", "pid": pid}
    finally:
        subprocess.run([str(RAY_HEAD), "stop", str(state)], env=env, timeout=60)
        assert not alive(pid)


def test_ingest_runs_on_a_real_ray_head(ray_head, tmp_path):
    root = tmp_path / "tiny"
    result = run_stvideo(
        "ingest",
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
        "--set",
        f"root={root}",
        "--set",
        f"ray.address={ray_head['address']}",
        "--set",
        "tracking.enabled=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]

    manifest = json.loads((root / "raw" / "manifest.json").read_text())
    assert manifest["num_samples"] == 48 and manifest["num_rejected"] == 0
    urls = [str(root / "raw" / shard["name"]) for shard in manifest["shards"]]
    keys = []
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(sample["json"])
        frames = decord.VideoReader(io.BytesIO(sample["mp4"])).get_batch(list(range(20))).asnumpy()
        assert frames.shape == (20, 64, 64, 3) and meta["num_frames"] == 20
        keys.append(sample["__key__"])
    assert len(keys) == len(set(keys)) == 48

    # the tasks really ran on that cluster: its dashboard knows the driver's job
    import urllib.request

    jobs = json.loads(urllib.request.urlopen(f"{ray_head['dashboard']}/api/jobs/", timeout=10).read())
    assert any(job.get("type") == "DRIVER" for job in jobs), jobs
