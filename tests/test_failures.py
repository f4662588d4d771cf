"""A failed stage says in one line what went wrong, where, and what to do; nothing else is lost."""

from __future__ import annotations

import errno
import json
import subprocess

import pytest

from jobs.failures import explain
from tests.conftest import run_stvideo, untracked_tiny


class TaskError(Exception):
    """Shaped like Ray's RayTaskError: the worker's own exception in `.cause`."""

    def __init__(self, cause: BaseException):
        super().__init__(f"ray::build_shard() failed\nTraceback ...\n{cause}")
        self.cause = cause


def test_the_cause_is_found_along_the_chain_and_said_in_one_line(tmp_path):
    written = str(tmp_path / "raw" / "shard-000003.tar")
    in_a_task = TaskError(OSError(errno.ENOSPC, "No space left on device", written))
    line = explain(in_a_task, [str(tmp_path)])
    assert line.startswith(f"no space left on device writing {written} (") and "MiB free in" in line
    assert "\n" not in line and "run again" in line
    # an OSError of a Ray worker reaches the driver as the text of its traceback only
    worker_said = f"Traceback ...\nOSError: [Errno 28] No space left on device: '{written}'"
    as_text = TaskError(RuntimeError(worker_said))
    assert explain(as_text, [str(tmp_path)]).startswith(f"no space left on device writing {written} (")
    # safetensors says it in words, with no errno; the chain runs through `raise ... from`
    try:
        try:
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
        except RuntimeError as err:
            raise ValueError("checkpoint failed") from err
    except ValueError as err:
        assert explain(err, [str(tmp_path)]).startswith("no space left on device: a disk is full")
    denied = explain(PermissionError(errno.EACCES, "Permission denied", "/data/root/raw"), [])
    assert denied.startswith("cannot write /data/root/raw (Permission denied)")
    assert explain(KeyError("codes"), [str(tmp_path)]) == "KeyError: 'codes'"


def test_a_root_that_is_a_file_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    result = run_stvideo("ingest", *untracked_tiny(tmp_path / "a-file"))
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"root: {tmp_path / 'a-file'} is a file, not a folder" in result.stderr
    assert "Traceback" not in result.stderr and (tmp_path / "a-file").read_text() == "not a folder"


@pytest.mark.slow
def test_a_full_disk_at_ingest_is_one_line_and_the_rerun_keeps_what_was_written(small_disk):
    root = small_disk / "tiny"
    full = run_stvideo("ingest", *untracked_tiny(root))
    assert full.returncode == 1, full.stderr[-2000:]
    [line] = [line for line in full.stderr.splitlines() if line.startswith("stvideo ingest:")]
    assert line.startswith("stvideo ingest: no space left on device") and str(root) in line, line
    assert "Traceback" not in full.stderr and not (root / "raw").exists()
    kept = len(list((root / ".staging" / "raw" / "_parts").glob("shard-*.json")))
    assert kept >= 1, "no shard was finished before the disk filled: make the disk larger"

    grown = subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], capture_output=True)
    assert grown.returncode == 0, grown.stderr
    again = run_stvideo("ingest", *untracked_tiny(root))
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{kept} shards were already complete and kept" in again.stdout
    assert json.loads((root / "raw" / "manifest.json").read_text())["num_samples"] == 48


def test_an_audio_only_file_is_rejected_as_having_no_video_stream():
    import io

    import av
    import numpy as np

    from pipeline.footage import Preparation, prepare
    from pipeline.video import RejectedVideo, open_video

    sound = io.BytesIO()
    with av.open(sound, "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for _ in range(10):
            wave = (0.1 * np.sin(np.arange(1024) * 0.05))[None].astype(np.float32)
            frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
            frame.sample_rate = 16000
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    how = Preparation(fps=10, size=64, fit="centre", shot_threshold=30, seed=0, encoding={})
    for read in (lambda: open_video(sound.getvalue()), lambda: prepare(sound.getvalue(), "a", "a.mp4", how)):
        with pytest.raises(
            RejectedVideo, match=r"^not a readable video: no video stream \(an audio-only file\?\)$"
        ):
            read()


def test_verify_reads_checkpoints_on_object_storage_and_names_a_truncated_one(s3_server):
    import torch
    from safetensors.torch import save

    from jobs.config import load_config
    from jobs.layout import Layout
    from jobs.verify import verify
    from pipeline import storage

    layout = Layout.of(load_config(None, [f"root={s3_server}/root"]))
    weights = save({"weight": torch.arange(4096, dtype=torch.float32)})
    storage.write_bytes_atomic(storage.join(layout.trained_tokenizer, "model.safetensors"), weights)
    truncated = storage.join(layout.trained_dynamics, "model.safetensors")
    storage.write_bytes_atomic(truncated, weights[: len(weights) // 2])
    (checked,) = verify(layout)
    assert (checked.what, checked.count) == ("checkpoints", 2)
    assert len(checked.bad) == 1 and checked.bad[0].startswith(f"{truncated}: unreadable (")
