"""`stvideo encode` end to end: Ray Data, a real Zarr store, rejects, and a real kill."""

import json
import subprocess
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
import zarr

from pipeline.latents import MISSING, key_strings, open_latents
from pipeline.shards import RawManifest, iter_samples
from pipeline.video import encode_mp4, read_frames
from tests.conftest import FEW_VIDEOS, build_raw, kill_when, run_stvideo, start_stvideo, untracked_tiny
from tokenizer.settings import VQGANConfig
from tokenizer.tokenizer import Tokenizer

pytestmark = pytest.mark.slow


def make_root(root, num_videos=40):
    build_raw(root, num_videos=num_videos, per_shard=20)
    torch.manual_seed(0)
    tokenizer = Tokenizer(VQGANConfig(base_channels=8, channel_mults=(1, 1, 2), codebook_size=64))
    tokenizer.save_pretrained(root / "tokenizer")
    return Tokenizer.from_pretrained(root / "tokenizer")


def encode_args(root, *extra):
    return [
        "encode",
        "--set",
        f"root={root}",
        "--set",
        "tracking.enabled=false",
        "--set",
        "ray.num_cpus=2",
        *extra,
    ]


def grey_frames(data: bytes) -> torch.Tensor:
    frames = read_frames(data, size=64)
    return torch.from_numpy(
        frames.mean(-1, keepdims=True).round().astype(np.uint8).transpose(0, 3, 1, 2).copy()
    )


def test_encode_writes_a_store_that_round_trips_through_the_tokenizer(tmp_path):
    root = tmp_path / "run"
    tokenizer = make_root(root)
    driver = start_stvideo(
        *encode_args(root, "--set", "encode.clips_per_shard=8"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = driver.communicate(timeout=600)
    result = subprocess.CompletedProcess(driver.args, driver.returncode, out, err)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "40 clips of 20 frames" in result.stdout
    # the encoder actors wrote every shard; the driver (the CLI's process) wrote none
    records = [json.loads(p.read_text()) for p in (root / "latents.zarr" / "_progress").glob("shard-*.json")]
    assert len(records) == 5 and all(r["writer"]["pid"] not in (driver.pid, 0) for r in records)
    # the stage's own time, split: Ray's start and the model load, then the encoding itself
    metrics = json.loads((root / "latents.zarr" / "_stage.json").read_text())["metrics"]
    assert 0 < metrics["startup_seconds"] < metrics["seconds"]
    assert metrics["clips_per_s_encoding"] > metrics["clips_per_s"] > 0
    assert "while encoding, after" in result.stdout

    group = zarr.open_group(str(root / "latents.zarr"), mode="r")  # plain zarr
    codes, sources = group["codes"], key_strings(group["source"][:])
    assert codes.shape == (40, 20, 16, 16) and codes.dtype == np.uint16 and codes.chunks == (8, 20, 16, 16)
    assert group.attrs["tokenizer_identity"] == tokenizer.identity and group.attrs["complete"]
    assert MISSING not in group["split"][:]
    assert list(sources) == [video["key"] for _, video in RawManifest.read(str(root / "raw")).videos()]

    # encode then decode gives the tokenizer's own reconstruction of those frames
    samples = {s["__key__"]: s for s in iter_samples(str(root / "raw" / "shard-000001.tar"))}
    for index in (20, 33):
        frames = grey_frames(samples[sources[index]]["mp4"])
        stored = torch.from_numpy(codes[index].astype(np.int64))
        assert torch.equal(stored, tokenizer.encode(frames))
        assert torch.equal(tokenizer.decode(stored), tokenizer.decode(tokenizer.encode(frames)))

    again = run_stvideo(*encode_args(root, "--set", "encode.clips_per_shard=8"))
    assert again.returncode == 0 and "encode: skipped, complete for this config" in again.stdout

    # the store is derived data: another layout replaces it rather than mixing into it
    other = run_stvideo(*encode_args(root, "--set", "encode.clips_per_shard=4"))
    assert other.returncode == 0, other.stderr[-3000:]
    assert "encode: outdated (encode.clips_per_shard)" in other.stdout
    assert zarr.open_group(str(root / "latents.zarr"), mode="r")["codes"].chunks == (4, 20, 16, 16)
    # an unfinished run of another layout is started over, never mixed into
    staging = root / ".staging" / "latents.zarr"
    staging.mkdir(parents=True)
    staging.with_name("latents.zarr.started.json").write_text(json.dumps({"fingerprint": "another-config"}))
    (staging / "stale.bin").write_bytes(b"left by a killed run")
    redone = run_stvideo(*encode_args(root, "--set", "encode.clips_per_shard=8"))
    assert redone.returncode == 0, redone.stderr[-3000:]
    assert "starting over (it started with another config or other inputs)" in redone.stdout
    assert zarr.open_group(str(root / "latents.zarr"), mode="r")["codes"].chunks == (8, 20, 16, 16)
    assert not (root / "latents.zarr" / "stale.bin").exists() and not staging.exists()


def test_a_video_that_fails_mid_way_is_rejected_and_the_rest_is_intact(tmp_path):
    root = tmp_path / "run"
    make_root(root, num_videos=12)
    manifest = json.loads((root / "raw" / "manifest.json").read_text())
    # swap one video for a copy whose second half is cut away, behind ingest's back
    shard = root / "raw" / manifest["shards"][0]["name"]
    samples = list(iter_samples(str(shard)))
    victim = samples[3]["__key__"]
    video = encode_mp4(np.zeros((20, 64, 64), dtype=np.uint8) + 40, fps=10)
    samples[3]["mp4"] = video[: int(len(video) * 0.6)]
    with open(shard, "wb") as stream:
        writer = wds.TarWriter(stream, encoder=False)
        for sample in samples:
            writer.write(sample)
        writer.close()
    result = run_stvideo(*encode_args(root, "--set", "encode.clips_per_shard=4"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 missing" in result.stdout
    store = open_latents(str(root / "latents.zarr"))
    split, sources = store.group["split"][:], store.sources()
    assert [sources[i] for i in np.flatnonzero(split == MISSING)] == [victim]
    assert (split != MISSING).sum() == 11
    [reject] = store.attrs["rejected"]
    assert reject["key"] == victim and reject["reason"]


def test_a_killed_encode_resumes_without_duplicates_or_holes(tmp_path):
    root = tmp_path / "run"
    tokenizer = make_root(root, num_videos=240)
    args = encode_args(root, "--set", "encode.clips_per_shard=2", "--set", "encode.batch_size=2")
    staging = root / ".staging" / "latents.zarr"  # where encode writes until it is complete
    written = kill_when(args, staging / "_progress", "shard-*.json", 3)
    assert 3 <= written < 120, "the kill must land mid-run"
    assert not zarr.open_group(str(staging), mode="r").attrs["complete"]
    assert not (root / "latents.zarr").exists()

    result = run_stvideo(*args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "encode: resuming the unfinished run" in result.stdout
    assert f"{written} shards were already written" in result.stdout
    assert not staging.exists()
    store = open_latents(str(root / "latents.zarr"), tokenizer_identity=tokenizer.identity)
    sources = list(store.sources())
    manifest = RawManifest.read(str(root / "raw"))
    assert sources == [video["key"] for _, video in manifest.videos()]  # no hole, no duplicate
    assert MISSING not in store.group["split"][:]
    samples = {
        s["__key__"]: s
        for name in ("shard-000000.tar", "shard-000011.tar")
        for s in iter_samples(str(root / "raw" / name))
    }
    for index in (0, 7, 225, 239):  # early clips (before the kill) and late ones (after the resume)
        expected = tokenizer.encode(grey_frames(samples[sources[index]]["mp4"]))
        assert torch.equal(torch.from_numpy(store.codes[index].astype(np.int64)), expected), index


def test_ingest_and_encode_into_s3_through_a_local_server(s3_server, tmp_path):
    """The stages read and write `s3://` roots through fsspec (moto's S3 server on 127.0.0.1)."""
    local = tmp_path / "local"
    tokenizer = make_root(local, num_videos=2)  # only its tokenizer is used
    root = f"{s3_server}/tiny"
    common = [*untracked_tiny(root), "--set", "data.moving_mnist.num_videos=12", *FEW_VIDEOS]
    ingest = run_stvideo("ingest", *common)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    encode = run_stvideo("encode", *common, "--set", f"encode.tokenizer={local / 'tokenizer'}")
    assert encode.returncode == 0, encode.stderr[-3000:]
    store = open_latents(f"{root}/latents.zarr", tokenizer_identity=tokenizer.identity)
    assert store.num_clips == 12 and MISSING not in store.group["split"][:]
    assert sorted(store.sources()) == [f"mmnist-s0-{i:07d}" for i in range(12)]
    # both outputs were swapped in from their staging locations, which are gone
    from pipeline import storage

    assert storage.exists(f"{root}/raw/_stage.json") and storage.exists(f"{root}/latents.zarr/_stage.json")
    assert not storage.exists(f"{root}/.staging/latents.zarr") and not storage.exists(f"{root}/.staging/raw")


def test_a_shard_that_mixes_containers_encodes_every_video(tmp_path, video_folder):
    """mp4, webm, avi and mkv in one raw shard: Ray Data gives each row every container's
    column, the absent ones empty; every video must still be found and encoded."""
    root = tmp_path / "run"
    torch.manual_seed(0)
    Tokenizer(VQGANConfig(base_channels=8, channel_mults=(1, 1, 2), codebook_size=64)).save_pretrained(
        root / "tokenizer"
    )
    folder = ["--set", "data.source=folder", "--set", f"data.path={video_folder['path']}", *FEW_VIDEOS]
    folder += [
        "--set",
        "ingest.transcode=false",
        "--set",
        "tokenizer.model.in_channels=1",
    ]  # kept as they came
    result = run_stvideo("run", "--stages", "ingest,encode", *encode_args(root, *folder)[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((root / "raw" / "manifest.json").read_text())
    assert len(manifest["shards"]) == 1 and manifest["num_samples"] == len(video_folder["good"])
    containers = {
        name.rsplit(".", 1)[-1]
        for name in tarfile.open(root / "raw" / manifest["shards"][0]["name"]).getnames()
    }
    assert {"mp4", "webm", "avi", "mkv"} <= containers
    store = open_latents(str(root / "latents.zarr"))
    assert MISSING not in store.group["split"][:] and not store.attrs["rejected"]
    assert set(store.sources()) == {video["key"] for _, video in RawManifest.read(str(root / "raw")).videos()}
