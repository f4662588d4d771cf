"""Ingest building blocks without Ray: listing, validating, packing one shard."""

import io
import json
import re

import decord
import numpy as np
import pytest
import webdataset as wds

from pipeline.shards import ShardTask, build_shard, read_part
from pipeline.sources import FolderSource, MovingMnistSource, safe_key
from pipeline.video import RejectedVideo, probe_video


def test_probe_reports_size_fps_and_frames(video_folder):
    info = probe_video((video_folder["path"] / "square.mp4").read_bytes(), min_frames=20)
    assert (info.num_frames, info.width, info.height, info.fps) == (24, 32, 32, 10.0)


def test_probe_rejects_each_bad_kind_with_its_reason(video_folder):
    for name, reason in video_folder["bad"].items():
        if name == "dangling.mp4":
            continue  # cannot even be read; the folder source rejects it (below)
        with pytest.raises(RejectedVideo, match=reason):
            probe_video((video_folder["path"] / name).read_bytes(), min_frames=20)


def test_folder_lists_videos_by_extension_with_dotless_unique_keys(video_folder):
    items = FolderSource(str(video_folder["path"]), ("mp4", "webm", "avi", "mkv", "mov")).items()
    names = {item.ref.split("videos/", 1)[1] for item in items}
    assert names == set(video_folder["good"]) | set(video_folder["bad"])  # readme.txt is not a video
    keys = [item.key for item in items]
    assert len(set(keys)) == len(keys) and not any("." in key for key in keys)
    assert "nested_clip" in keys


def test_folder_accepts_a_glob_and_a_single_file(video_folder):
    folder = video_folder["path"]
    globbed = FolderSource(str(folder / "*.mkv"), ("mkv",)).items()
    assert [item.key for item in globbed] == ["movie"]
    single = FolderSource(str(folder / "square.mp4"), ("mp4",)).items()
    assert [item.key for item in single] == ["square"]


def test_keys_that_collide_after_sanitising_stay_unique(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ["a/b.mp4", "a_b.mp4", "a_b.mkv"]:
        (tmp_path / name).write_bytes(b"x")
    keys = [item.key for item in FolderSource(str(tmp_path), ("mp4", "mkv")).items()]
    assert len(set(keys)) == 3 and not any("." in key for key in keys)
    assert safe_key("my clip.v2 (final)") == "my_clip_v2_final"


def test_one_shard_keeps_the_good_and_lists_the_bad(video_folder, tmp_path):
    source = FolderSource(str(video_folder["path"]), ("mp4", "webm", "avi", "mkv"))
    items = source.items()
    raw = str(tmp_path / "raw")
    report = build_shard(ShardTask(0, items, raw, "f00", min_frames=20), source)

    assert report.samples == len(video_folder["good"])
    reasons = {r["path"].split("videos/", 1)[1]: r["reason"] for r in report.rejects}
    assert set(reasons) == set(video_folder["bad"])
    for name, fragment in video_folder["bad"].items():
        assert re.search(fragment, reasons[name]), (name, reasons[name])

    decoded = {}
    for sample in wds.WebDataset(f"{raw}/shard-000000.tar", shardshuffle=False):
        meta = json.loads(sample["json"])
        extension = next(k for k in sample if k in {"mp4", "webm", "avi", "mkv"})
        reader = decord.VideoReader(io.BytesIO(sample[extension]))
        decoded[meta["source"].split("videos/", 1)[1]] = reader.get_batch(list(range(len(reader)))).asnumpy()
        assert meta["num_frames"] == len(reader) and (meta["width"], meta["height"]) == (32, 32)
        assert "." not in sample["__key__"]
    assert set(decoded) == set(video_folder["good"])
    for name, frames in video_folder["good"].items():
        assert decoded[name].shape == frames.shape
        assert np.abs(decoded[name].astype(int) - frames).mean() < 8, name  # lossy codecs, same picture

    # the part record is the commit marker and holds what the manifest needs
    part = read_part(raw, 0)
    assert part is not None and part.keys == report.keys and part.fingerprint == "f00"


def test_generated_shard_matches_the_generator(tmp_path):
    source = MovingMnistSource(num_videos=3, fps=10, seed=4)
    raw = str(tmp_path / "raw")
    report = build_shard(ShardTask(0, source.items(), raw, "f", min_frames=20), source)
    assert report.samples == 3 and not report.rejects
    samples = list(wds.WebDataset(f"{raw}/shard-000000.tar", shardshuffle=False))
    meta = json.loads(samples[1]["json"])
    assert meta["num_frames"] == 20 and meta["fps"] == 10.0 and len(meta["label"]) == 2


def test_folder_source_and_shards_work_through_fsspec_uris(video_folder):
    """The same code path on a non-local filesystem: fsspec's in-memory one."""
    import fsspec

    memory = fsspec.filesystem("memory")
    for name in ["square.mp4", "old.avi", "notes.mp4"]:
        memory.pipe(f"/inbox/{name}", (video_folder["path"] / name).read_bytes())
    source = FolderSource("memory://inbox", ("mp4", "avi"))
    items = source.items()
    expected = [memory.unstrip_protocol(f"/inbox/{n}") for n in ["notes.mp4", "old.avi", "square.mp4"]]
    assert sorted(item.ref for item in items) == expected
    report = build_shard(ShardTask(0, items, "memory://out/raw", "f", min_frames=20), source)
    assert report.samples == 2 and [r["path"] for r in report.rejects] == [expected[0]]
    assert memory.exists("/out/raw/shard-000000.tar") and memory.exists("/out/raw/_parts/shard-000000.json")
    assert read_part("memory://out/raw", 0).keys == report.keys
    with pytest.raises(FileNotFoundError):
        FolderSource("memory://inbox/absent.mp4", ("mp4",)).items()


def test_a_file_name_that_looks_like_a_glob_is_still_a_file(tmp_path, video_folder):
    odd = tmp_path / "clip [1080p].mp4"
    odd.write_bytes((video_folder["path"] / "square.mp4").read_bytes())
    [item] = FolderSource(str(odd), ("mp4",)).items()
    assert item.key == "clip_1080p"
    assert probe_video(FolderSource(str(odd), ("mp4",)).fetch(item).read()).num_frames == 24
