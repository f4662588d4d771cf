"""The clip decoder encode's Ray tasks run: rows per planned clip, a reason for a damaged video,
and no torch in the processes that decode."""

import subprocess
import sys

import numpy as np

from pipeline.clips import ClipDecoder, VideoPlan
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
