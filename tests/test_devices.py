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
