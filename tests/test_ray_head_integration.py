"""Ingest against a real Ray head on 127.0.0.1, started and stopped by PID (infra/local)."""

import io
import json

import decord
import pytest
import webdataset as wds

from tests.conftest import REPO, is_loopback, listening_sockets, run_stvideo

pytestmark = [pytest.mark.slow, pytest.mark.integration]


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


def test_the_local_head_listens_on_loopback_only(ray_head, tmp_path):
    """Every process of infra/local/ray-head.sh (GCS, raylet, workers, agents, client server,
    dashboard) listens on 127.0.0.0/8 only; a head on another address needs token auth."""
    import subprocess

    import ray

    from jobs.config import RayConfig
    from jobs.ray_runtime import ray_session

    # have the head start a worker, then look at every process under `ray start`
    with ray_session(RayConfig(address=ray_head["address"])):
        ray.get(ray.remote(lambda: 1).remote())
        listening = listening_sockets(ray_head["pid"])
    assert {"gcs_server", "raylet"} <= {name for name, _, _ in listening}, listening
    exposed = sorted(entry for entry in listening if not is_loopback(entry[1]))
    assert not exposed, f"listening beyond loopback: {exposed}"

    refused = subprocess.run(
        [str(REPO / "infra" / "local" / "ray-head.sh"), "start", str(tmp_path / "refused")],
        env={"PATH": "/usr/bin:/bin", "RAY_HEAD_IP": "192.0.2.1", "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "RAY_AUTH_MODE=token" in refused.stderr


def test_a_token_head_takes_submissions_with_its_token_only(tmp_path):
    """The cluster manifests' auth mode, here: a head with RAY_AUTH_MODE=token runs a stage
    submitted with its token and refuses one without it, saying why."""
    import secrets

    from tests.conftest import local_service, ray_head_env

    token = secrets.token_hex(16)
    env = ray_head_env(cpus=2, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    address = f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}"
    root = tmp_path / "tiny"
    args = [
        "submit",
        "--stages",
        "ingest",
        "--address",
        address,
        "--config",
        str(REPO / "configs" / "tiny.yaml"),
    ]
    args += ["--set", f"root={root}", "--set", "tracking.enabled=false"]
    with local_service("ray-head.sh", tmp_path / "ray-state", env):
        refused = run_stvideo(*args, env={"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": ""})
        assert refused.returncode != 0 and "authentication token" in refused.stderr.lower(), refused.stderr
        assert not (root / "raw" / "manifest.json").exists()
        submitted = run_stvideo(*args, env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
        assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-2000:]
    assert json.loads((root / "raw" / "manifest.json").read_text())["num_samples"] == 48
    assert token not in submitted.stdout + submitted.stderr
