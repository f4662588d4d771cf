"""Training the tokenizer on real shards: discriminator switch-on, resume, two processes."""

import itertools
import json

import pytest
import torch
from safetensors.torch import load_file

from pipeline.frames import RawVideoFrames
from pipeline.shards import iter_samples
from pipeline.splits import TRAIN, split_of
from tests.conftest import torchrun_two
from tokenizer.settings import TokenizerSettings, VQGANConfig
from tokenizer.tokenizer import Tokenizer
from tokenizer.train import FrameSource, train_tokenizer

pytestmark = pytest.mark.slow


def settings(**changes) -> TokenizerSettings:
    base = dict(
        model=VQGANConfig(frame_size=32, base_channels=8, codebook_size=32, channel_mults=(1, 1, 2)),
        max_steps=8,
        batch_videos=2,
        frames_per_video=2,
        warmup_steps=1,
        disc_start=3,
        eval_every=100,
        eval_videos=2,
        checkpoint_every=2,
        restart_every=2,
        num_workers=0,
        log_every=1,
        mixed_precision="no",
    )
    return TokenizerSettings(**{**base, **changes})


def source(shards) -> FrameSource:
    return FrameSource(shards, 0.2, 0.0)


class Interrupted(Exception):
    pass


def test_training_writes_a_loadable_checkpoint_and_the_discriminator_joins_on_time(raw_shards, tmp_path):
    logged = {}
    summary = train_tokenizer(
        settings(max_steps=5),
        source(raw_shards),
        tmp_path / "on",
        log_metrics=lambda m, step: logged.setdefault(step, m),
    )
    tokenizer = Tokenizer.from_pretrained(tmp_path / "on")
    assert tokenizer.encode(torch.zeros(1, 1, 32, 32, dtype=torch.uint8)).shape == (1, 8, 8)
    assert {"psnr", "ssim", "mse", "usage", "perplexity", "psnr_mean_frame"} <= set(summary)
    assert (tmp_path / "on" / "recon" / "step-000005.png").exists()
    # before disc_start the adversarial term is off; from it on, it is weighted in and D trains
    assert all(
        logged[step]["train/gan_weight"] == 0 and logged[step]["train/disc_loss"] == 0 for step in (1, 2, 3)
    )
    assert all(logged[step]["train/disc_loss"] > 0 for step in (4, 5))

    train_tokenizer(settings(max_steps=5, disc_start=100), source(raw_shards), tmp_path / "off")
    train_tokenizer(settings(max_steps=3), source(raw_shards), tmp_path / "before")
    untrained = load_file(tmp_path / "off" / "discriminator.safetensors")
    assert all(
        torch.equal(untrained[k], v)
        for k, v in load_file(tmp_path / "before" / "discriminator.safetensors").items()
    )
    trained = load_file(tmp_path / "on" / "discriminator.safetensors")
    assert any(not torch.equal(untrained[k], v) for k, v in trained.items())


def test_an_interrupted_run_resumes_where_it_stopped(raw_shards, tmp_path):
    train_tokenizer(settings(), source(raw_shards), tmp_path / "straight")

    def stop_at_step_5(metrics, step):
        if step == 5:
            raise Interrupted

    with pytest.raises(Interrupted):
        train_tokenizer(settings(), source(raw_shards), tmp_path / "resumed", log_metrics=stop_at_step_5)
    steps_after = []
    train_tokenizer(
        settings(),
        source(raw_shards),
        tmp_path / "resumed",
        log_metrics=lambda m, step: steps_after.append(step),
    )
    assert steps_after[0] == 5  # the last checkpoint was step 4: the curve picks up right after it
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "resumed" / "model.safetensors")
    # same data position, same RNG, same optimizer state: the same weights as never stopping
    assert all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight), [
        k for k in straight if not torch.allclose(straight[k], resumed[k], atol=1e-6)
    ]


def test_readers_split_one_epoch_exactly(raw_shards):
    train_keys = sorted(
        sample["__key__"]
        for shard in raw_shards
        for sample in iter_samples(shard)
        if split_of(sample["__key__"], 0.2, 0.0) == TRAIN
    )
    for world in (1, 2, 3, 5):  # 3 shards: by whole shards up to 3 readers, by key beyond
        seen = []
        for rank in range(world):
            dataset = RawVideoFrames(
                raw_shards,
                TRAIN,
                0.2,
                0.0,
                frame_size=16,
                channels=1,
                frames_per_video=1,
                rank=rank,
                world_size=world,
                repeat=False,
            )
            seen += [item["key"] for item in dataset]
        assert sorted(seen) == train_keys, world


def test_decoded_frames_kept_in_memory_are_the_frames_decoding_gives(raw_shards):
    class CountedReads(RawVideoFrames):
        reads = 0

        def _read(self, sample, indices):
            CountedReads.reads += 1
            return super()._read(sample, indices)

    def first(count: int, cache_mb: float) -> tuple[list[dict], int]:
        CountedReads.reads = 0
        reader = CountedReads(
            raw_shards, TRAIN, 0.2, 0.0, frame_size=16, channels=1, frames_per_video=2, cache_mb=cache_mb
        )
        return list(itertools.islice(reader, count)), CountedReads.reads

    (decoded, reads), (cached, cached_reads) = first(60, 0), first(60, 64)  # several epochs
    assert [item["key"] for item in decoded] == [item["key"] for item in cached]
    assert all(torch.equal(a["frames"], b["frames"]) for a, b in zip(decoded, cached, strict=True))
    videos = len({item["key"] for item in cached})
    assert reads == 60 and cached_reads == videos < 60  # each video decoded once, in its first epoch
    _, over_budget = first(60, 1e-4)  # nothing fits: every video decoded every time
    assert over_budget == 60


def test_two_processes_see_each_video_once_per_epoch_and_train(raw_shards, tmp_path):
    result = torchrun_two("two_ranks.py", str(tmp_path), *raw_shards)
    assert result.returncode == 0, result.stderr[-4000:]
    rank0 = json.loads((tmp_path / "keys-0.json").read_text())
    rank1 = json.loads((tmp_path / "keys-1.json").read_text())
    train_keys = sorted(
        sample["__key__"]
        for shard in raw_shards
        for sample in iter_samples(shard)
        if split_of(sample["__key__"], 0.2, 0.0) == TRAIN
    )
    assert not set(rank0) & set(rank1)
    assert sorted(rank0 + rank1) == train_keys
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["psnr"] > 0
    Tokenizer.from_pretrained(tmp_path / "tokenizer")
