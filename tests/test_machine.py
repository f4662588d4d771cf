"""Time to plan by: a config's reference run scaled to this machine's measured matmul rate."""

from __future__ import annotations

import pytest

from common.machine import expected_seconds
from jobs.config import ConfigError, load_config
from jobs.runner import Runner
from tests.conftest import REPO

REFERENCE = (
    "expected={matmul_gflops: {fp32: 200, bf16: 800}, stage_seconds: {ingest: 30, train-tokenizer: 240}}"
)


def test_each_stage_scales_by_the_rate_of_the_precision_it_multiplies_in():
    scaled = expected_seconds(
        {"ingest": 10.0, "train-tokenizer": 100.0, "train-dynamics": 300.0},
        reference_gflops={"fp32": 200.0, "bf16": 800.0},
        gflops={"fp32": 100.0, "bf16": 200.0},  # 2x slower in fp32, 4x in bf16
        precision_of={"train-tokenizer": "fp32", "train-dynamics": "bf16"},
    )
    assert scaled == {"ingest": 20.0, "train-tokenizer": 200.0, "train-dynamics": 1200.0}
    # a precision the reference did not measure falls back to fp32's ratio
    fallback = expected_seconds({"train-dynamics": 300.0}, {"fp32": 200.0}, {"fp32": 100.0, "bf16": 50.0}, {})
    assert fallback == {"train-dynamics": 600.0}


def test_a_reference_run_names_real_stages_and_an_fp32_rate():
    problems = []
    for bad in (
        "expected={matmul_gflops: {fp32: 200}, stage_seconds: {train-tokeniser: 240}}",
        "expected={matmul_gflops: {bf16: 800}, stage_seconds: {ingest: 30}}",
    ):
        with pytest.raises(ConfigError) as caught:
            load_config(None, [bad])
        problems += caught.value.problems
    assert problems[0].startswith("expected.stage_seconds") and "train-tokeniser" in problems[0]
    assert "train-dynamics" in problems[0]  # the stages it knows
    assert problems[1].startswith("expected.matmul_gflops") and "fp32" in problems[1]


def test_run_says_how_long_the_stages_it_will_run_should_take_here(tmp_path):
    said: list[str] = []
    cfg = load_config(
        REPO / "configs" / "tiny.yaml", [f"root={tmp_path}", "tracking.enabled=false", REFERENCE]
    )
    Runner(cfg, echo=said.append)._say_expected_time(["ingest", "train-tokenizer", "encode"])
    assert len(said) == 1, said
    line = said[0]
    assert "GFLOP/s fp32" in line and "the reference run took 4.5 min" in line
    assert "ingest" in line and "train-tokenizer" in line and "encode" not in line  # no reference for it
    minutes = float(line.split("expect about ")[1].split(" min")[0])
    assert minutes >= 0  # a number, whatever this machine's speed
