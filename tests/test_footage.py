"""Brought footage: prepared once at ingest (rate, size with the aspect kept, short GOPs), split
into shots that no clip crosses, split by time when there are few videos, and in colour."""

from __future__ import annotations

import io
import json

import decord
import numpy as np
import pytest
import zarr

from pipeline.clips import clip_windows
from pipeline.decoders import PyAVDecoder
from pipeline.footage import Preparation, detect_shots, fit_square, prepare, resampled_indices, scaled_size
from pipeline.latents import key_strings
from pipeline.shards import iter_samples
from pipeline.splits import TEST, TRAIN, VAL, split_mode, video_segments
from pipeline.video import encode_mp4
from tests.conftest import REPO, run_stvideo, scene


def test_resampling_keeps_the_duration_at_the_target_rate():
    assert resampled_indices(90, 30.0, 10.0) == list(range(0, 90, 3))
    assert len(resampled_indices(150, 25.0, 10.0)) == 60  # 6 s at 10 fps
    slower = resampled_indices(20, 5.0, 10.0)  # 4 s at 5 fps: every frame twice
    assert len(slower) == 40 and slower[:4] == [0, 0, 1, 1]


def test_the_aspect_is_kept_by_cropping_or_padding():
    assert scaled_size(1280, 720, 64, "centre") == (114, 64)
    assert scaled_size(240, 400, 64, "centre") == (64, 106)
    assert scaled_size(240, 400, 64, "pad") == (38, 64)
    tall = np.zeros((1, 106, 64, 3), dtype=np.uint8)
    tall[:, :21], tall[:, 85:] = 255, 128  # what a centre crop of 64 rows must cut away
    assert fit_square(tall, 64, "centre", 0.5).max() == 0
    assert fit_square(tall, 64, "random", 0.0)[0, 0, 0, 0] == 255  # the top
    narrow = np.full((1, 64, 38, 3), 200, dtype=np.uint8)
    padded = fit_square(narrow, 64, "pad", 0.5)
    assert (
        padded.shape == (1, 64, 64, 3) and padded[0, :, :13].max() == 0 and padded[0, :, 13:51].min() == 200
    )


def test_a_hard_cut_is_found_and_motion_is_not_a_cut():
    frames = np.concatenate([scene(64, 64, 30, seed=1, pan=3), scene(64, 64, 30, seed=2, pan=3)])
    assert detect_shots(frames, threshold=30) == [(0, 30), (30, 60)]
    assert detect_shots(scene(64, 64, 60, seed=3, pan=4), threshold=30) == [(0, 60)]


def test_prepare_stores_the_training_geometry_and_describes_the_original():
    data = encode_mp4(scene(400, 300, 50, seed=1), fps=25)
    how = Preparation(fps=10, size=32, fit="centre", shot_threshold=30, seed=0, encoding={})
    prepared = prepare(data, "clip", "/videos/clip.mp4", how)
    reader = decord.VideoReader(io.BytesIO(prepared.data))
    assert len(reader) == prepared.num_frames == 20 and reader[0].shape == (32, 32, 3)
    assert reader.get_avg_fps() == pytest.approx(10)
    assert prepared.original == {
        "path": "/videos/clip.mp4",
        "width": 400,
        "height": 300,
        "fps": pytest.approx(25),
        "num_frames": 50,
        "duration_s": 2.0,
    }


class CountingReads(io.BytesIO):
    """A file that remembers the largest single read asked of it."""

    largest = 0

    def read(self, size=-1):
        data = super().read(size)
        self.largest = max(self.largest, len(data))
        return data


@pytest.mark.parametrize("frames,fps", [(50, 25), (23, 15), (13, 5)])
def test_prepare_streams_the_file_once_and_gives_what_decoding_it_whole_gives(frames, fps):
    video = scene(400, 300, frames, seed=1)
    data = encode_mp4(
        np.concatenate([video[: frames // 2], scene(400, 300, frames - frames // 2, seed=7)]), fps
    )
    # losslessly encoded (crf 0): libx264's bytes differ from one encode of the same frames to
    # the next on some machines (its threads), the frames it was given do not
    how = Preparation(fps=10, size=32, fit="centre", shot_threshold=30, seed=0, encoding={"crf": 0})
    stream = CountingReads(data)
    prepared = prepare(stream, "clip", "clip.mp4", how)
    assert stream.largest <= 64 * 1024 < len(data)  # read as decoded, never whole

    # the reference: every frame counted first, then the resampled ones decoded, fitted, encoded
    decoder = PyAVDecoder(data)
    indices = resampled_indices(decoder.num_frames, decoder.fps, 10)
    fitted = fit_square(decoder.frames(indices, *scaled_size(400, 300, 32, "centre")), 32, "centre", 0.5)
    assert prepared.num_frames == len(fitted)
    reference = PyAVDecoder(encode_mp4(fitted, 10, crf=0))
    streamed = PyAVDecoder(prepared.data)
    every = list(range(len(fitted)))
    assert streamed.num_frames == reference.num_frames == len(fitted)
    assert np.array_equal(streamed.frames(every), reference.frames(every))
    assert prepared.shots == detect_shots(fitted, 30)


def test_few_videos_are_split_by_time_with_a_gap_and_many_by_video():
    assert split_mode(5, 0.2, 0.2, "auto") == "time" and split_mode(40, 0.1, 0.1, "auto") == "video"
    segments = video_segments("a", 100, "time", 0.2, 0.2, gap=10)
    assert [split for split, _, _ in segments] == [TRAIN, VAL, TEST]
    for (_, _, end), (_, start, _) in zip(segments, segments[1:], strict=False):
        assert start - end == 10  # a clip-long gap: no frame in two splits, no clip beside another
    video = {"key": "a", "num_frames": 100, "fps": 10.0, "segments": segments, "shots": [(0, 45), (45, 100)]}
    starts, splits, _ = clip_windows(video, 10, 10, None, (0.2, 0.2))
    for start, split in zip(starts, splits, strict=True):
        assert not start < 45 < start + 10  # no clip crosses the cut
        assert any(s == split and lo <= start and start + 10 <= hi for s, lo, hi in segments)
    assert set(splits) == {TRAIN, VAL, TEST}


@pytest.mark.slow
def test_footage_goes_through_the_whole_pipeline_in_colour(tmp_path, footage_folder):
    """configs/footage.yaml as shipped (motion scores and filter, patch tokens, the residual
    factorized head, anchored decoding), with small step budgets, on test-made videos."""
    root = tmp_path / "footage"
    small = {
        "root": root,
        "tracking.enabled": "false",
        "data.path": footage_folder["path"],
        "data.clip_frames": 10,
        "data.val_fraction": 0.3,
        "data.test_fraction": 0.3,
        "tokenizer.max_steps": 20,
        "tokenizer.eval_every": 20,
        "tokenizer.checkpoint_every": 20,
        "tokenizer.eval_videos": 4,
        "tokenizer.num_workers": 0,
        "dynamics.max_steps": 10,
        "dynamics.eval_every": 10,
        "dynamics.checkpoint_every": 10,
        "dynamics.eval_batches": 2,
        "generate.generate_frames": 5,
        "generate.samples": 2,
        "generate.num_actors": 1,
    }
    overrides = [arg for key, value in small.items() for arg in ("--set", f"{key}={value}")]
    result = run_stvideo("run", "--config", str(REPO / "configs" / "footage.yaml"), *overrides)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "split by time, chosen by data.split_by=auto" in result.stdout

    manifest = json.loads((root / "raw" / "manifest.json").read_text())
    rejects = [json.loads(line) for line in (root / "raw" / "rejects.jsonl").read_text().splitlines()]
    assert [r["path"].rsplit("/", 1)[-1] for r in rejects] == ["short.mp4"]
    assert "fewer than one clip" in rejects[0]["reason"]
    samples = {
        sample["__key__"]: sample
        for shard in manifest["shards"]
        for sample in iter_samples(str(root / "raw" / shard["name"]))
    }
    assert sorted(samples) == ["cut", "landscape", "portrait", "wide"]
    originals = {}
    for key, sample in samples.items():
        meta = json.loads(sample["json"])
        reader = decord.VideoReader(io.BytesIO(sample["mp4"]))
        assert reader[0].shape == (64, 64, 3) and reader.get_avg_fps() == pytest.approx(10)
        assert meta["fps"] == pytest.approx(10) and meta["width"] == meta["height"] == 64
        original = meta["original"]
        originals[key] = (original["width"], original["height"], round(original["fps"]))
    assert originals == {
        "wide": (1280, 720, 30),
        "landscape": (400, 300, 25),
        "cut": (480, 360, 20),
        "portrait": (240, 400, 25),
    }

    # the cut is found at 4 s (frame 40 at 10 fps) and no clip of the store crosses it
    cut = json.loads(samples["cut"]["json"])
    assert [start for start, _ in cut["shots"]] == [0, 40]
    store = zarr.open_group(str(root / "latents.zarr"), mode="r")
    sources, starts = key_strings(store["source"][:]), store["start_frame"][:]
    cut_starts = starts[sources == "cut"]
    assert len(cut_starts) and not any(start < 40 < start + 10 for start in cut_starts)
    assert set(store["split"][:].tolist()) == {TRAIN, VAL, TEST}
    # every clip's motion is scored (these pan); train-dynamics says what the threshold kept
    assert (store["motion"][:] > 0).all()  # NaN only for a clip that failed to decode
    assert "clips with motion >= 0.5: train" in result.stdout

    # the portrait is cropped, not squashed: its red top fifth is cut away
    portrait = decord.VideoReader(io.BytesIO(samples["portrait"]["mp4"]))  # transcoded: mp4
    top = portrait.get_batch(list(range(10))).asnumpy()[:, :3].reshape(-1, 3).mean(axis=0)
    assert not (top[0] > 150 and top[1] < 80 and top[2] < 80), top

    # colour all the way: the tokenizer, the continuations and their preview
    tokenizer_config = json.loads((root / "tokenizer" / "config.json").read_text())
    assert tokenizer_config["model"]["in_channels"] == 3
    generated = root / "generations" / "default"
    [first, *_] = sorted((generated / "videos").glob("*.mp4"))
    frame = decord.VideoReader(str(first))[0].asnumpy().astype(int)
    assert np.abs(frame[..., 0] - frame[..., 2]).mean() > 5  # not grey
