"""The training benchmark runs and prints its ratios (a smoke run: the figures come from bench/)."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO


def test_training_bench_prints_its_rates_and_the_ratios_against_the_old_steps():
    done = subprocess.run(
        [sys.executable, "bench/training.py", "--config", "configs/tiny.yaml", "--steps", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert re.search(r"train-dynamics \(float32\): +\d+ tokens/s", out), out
    ratios = re.findall(r"^  (train-\S+).*: ([\d.]+)x$", out, flags=re.MULTILINE)
    assert [name for name, _ in ratios] == ["train-tokenizer,", "train-dynamics"], out
    assert all(float(ratio) > 0 for _, ratio in ratios)
