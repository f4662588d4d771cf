"""The clip decoder encode's Ray tasks run: rows per planned clip, a reason for a damaged video,
and no torch in the processes that decode."""

import json
import shutil
import subprocess
import sys

import numpy as np

from pipeline.clips import ClipDecoder, ClipIndex, ClipWindows, VideoPlan, clip_windows, plan_clips
from pipeline.shards import RawManifest
from pipeline.video import encode_mp4
from tests.conftest import REPO


def plan(key: str, starts: tuple[int, ...]) -> VideoPlan:
    return VideoPlan(key=key, shard="shard-000000.tar", first_clip=7, starts=starts, step=1)


def test_each_planned_clip_is_a_row_of_its_frames():
    frames = np.repeat(np.arange(0, 240, 20, dtype=np.uint8), 32 * 32 * 3).reshape(12, 32, 32, 3)
    decoder = ClipDecoder({"good": plan("good", (0, 4))}, clip_frames=6, frame_size=32, channels=1)
    rows = list(decoder({"__key__": "good", "mp4": encode_mp4(frames, fps=10, crf=0)}))
    assert [(row["clip"], row["start"], row["error"]) for row in rows] == [(7, 0, ""), (8, 4, "")]
    assert rows[1]["frames"].shape == (6, 1, 32, 32)
    assert np.abs(rows[1]["frames"][:, 0, 0, 0].astype(int) - frames[4:10, 0, 0, 0]).max() <= 2
    assert list(decoder({"__key__": "elsewhere", "mp4": b""})) == []  # its shards are written


def test_a_video_that_fails_still_fills_its_rows_with_a_reason(monkeypatch):
    decoder = ClipDecoder({"bad": plan("bad", (0, 5, 10))}, clip_frames=5, frame_size=16, channels=1)
    rows = list(decoder({"__key__": "bad", "mp4": b"not a video at all"}))
    assert len(rows) == 3 and all(row["error"] for row in rows), rows
    assert all(not row["frames"].any() and row["frames"].shape == (5, 1, 16, 16) for row in rows)

    def silent(*args, **kwargs):
        raise ValueError()  # an error with no message still gets a reason, not an IndexError

    monkeypatch.setattr("pipeline.clips.iter_clips", silent)
    assert {row["error"] for row in decoder({"__key__": "bad", "mp4": b""})} == {"ValueError: ValueError"}


def test_decoding_clips_imports_no_torch():
    script = "import sys, pipeline.clips; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", script], cwd=REPO).returncode == 0


def test_each_latent_shard_plans_its_own_clips_from_the_raw_part_records(raw_shards, tmp_path):
    """Encode's driver keeps a clip count per raw shard; each task plans its latent shard's clips
    from the part records. They must be the clips, numbers and splits of one plan of everything,
    for a raw store written today (no video in its manifest) and one written before (every video
    inline, schema 1)."""
    raw = raw_shards[0].rsplit("/", 1)[0]
    today = RawManifest.read(raw)
    assert all(set(shard) == {"name", "samples", "bytes"} for shard in today.shards)
    old = tmp_path / "raw"
    shutil.copytree(raw, old)
    inline = dict(today.manifest, schema_version=1)
    inline.pop("videos")
    inline["shards"] = [
        dict(
            shard,
            videos=json.loads((old / "_parts" / shard["name"].replace(".tar", ".json")).read_text())[
                "videos"
            ],
        )
        for shard in today.shards
    ]
    (old / "_parts").rename(tmp_path / "parts-gone")  # a schema-1 reader must not need them
    (old / "manifest.json").write_text(json.dumps(inline))

    windows = ClipWindows(clip_frames=8, clip_stride=5, target_fps=None, fractions=(0.2, 0.2))
    expected, number = [], 0  # every clip, numbered by hand in manifest order
    for shard in inline["shards"]:
        for video in shard["videos"]:
            starts, splits, _ = clip_windows(video, 8, 5, None, (0.2, 0.2))
            expected += [
                (number + i, video["key"], start, split)
                for i, (start, split) in enumerate(zip(starts, splits, strict=True))
            ]
            number += len(starts)
    assert len({clip[3] for clip in expected}) == 3 and number > 64  # every split, several raw shards

    def flat(plans: list[VideoPlan]) -> list[tuple]:
        return [
            (plan.first_clip + i, plan.key, start, split)
            for plan in plans
            for i, (start, split) in enumerate(zip(plan.starts, plan.splits, strict=True))
        ]

    for manifest in (today, RawManifest.read(str(old))):
        assert flat(list(plan_clips(manifest, windows))) == expected
        index = ClipIndex.build(manifest, windows)
        assert index.num_clips == number and len(index.shards) == len(raw_shards)
        for per_shard in (7, 36, 64):  # shards inside a video, on raw shard bounds, across them
            planned = []
            for start in range(0, number, per_shard):
                plans = index.plans(start, min(start + per_shard, number))
                assert all(plan.shard.endswith(".tar") for plan in plans)
                planned += flat(plans)
            assert planned == expected, per_shard


def test_kept_videos_too_short_for_a_clip_once_split_by_time_are_counted_and_named():
    """Five held-out videos split by time into 8-frame clips: the short ones give no clip in any
    split, and ingest's tally says which and why, rather than only 'kept 5 of 5'."""
    from jobs.config import load_config
    from jobs.stages.base import ClipTally
    from pipeline.splits import video_segments

    cfg = load_config(
        REPO / "configs" / "tiny.yaml",
        ["data.clip_frames=8", "data.val_fraction=0.2", "data.test_fraction=0.2", "data.split_by=time"],
    )
    videos = [
        {
            "key": f"v{frames}",
            "fps": 10.0,
            "num_frames": frames,
            "segments": video_segments(f"v{frames}", frames, "time", 0.2, 0.2, gap=8),
            "shots": [(0, frames)],
        }
        for frames in (16, 26, 60, 80, 100)
    ]
    tally = ClipTally(cfg)
    tally.add(videos)
    assert tally.clipless == 2 and sum(tally.counts.values()) > 0
    note = tally.clipless_note()
    assert note.startswith(
        "; 2 kept videos give no clip: v16 (16 frames; its longest stretch inside one shot"
    )
    assert "v26 (26 frames;" in note and "a clip needs 8" in note and "v60" not in note
