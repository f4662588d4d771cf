"""Training the dynamics model from a real latent store: resume, no pixels, several processes."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from accelerate.utils.other import load as accelerate_load
from safetensors.torch import load_file

from dynamics.checkpoint import load_dynamics
from dynamics.settings import DynamicsSettings, STTransformerConfig
from dynamics.train import train_dynamics
from pipeline.latents import LatentStore, LatentStoreError
from pipeline.splits import TRAIN, VAL
from tests.conftest import REPO, torchrun_two
from tokenizer.settings import VQGANConfig
from tokenizer.tokenizer import Tokenizer

pytestmark = pytest.mark.slow
FRAMES, GRID = 8, (4, 4)


@pytest.fixture(scope="module")
def latent_root(tmp_path_factory):
    """A tokenizer checkpoint and a store of 24 clips encoded 'by' it (codes: moving stripes)."""
    root = tmp_path_factory.mktemp("latent-root")
    torch.manual_seed(0)
    tokenizer = Tokenizer(
        VQGANConfig(frame_size=16, base_channels=8, channel_mults=(1, 1, 2), codebook_size=32)
    )
    identity = tokenizer.save_pretrained(root / "tokenizer")
    store = LatentStore.create(
        str(root / "latents.zarr"),
        24,
        FRAMES,
        GRID,
        4,
        {
            "tokenizer_identity": identity,
            "codebook_size": 32,
            "clip_stride": FRAMES,
            "fps": 10.0,
            "frame_size": 16,
        },
    )
    for shard in range(store.num_shards):
        start, stop = store.shard_range(shard)
        clips = []
        for index in range(start, stop):
            t = np.arange(FRAMES)[:, None, None]
            x = np.arange(GRID[1])[None, None, :]
            codes = ((x + t * (1 + index % 3)) % 32).astype(np.uint16) * np.ones((1, GRID[0], 1), np.uint16)
            codes[:, 0, 0] = index  # which clip this is
            clips.append(codes)
        splits = np.array([VAL if i % 6 == 5 else TRAIN for i in range(start, stop)], dtype=np.uint8)
        store.write_shard(
            shard,
            np.stack(clips),
            [f"v{i}" for i in range(start, stop)],
            np.zeros(stop - start, np.int32),
            splits,
        )
    store.finish()
    return root


def settings(**changes) -> DynamicsSettings:
    base = dict(
        model=STTransformerConfig(d_model=32, n_layers=2, n_heads=4, max_frames=8),
        max_steps=8,
        batch_size=3,
        min_frames=4,
        warmup_steps=1,
        eval_every=100,
        eval_batches=2,
        checkpoint_every=2,
        log_every=1,
        mixed_precision="no",
    )
    return DynamicsSettings(**{**base, **changes})


class Interrupted(Exception):
    pass


def test_the_loop_keeps_its_cadence_and_a_finished_run_only_evaluates(tmp_path):
    """The skeleton both stages share, with a stand-in step: two micro-batches per step."""
    from types import SimpleNamespace

    from common.training import StepResult, make_accelerator, resume_progress, run_loop

    checkpoints = []

    def run() -> tuple[dict, list]:
        accelerator = make_accelerator("no", 2)
        progress = resume_progress(accelerator, tmp_path, "test-loop")
        micro_batches = iter(range(100))

        def step():
            if next(micro_batches) % 2 == 0:  # the first of two micro-batches: no optimizer step
                return None
            return StepResult(3, lambda: {"loss": 1.0 / (progress.step + 1)})

        logged = []
        summary = run_loop(
            accelerator,
            progress,
            SimpleNamespace(max_steps=7, max_minutes=None, log_every=2, eval_every=3, checkpoint_every=4),
            tmp_path,
            name="test-loop",
            unit="frames",
            step=step,
            evaluate=lambda: {"score": float(progress.step)},
            write_checkpoint=lambda: checkpoints.append(progress.step),
            log_metrics=lambda metrics, at: logged.append((at, sorted(metrics))),
        )
        return summary, logged

    summary, logged = run()
    logs = ["train/frames_per_s", "train/loss"]  # in chart sections, as MLflow groups them
    evals = ["train/frames_per_s", "train/max_steps", "train/steps", "train/stopped_by_time", "val/score"]
    assert logged == [(2, logs), (3, evals), (4, logs), (6, logs), (6, evals), (7, logs), (7, evals)]
    assert checkpoints == [4, 7] and (tmp_path / "train_state").is_dir()
    assert summary["score"] == 7.0 and summary["steps"] == 7 and summary["frames_per_s"] > 0
    assert summary["max_steps"] == 7 and summary["stopped_by_time"] == 0.0  # the step budget ended it
    assert json.loads((tmp_path / "metrics.json").read_text()) == summary
    # run again: it resumes at its last step, trains no more and reports what the checkpoint holds
    again, logged = run()
    assert again == {"score": 7.0} and logged == [] and checkpoints == [4, 7]


def test_a_time_budget_ends_the_run_with_an_evaluation_and_a_checkpoint(tmp_path):
    """max_minutes: the loop stops at the step that spends the budget, evaluates and saves there,
    and the LR schedule has decayed over the minutes; resumed, the run has nothing left to spend."""
    import time
    from types import SimpleNamespace

    import torch

    from common.training import (
        Budget,
        StepResult,
        adamw,
        make_accelerator,
        resume_progress,
        run_loop,
        time_guard_note,
    )

    checkpoints, rates = [], []

    def run() -> dict:
        accelerator = make_accelerator("no", 1)
        budget = Budget(minutes=0.3 / 60)  # 0.3 s
        optimizer, schedule = adamw(
            [torch.nn.Parameter(torch.zeros(1))], 1.0, (0.9, 0.95), 0.0, 0, 1000, budget
        )
        progress = resume_progress(accelerator, tmp_path, "test-budget", schedule, budget=budget)

        def step():
            time.sleep(0.05)
            optimizer.step()
            schedule.step()
            rates.append(schedule.get_last_lr()[0])
            return StepResult(1, lambda: {"loss": 1.0})

        return run_loop(
            accelerator,
            progress,
            SimpleNamespace(
                max_steps=1000,
                max_minutes=budget.minutes,
                log_every=100,
                eval_every=100,
                checkpoint_every=100,
            ),
            tmp_path,
            name="test-budget",
            unit="frames",
            step=step,
            evaluate=lambda: {"score": float(progress.step)},
            write_checkpoint=lambda: checkpoints.append(progress.step),
        )

    summary = run()
    steps = summary["steps"]
    assert 3 <= steps <= 8 and checkpoints == [steps] and summary["score"] == steps
    # the guard, not the step budget, ended it: the summary says so, and so does the stage's line
    assert summary["stopped_by_time"] == 1.0 and summary["max_steps"] == 1000
    assert json.loads((tmp_path / "metrics.json").read_text())["stopped_by_time"] == 1.0
    note = time_guard_note(summary, 0.005)
    assert note.startswith(f"{steps} of 1000 steps") and "STOPPED by the 0.005-minute time guard" in note
    assert time_guard_note({**summary, "stopped_by_time": 0.0}, 0.005) == f"{steps} of 1000 steps"
    assert json.loads((tmp_path / "train_state" / "progress.json").read_text())["seconds"] >= 0.3
    # the schedule follows the clock: well below the start by the end, though 1000 steps were allowed
    assert rates[-1] < 0.5 * rates[0]
    again = run()
    assert again == {"score": float(steps)} and checkpoints == [steps] and len(rates) == steps


def test_training_writes_a_checkpoint_that_names_its_tokenizer(latent_root, tmp_path):
    logged = {}
    summary = train_dynamics(
        settings(max_steps=12, lr=3e-3),
        str(latent_root / "latents.zarr"),
        latent_root / "tokenizer",
        tmp_path / "dyn",
        log_metrics=lambda m, step: logged.setdefault(step, m),
    )
    model, config = load_dynamics(tmp_path / "dyn")
    assert config["tokenizer_identity"] == Tokenizer.from_pretrained(latent_root / "tokenizer").identity
    assert config["grid"] == [4, 4] and config["clip_frames"] == FRAMES
    assert {"val_loss", "val_mse", "val_kl", "tokens_per_s"} <= set(summary)
    assert logged[12]["train/mse"] < logged[1]["train/mse"]
    assert {"train/loss", "train/mse", "train/kl", "train/lr", "train/tokens_per_s"} <= set(logged[1])


def test_refuses_latents_of_another_tokenizer(latent_root, tmp_path):
    other = tmp_path / "other-tokenizer"
    Tokenizer(
        VQGANConfig(frame_size=16, base_channels=8, channel_mults=(1, 1, 2), codebook_size=32)
    ).save_pretrained(other)
    with pytest.raises(LatentStoreError, match="encoded with tokenizer"):
        train_dynamics(settings(), str(latent_root / "latents.zarr"), other, tmp_path / "dyn")


def test_an_interrupted_run_resumes_where_it_stopped(latent_root, tmp_path):
    latents, tokenizer = str(latent_root / "latents.zarr"), latent_root / "tokenizer"
    train_dynamics(settings(), latents, tokenizer, tmp_path / "straight")

    def stop_at_5(metrics, step):
        if step == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_dynamics(settings(), latents, tokenizer, tmp_path / "resumed", log_metrics=stop_at_5)
    steps = []
    train_dynamics(
        settings(), latents, tokenizer, tmp_path / "resumed", log_metrics=lambda m, s: steps.append(s)
    )
    assert steps[0] == 5  # the last checkpoint was step 4
    # nothing in the resumable state needs unpickling: the step and the LR schedule are JSON
    state = tmp_path / "resumed" / "train_state"
    progress = json.loads((state / "progress.json").read_text())
    assert progress["step"] == settings().max_steps and len(progress["schedules"]) == 1
    for path in state.iterdir():
        if path.suffix not in (".json", ".safetensors"):
            accelerate_load(path)  # weights_only=True: refuses any object but tensors and numbers
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)


def test_a_run_on_an_s3_root_resumes_from_the_bucket_with_a_fresh_scratch(latent_root, tmp_path, s3_server):
    """A remote root: checkpoints are sent to the bucket as they are written; a run killed
    after step 5 resumes on another machine (a new, empty scratch) from the bucket's step 4,
    and ends where an uninterrupted run ends."""
    from safetensors.torch import load as safetensors_load

    from pipeline.storage import MirroredFolder, list_names, read_bytes, read_json

    latents, tokenizer = str(latent_root / "latents.zarr"), latent_root / "tokenizer"
    train_dynamics(settings(), latents, tokenizer, tmp_path / "straight")
    uri = f"{s3_server}/run/dynamics"

    def stop_at_5(metrics, step):
        if step == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        first = MirroredFolder(uri, tmp_path / "first")
        train_dynamics(settings(), latents, tokenizer, first, log_metrics=stop_at_5)
    assert read_json(f"{uri}/train_state.json") == {"folder": "train_state-000000004", "step": 4}
    steps = []
    fresh = MirroredFolder(uri, tmp_path / "second-machine")
    train_dynamics(settings(), latents, tokenizer, fresh, log_metrics=lambda m, s: steps.append(s))
    assert steps[0] == 5
    last = f"train_state-{settings().max_steps:09d}"
    assert [name for name in list_names(uri) if name.startswith("train_state")] == [last, "train_state.json"]
    (tmp_path / "downloaded").mkdir()
    MirroredFolder(uri, tmp_path / "downloaded").restore()  # what a third resume would start from
    progress = json.loads((tmp_path / "downloaded" / "train_state" / "progress.json").read_text())
    assert progress["step"] == settings().max_steps
    resumed = safetensors_load(read_bytes(f"{uri}/model.safetensors"))
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight)


def test_a_training_step_needs_no_video_decoder_and_no_tokenizer_decoder(latent_root, tmp_path):
    code = f"""
import sys
for name in ("decord", "av", "tokenizer.model", "tokenizer.tokenizer", "pipeline.video", "pipeline.frames"):
    sys.modules[name] = None  # importing any of them now fails
from dynamics.settings import DynamicsSettings, STTransformerConfig
from dynamics.train import train_dynamics
summary = train_dynamics(
    DynamicsSettings(model=STTransformerConfig(d_model=32, n_layers=1, n_heads=2, max_frames=8), max_steps=2,
                     batch_size=2, warmup_steps=1, eval_every=2, eval_batches=1, checkpoint_every=2),
    {str(latent_root / "latents.zarr")!r}, {str(latent_root / "tokenizer")!r}, {str(tmp_path / "dyn")!r})
assert summary["val_loss"] > 0
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_train_and_split_the_clips(latent_root, tmp_path):
    result = torchrun_two(
        "two_rank_dynamics.py",
        str(tmp_path),
        str(latent_root / "latents.zarr"),
        str(latent_root / "tokenizer"),
    )
    assert result.returncode == 0, result.stderr[-4000:]
    rank0 = json.loads((tmp_path / "clips-0.json").read_text())
    rank1 = json.loads((tmp_path / "clips-1.json").read_text())
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == [i for i in range(24) if i % 6 != 5]  # every training clip, once
    assert json.loads((tmp_path / "summary.json").read_text())["world_size"] == 2
    load_dynamics(tmp_path / "dynamics")


def test_the_same_loop_runs_in_ray_train_workers(latent_root, tmp_path):
    import shutil

    from tests.conftest import run_stvideo

    root = tmp_path / "root"
    shutil.copytree(latent_root, root)
    result = run_stvideo(
        "train-dynamics",
        "--set",
        f"root={root}",
        "--set",
        "ray.train_workers=2",
        "--set",
        "ray.num_cpus=2",
        "--set",
        "tracking.enabled=false",
        "--set",
        "dynamics.max_steps=3",
        "--set",
        "dynamics.batch_size=2",
        "--set",
        "dynamics.eval_every=3",
        "--set",
        "dynamics.eval_batches=1",
        "--set",
        "dynamics.checkpoint_every=3",
        "--set",
        "dynamics.model.d_model=32",
        "--set",
        "dynamics.model.n_layers=1",
        "--set",
        "dynamics.model.max_frames=8",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "val_mse" in result.stdout and "(2 Ray Train workers)" in result.stdout
    model, config = load_dynamics(root / "dynamics")
    assert config["grid"] == [4, 4]
