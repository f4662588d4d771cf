"""The benchmarks run and print their ratios (smoke runs: the figures come from bench/)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO


def run_bench(*args: str, timeout: int = 600) -> str:
    """A bench script run as a user runs it; its output, once it has exited 0."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_training_bench_prints_its_rates_and_the_ratios_against_the_old_steps():
    from common.training import resolve_precision

    out = run_bench("bench/training.py", "--config", "configs/tiny.yaml", "--steps", "2")
    # the tiny config's `auto`: bf16 on a CPU that multiplies it in hardware, else fp32
    dtype = {"bf16": "bfloat16", "no": "float32"}[resolve_precision("auto", "cpu")]
    assert re.search(rf"train-dynamics \({dtype}\): +\d+ tokens/s", out), out
    ratios = re.findall(r"^  (train-\S+).*: ([\d.]+)x$", out, flags=re.MULTILINE)
    assert [name for name, _ in ratios] == ["train-tokenizer,", "train-dynamics", "train-dynamics,"], out
    assert all(float(ratio) > 0 for _, ratio in ratios)


@pytest.mark.slow
@pytest.mark.integration
def test_scale_bench_runs_every_stage_at_two_sizes_and_prints_the_ratios(ray_head, tmp_path):
    sizes = "--videos 20 200 --s3-videos 0".split()
    out = run_bench(
        "bench/scale.py", *sizes, "--work", str(tmp_path), "--ray-address", ray_head["address"], timeout=900
    )
    for stage in ("ingest", "encode", "generate"):
        assert len(re.findall(rf"N= +(?:20|200) {stage} +[\d.]+ s, +[\d.]+ ms/", out)) == 2, out
        own_work = "" if stage == "generate" else r"its tasks' own work per video [\d.]+x; "
        ratio = rf"^  {stage} +per-(video|clip) cost [\d.]+x; {own_work}driver peak RSS [\d.]+x"
        assert re.search(ratio, out, re.MULTILINE), out
    assert re.search(r"reader   first batch [\d.]+ s, \d+ clips/s", out), out
    assert re.search(r"status   [\d.]+ s against [\d.]+ s", out), out


@pytest.mark.slow
def test_video_memory_bench_ingests_each_length_and_prints_the_ratio(tmp_path):
    sizes = "--seconds 4 8 --width 640 --height 360".split()
    out = run_bench("bench/video_memory.py", *sizes, "--work", str(tmp_path))
    rows = re.findall(r"640x360, (\d) s .*its task [\d.]+ s .*task peak RSS (\d+) MiB", out)
    assert [seconds for seconds, _ in rows] == ["4", "8"] and all(int(rss) > 0 for _, rss in rows), out
    assert re.search(r"8 s against 4 s: [\d.]+x \(1 is linear\)", out), out
