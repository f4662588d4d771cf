"""Time to plan by: a config's reference runs scaled to this machine's measured matmul rate."""

from __future__ import annotations

import pytest

from common.machine import expected_seconds
from jobs.config import ConfigError, ExpectedTime, load_config
from jobs.runner import Runner
from tests.conftest import REPO

REFERENCE = (
    "expected={matmul_gflops: {fp32: 200, bf16: 800}, stage_seconds: {ingest: 30, train-tokenizer: 240}}"
)


def test_each_stage_scales_from_a_run_in_the_precision_it_multiplies_in_here():
    bf16_machine = ExpectedTime(
        matmul_gflops={"fp32": 200.0, "bf16": 800.0},
        stage_seconds={"ingest": 10.0, "train-tokenizer": 100.0, "train-dynamics": 300.0},
        precision={"train-dynamics": "bf16"},
    )
    fp32_machine = ExpectedTime(
        matmul_gflops={"fp32": 40.0}, stage_seconds={"ingest": 40.0, "train-dynamics": 2000.0}
    )
    stages = ["ingest", "train-tokenizer", "train-dynamics", "generate"]
    # 2x slower in fp32, 4x in bf16: each stage from the nearer machine, dynamics by the bf16 ratio
    here = expected_seconds(
        stages, [bf16_machine, fp32_machine], {"fp32": 100.0, "bf16": 200.0}, {"train-dynamics": "bf16"}
    )
    assert here == {"ingest": (20.0, ""), "train-tokenizer": (200.0, ""), "train-dynamics": (1200.0, "")}
    # a CPU without bf16 trains dynamics in fp32: it scales from the run that did too
    fp32_only = expected_seconds(stages, [bf16_machine, fp32_machine], {"fp32": 100.0}, {})
    assert fp32_only["train-dynamics"] == (800.0, "")
    assert fp32_only["ingest"] == (20.0, "")  # 200 is nearer 100 than 40 is (in ratio)
    assert expected_seconds(["ingest"], [bf16_machine, fp32_machine], {"fp32": 60.0}, {}) == {
        "ingest": (40.0 * 40 / 60, "")  # the nearest machine's run, the other way round
    }
    # with no such run it scales across precisions, and says that this is a guess
    seconds, caveat = expected_seconds(["train-dynamics"], [bf16_machine], {"fp32": 100.0}, {})[
        "train-dynamics"
    ]
    assert seconds == 2400.0 and "bf16" in caveat and "fp32" in caveat


def test_a_reference_run_names_real_stages_and_the_rates_of_its_precisions():
    problems = []
    for bad in (
        "expected={matmul_gflops: {fp32: 200}, stage_seconds: {train-tokeniser: 240}}",
        "expected={matmul_gflops: {bf16: 800}, stage_seconds: {ingest: 30}}",
        "expected=[{matmul_gflops: {fp32: 200}, stage_seconds: {ingest: 30}, precision: {encode: bf16}}]",
    ):
        with pytest.raises(ConfigError) as caught:
            load_config(None, [bad])
        problems += caught.value.problems
    assert problems[0].startswith("expected.0.stage_seconds") and "train-tokeniser" in problems[0]
    assert "train-dynamics" in problems[0]  # the stages it knows
    assert problems[1].startswith("expected.0") and "fp32" in problems[1]
    assert problems[2].startswith("expected.0") and "bf16" in problems[2]


def test_run_says_how_long_the_stages_it_will_run_should_take_here(tmp_path):
    said: list[str] = []
    cfg = load_config(
        REPO / "configs" / "tiny.yaml", [f"root={tmp_path}", "tracking.enabled=false", REFERENCE]
    )
    Runner(cfg, echo=said.append)._say_expected_time(["ingest", "train-tokenizer", "encode"])
    assert len(said) == 1, said
    line = said[0]
    assert "GFLOP/s fp32" in line and "reference runs at 800 bf16 / 200 fp32" in line
    assert "ingest" in line and "train-tokenizer" in line and "encode" not in line  # no reference for it
    minutes = float(line.split("expect about ")[1].split(" min")[0])
    assert minutes >= 0  # a number, whatever this machine's speed
