"""Where training runs: Accelerate's device, picked CUDA, then MPS, then the CPU, or named."""

import pytest
import torch

from common.training import DeviceUnavailable, make_accelerator, pick_device
from tests.conftest import run_stvideo

PRESENT = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}


def test_auto_picks_what_the_machine_has_and_a_named_device_must_be_there():
    expected = next((name for name, present in PRESENT.items() if present), "cpu")
    assert pick_device("auto") == expected
    assert make_accelerator("auto", 1).device.type == expected
    assert pick_device("cpu") == "cpu" and make_accelerator("auto", 1, "cpu").device.type == "cpu"
    for name in [name for name, present in PRESENT.items() if not present]:
        with pytest.raises(DeviceUnavailable, match=f"device: given {name}; this machine has none"):
            pick_device(name)


@pytest.mark.skipif(PRESENT["cuda"], reason="this machine has CUDA: the device asked for is there")
def test_a_training_stage_asked_for_a_missing_device_names_the_key(tmp_path):
    result = run_stvideo(
        "train-tokenizer",
        "--set",
        f"root={tmp_path}",
        "--set",
        "tokenizer.device=cuda",
        "--set",
        "tracking.enabled=false",
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "tokenizer.device: given cuda; this machine has none" in result.stderr


def test_two_stages_in_one_process_train_in_their_own_precisions():
    """`stvideo run` trains the tokenizer then the dynamics model in one process; Accelerate
    keeps one state per process, and each stage's precision must still be its own."""
    first = make_accelerator("no", 1, "cpu")
    assert first.mixed_precision == "no"
    second = make_accelerator("bf16", 1, "cpu")
    assert second.mixed_precision == "bf16"
    with second.autocast():
        assert (torch.ones(4, 4) @ torch.ones(4, 4)).dtype == torch.bfloat16
    assert make_accelerator("no", 1, "cpu").mixed_precision == "no"
