"""Ingest against a real Ray head on 127.0.0.1, started and stopped by PID (infra/local)."""

import io
import json

import decord
import pytest
import webdataset as wds

from tests.conftest import REPO, run_stvideo

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
