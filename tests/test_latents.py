"""The latent store and its reader, on real Zarr stores (local and S3)."""

import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from pipeline.clips import motion_score
from pipeline.latents import (
    MISSING,
    LatentClips,
    LatentStore,
    LatentStoreError,
    clips_above,
    key_strings,
    open_latents,
)
from pipeline.splits import TEST, TRAIN, VAL
from tests.conftest import scene

CLIP_FRAMES, GRID = 6, (4, 4)


def clip_codes(index: int) -> np.ndarray:
    """A clip whose codes say which clip it is."""
    codes = np.full((CLIP_FRAMES, *GRID), index % 60000, dtype=np.uint16)
    codes[:, 0, 0] = np.arange(CLIP_FRAMES)
    return codes


def attrs(identity: str = "tok-a") -> dict:
    return {
        "tokenizer_identity": identity,
        "codebook_size": 512,
        "clip_stride": CLIP_FRAMES,
        "fps": 10.0,
        "frame_size": 64,
    }


def make_store(
    uri: str, num_clips: int = 30, per_shard: int = 4, splits=None, identity: str = "tok-a"
) -> LatentStore:
    store = LatentStore.create(uri, num_clips, CLIP_FRAMES, GRID, per_shard, attrs(identity))
    for shard in range(store.num_shards):
        start, stop = store.shard_range(shard)
        clips = np.stack([clip_codes(i) for i in range(start, stop)])
        split = np.array([splits[i] if splits else TRAIN for i in range(start, stop)], dtype=np.uint8)
        store.write_shard(
            shard,
            clips,
            [f"video-{i}" for i in range(start, stop)],
            np.zeros(stop - start, dtype=np.int32),
            split,
            motion=np.arange(start, stop, dtype=np.float32) / 4,
        )
    store.finish()
    return store


def clip_ids(tensors) -> list[int]:
    return sorted(int(t[1, 1, 1]) for t in tensors)


def test_schema_is_plain_zarr_and_validated(tmp_path):
    uri = str(tmp_path / "latents.zarr")
    make_store(uri, num_clips=10, per_shard=4)
    group = zarr.open_group(uri, mode="r")  # plain zarr reads it
    codes = group["codes"]
    assert codes.shape == (10, CLIP_FRAMES, 4, 4) and codes.dtype == np.uint16
    assert codes.chunks == (4, CLIP_FRAMES, 4, 4) and codes.shards is None  # a shard is one chunk
    assert group.attrs["schema_version"] == 3 and group.attrs["complete"] is True
    assert group["source"].dtype == np.uint8  # UTF-8 bytes: a Zarr v3 core type
    assert list(key_strings(group["source"][:2])) == ["video-0", "video-1"]
    assert np.array_equal(codes[7], clip_codes(7))
    assert open_latents(uri, tokenizer_identity="tok-a").num_shards == 3


def test_open_refuses_foreign_incomplete_and_non_stores(tmp_path):
    uri = str(tmp_path / "latents.zarr")
    make_store(uri)
    with pytest.raises(LatentStoreError, match="encoded with tokenizer tok-a, not tok-b"):
        open_latents(uri, tokenizer_identity="tok-b")
    with pytest.raises(LatentStoreError, match="no latent store"):
        open_latents(str(tmp_path / "absent.zarr"))
    zarr.open_group(str(tmp_path / "other.zarr"), mode="w").attrs["hello"] = 1
    with pytest.raises(LatentStoreError, match="not a latent store"):
        open_latents(str(tmp_path / "other.zarr"))
    half = LatentStore.create(str(tmp_path / "half.zarr"), 8, CLIP_FRAMES, GRID, 4, attrs())
    half.write_shard(
        0, np.stack([clip_codes(i) for i in range(4)]), ["v"] * 4, np.zeros(4, "int32"), np.zeros(4, "uint8")
    )
    with pytest.raises(LatentStoreError, match="not written yet"):
        half.finish()
    with pytest.raises(LatentStoreError, match="incomplete"):
        open_latents(str(tmp_path / "half.zarr"))
    assert open_latents(str(tmp_path / "half.zarr"), complete=False).done_shards() == {0}


def test_a_writer_can_only_write_a_whole_shard(tmp_path):
    store = LatentStore.create(str(tmp_path / "s.zarr"), 10, CLIP_FRAMES, GRID, 4, attrs())
    with pytest.raises(ValueError, match="holds clips 4..7"):
        store.write_shard(
            1, np.zeros((3, CLIP_FRAMES, *GRID)), ["v"] * 3, np.zeros(3, "int32"), np.zeros(3, "uint8")
        )
    # the last shard is short: exactly its clips
    store.write_shard(
        2, np.stack([clip_codes(8), clip_codes(9)]), ["a", "b"], np.zeros(2, "int32"), np.zeros(2, "uint8")
    )
    assert store.done_shards() == {2}


def _write_shards(uri: str, shards: list[int]) -> None:
    store = open_latents(uri, complete=False)
    for shard in shards:
        start, stop = store.shard_range(shard)
        store.write_shard(
            shard,
            np.stack([clip_codes(i) for i in range(start, stop)]),
            [f"video-{i}" for i in range(start, stop)],
            np.arange(start, stop, dtype=np.int32),
            np.zeros(stop - start, dtype=np.uint8),
        )


def test_concurrent_writers_that_own_whole_shards_lose_nothing(tmp_path):
    uri = str(tmp_path / "latents.zarr")
    store = LatentStore.create(uri, 64, CLIP_FRAMES, GRID, 4, attrs())
    owners = [list(range(w, store.num_shards, 4)) for w in range(4)]  # shard s belongs to writer s % 4
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_shards, args=(uri, shards)) for shards in owners]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    store.finish()
    codes = zarr.open_group(uri, mode="r")["codes"][:]
    assert all(np.array_equal(codes[i], clip_codes(i)) for i in range(64))
    assert list(zarr.open_group(uri, mode="r")["start_frame"][:]) == list(range(64))


@pytest.mark.parametrize("num_clips", [40, 6])  # 10 shards (whole shards per reader), 2 shards (by clip)
def test_two_ranks_times_two_workers_see_every_clip_once(tmp_path, num_clips):
    splits = [(TRAIN, VAL, TRAIN, TEST, TRAIN)[i % 5] for i in range(num_clips)]
    splits[1] = MISSING
    uri = str(tmp_path / "latents.zarr")
    make_store(uri, num_clips=num_clips, splits=splits)
    seen = []
    for rank in range(2):
        dataset = LatentClips(uri, TRAIN, rank=rank, world_size=2, shuffle_buffer=3, seed=1)
        for batch in DataLoader(dataset, batch_size=2, num_workers=2):
            assert batch.dtype == torch.int64 and batch.shape[1:] == (CLIP_FRAMES, 4, 4)
            seen += list(batch)
    assert clip_ids(seen) == [i for i in range(num_clips) if splits[i] == TRAIN]


def test_batches_stacked_by_the_reader_equal_the_data_loaders(tmp_path):
    """`batch_size` on the reader gives the very batches a DataLoader groups from its clips
    (two workers, a shuffle, crops, a resumed reader's skip and a short last batch)."""
    uri = str(tmp_path / "latents.zarr")
    make_store(uri, num_clips=40)
    options = {"shuffle_buffer": 5, "seed": 3, "crop_frames": 3, "skip_per_worker": [6, 3]}
    grouped = DataLoader(LatentClips(uri, **options), batch_size=3, num_workers=2)
    stacked = DataLoader(LatentClips(uri, batch_size=3, **options), batch_size=None, num_workers=2)
    expected, got = list(grouped), list(stacked)
    assert len(got) == len(expected) and any(len(batch) < 3 for batch in got)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))


def test_the_order_is_one_draw_at_a_time_through_a_shuffle_buffer(tmp_path):
    """The reader's order, spelled out plainly: shards in a seeded permutation, each shard's
    clips into the buffer, then clips out at random (a draw for the take, one for the crop, one
    at a time) until the buffer holds `shuffle_buffer`; the rest at the epoch's end. What
    training saw before the reader drew its numbers in bulk."""
    uri = str(tmp_path / "latents.zarr")
    make_store(uri, num_clips=40)
    rng, buffer, expected = np.random.default_rng([7, 0, 0]), [], []

    def take() -> None:
        index = int(rng.random() * len(buffer))
        buffer[index], buffer[-1] = buffer[-1], buffer[index]
        clip, begin = buffer.pop(), int(rng.random() * (CLIP_FRAMES - 3 + 1))
        expected.append(clip[begin : begin + 3])

    for shard in rng.permutation(10):
        buffer += [clip_codes(i) for i in range(4 * shard, 4 * shard + 4)]
        while len(buffer) > 6:
            take()
    while buffer:
        take()
    got = list(LatentClips(uri, shuffle_buffer=6, seed=7, crop_frames=3))
    assert len(got) == 40 and all(np.array_equal(a, b.numpy()) for a, b in zip(expected, got, strict=True))


def test_shuffling_and_cropping(tmp_path):
    uri = str(tmp_path / "latents.zarr")
    make_store(uri, num_clips=40)
    first = [int(t[1, 1, 1]) for t in LatentClips(uri, shuffle_buffer=16, seed=0)]
    again = [int(t[1, 1, 1]) for t in LatentClips(uri, shuffle_buffer=16, seed=0)]
    other = [int(t[1, 1, 1]) for t in LatentClips(uri, shuffle_buffer=16, seed=1)]
    assert first == again and first != other and sorted(first) == list(range(40))
    assert first != sorted(first)
    crops = list(LatentClips(uri, crop_frames=3, seed=0))
    assert all(c.shape == (3, 4, 4) for c in crops)
    # a crop is a run of consecutive frames (frame index sits at [t, 0, 0])
    assert all(torch.equal(c[:, 0, 0], torch.arange(int(c[0, 0, 0]), int(c[0, 0, 0]) + 3)) for c in crops)
    with pytest.raises(ValueError, match="crop_frames"):
        LatentClips(uri, crop_frames=7)


def test_the_reader_imports_no_video_or_tokenizer_code():
    code = (
        "import sys, pipeline.latents; bad = [m for m in ('decord', 'av', 'tokenizer', 'tokenizer.model') "
        "if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_s3_round_trip_against_a_local_server(s3_server):
    uri = f"{s3_server}/run/latents.zarr"
    make_store(uri, num_clips=12, per_shard=4)
    assert open_latents(uri).done_shards() == {0, 1, 2}
    assert clip_ids(LatentClips(uri)) == list(range(12))
    assert np.array_equal(zarr.open_group(uri, mode="r")["codes"][5], clip_codes(5))


def test_no_reader_is_left_without_clips(tmp_path):
    """Whole shards per reader would give reader 1 only validation clips; it must not starve (and
    spin forever on a repeating stream while the other rank waits for it)."""
    uri = str(tmp_path / "latents.zarr")
    make_store(uri, num_clips=8, per_shard=4, splits=[TRAIN] * 4 + [VAL] * 4)
    seen = []
    for rank in range(2):
        clips = list(LatentClips(uri, TRAIN, rank=rank, world_size=2))
        assert clips, rank
        seen += clips
    assert clip_ids(seen) == [0, 1, 2, 3]
    with pytest.raises(LatentStoreError, match="no clips of split 2"):
        next(iter(LatentClips(uri, TEST)))


def test_a_corrupted_chunk_is_one_line_naming_array_shard_and_clip(tmp_path):
    uri = str(tmp_path / "latents.zarr")
    make_store(uri, num_clips=12, per_shard=4)
    [shard_file] = [
        p for p in (tmp_path / "latents.zarr" / "codes").rglob("*") if p.is_file() and "/c/1/" in str(p)
    ]
    data = bytearray(shard_file.read_bytes())
    data[8:40] = b"\xff" * 32  # inside the first chunk of shard 1 (clip 4)
    shard_file.write_bytes(bytes(data))
    with pytest.raises(LatentStoreError) as caught:
        list(LatentClips(uri, TRAIN, shuffle_buffer=1))
    message = str(caught.value)
    assert "\n" not in message and "array 'codes', shard 1 (clips 4..7)" in message and "clip 4" in message


def test_generations_resume_their_recorded_clips_and_start_over_for_other_settings(tmp_path):
    """A batch's record marks its clips done; a second prepare with the same clips and settings
    keeps them (a resumed generate redoes only the rest), with other settings starts over."""
    from pipeline.generations import GenerationStore

    uri, shape = str(tmp_path / "codes.zarr"), (2, 3, *GRID)
    first = GenerationStore.prepare(uri, shape, [4, 9, 11], ["a", "b", "c"], {"seed": 0})
    first.write_clip(1, np.full(shape, 7, np.uint16))
    first.write_preview(1, {"generated": np.ones((3, 1, 4, 4), np.uint8)})
    first.write_clip(2, np.full(shape, 8, np.uint16))  # written, but its batch was never recorded
    first.record_batch([{"position": 1, "error": ""}, {"position": 0, "error": "ValueError: bad"}])
    again = GenerationStore.prepare(uri, shape, [4, 9, 11], ["a", "b", "c"], {"seed": 0})
    assert again.done_positions() == {0, 1}
    [record] = again.records()
    assert record["writer"]["pid"] == os.getpid() and [c["position"] for c in record["clips"]] == [1, 0]
    assert (again.group["codes"][1] == 7).all() and again.preview(1)["generated"].sum() == 3 * 16
    assert not zarr.open_group(uri, mode="r").attrs["complete"]
    other = GenerationStore.prepare(uri, shape, [4, 9, 11], ["a", "b", "c"], {"seed": 1})
    assert other.done_positions() == set() and not other.group["codes"][:].any()
    other.finish(np.array([1, 0, 1]))
    assert zarr.open_group(uri, mode="r").attrs["complete"] and list(other.group["ok"][:]) == [1, 0, 1]


def test_every_array_opens_in_a_second_zarr_v3_implementation(tmp_path):
    """tensorstore's zarr3 driver (what JAX-side trainers use) reads every array of the latent
    store and of generations' codes.zarr, with the values zarr-python wrote."""
    import tensorstore

    from pipeline.generations import GenerationStore, read_names

    latents = str(tmp_path / "latents.zarr")
    store = make_store(latents, num_clips=10, per_shard=4)
    codes = str(tmp_path / "codes.zarr")
    names = ["000001", "clip-ü-2", "a much longer clip name"]
    generations = GenerationStore.prepare(codes, (2, 3, *GRID), [1, 2, 3], names, {"s": 1})
    for position in range(3):  # as generate's actors write them, a clip each
        generations.write_clip(position, np.full((2, 3, *GRID), position, np.uint16))
    generations.finish(np.array([1, 0, 1]))
    opened = 0
    for folder in (latents, codes):
        for name, array in zarr.open_group(folder, mode="r").arrays():
            spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{folder}/{name}/"}}
            other = tensorstore.open(spec, read=True).result()
            assert np.array_equal(other.read().result(), array[:]), (folder, name)
            opened += 1
    assert opened == 5 + 4  # codes, source, start_frame, split, motion; codes, clip, name, ok
    assert list(store.sources()) == [f"video-{i}" for i in range(10)]
    assert read_names(codes) == names


def test_a_shard_read_from_its_file_equals_zarrs_read(tmp_path):
    """`read_shard` decodes a schema-3 chunk file itself (zarr-python's thread hops cost 20 times
    the read): the same codes as zarr's, the short last shard cut, and an all-zero shard, whose
    file zarr never writes, read as zeros."""
    uri = str(tmp_path / "latents.zarr")
    store = make_store(uri, num_clips=10, per_shard=4)
    store.write_shard(1, np.zeros((4, CLIP_FRAMES, *GRID), np.uint16), ["z"] * 4, np.zeros(4), np.zeros(4))
    assert not (tmp_path / "latents.zarr" / "codes" / "c" / "1" / "0" / "0" / "0").exists()
    store = open_latents(uri)
    assert store._shard_chunk is not None  # the direct read, not zarr's
    codes = zarr.open_group(uri, mode="r")["codes"][:]
    assert np.array_equal(np.concatenate([store.read_shard(s) for s in range(3)]), codes)
    assert store.read_shard(2).shape == (2, CLIP_FRAMES, *GRID) and not store.read_shard(1).any()


def test_a_store_of_one_chunk_per_clip_is_still_read(tmp_path):
    """Schema 2 kept one clip per chunk inside sharded files: the same clips come back."""
    from zarr.codecs import ZstdCodec

    uri = str(tmp_path / "latents.zarr")
    make_store(uri, num_clips=10, per_shard=4)
    group = zarr.open_group(uri, mode="r+")
    codes = group["codes"][:]
    del group["codes"]
    group.create_array(
        "codes",
        shape=codes.shape,
        chunks=(1, *codes.shape[1:]),
        shards=(4, *codes.shape[1:]),
        dtype="uint16",
        compressors=ZstdCodec(level=3),
    )
    group["codes"][:] = codes
    group.attrs["schema_version"] = 2
    store = open_latents(uri)
    assert np.array_equal(store.read_shard(1), codes[4:8])
    assert clip_ids(LatentClips(uri, TRAIN, shuffle_buffer=1)) == list(range(10))


def test_a_store_of_the_previous_schema_is_still_read(tmp_path):
    """Schema 1 kept the keys as zarr-python's variable-length strings: readers still take it."""
    uri = str(tmp_path / "latents.zarr")
    make_store(uri, num_clips=6, per_shard=3)
    group = zarr.open_group(uri, mode="r+")
    del group["source"]
    group.create_array("source", shape=(6,), chunks=(3,), dtype=str)
    group["source"][:] = np.array([f"old-{i}" for i in range(6)], dtype=str)
    group.attrs["schema_version"] = 1
    store = open_latents(uri)
    assert list(store.sources()) == [f"old-{i}" for i in range(6)]
    assert clip_ids(LatentClips(uri, TRAIN, shuffle_buffer=1)) == list(range(6))
    group.attrs["schema_version"] = 9
    with pytest.raises(LatentStoreError, match="schema version 9"):
        open_latents(uri)


def test_motion_scores_order_still_slow_and_fast_clips_and_the_filter_drops_the_still_one(tmp_path):
    """A tripod shot of a still scene (sensor noise only), a disc crossing a fixed view, and a
    pan: scored in that order; a threshold leaves the still clip out of training alone, and
    the store keeps it."""
    rng = np.random.default_rng(0)
    view = scene(64, 64, 10, seed=2, pan=0)
    still = np.repeat(view[:1], 10, axis=0).astype(np.int16) + rng.integers(-2, 3, (10, 64, 64, 3))
    clips = [still.clip(0, 255).astype(np.uint8), view, scene(64, 64, 10, seed=2, pan=5)]
    scores = [motion_score(clip.transpose(0, 3, 1, 2)) for clip in clips]  # [T, C, H, W]
    assert scores[0] < 1.5 < scores[1] < scores[2], scores

    uri = str(tmp_path / "latents.zarr")
    store = LatentStore.create(uri, 3, CLIP_FRAMES, GRID, 3, attrs())
    splits = np.array([TRAIN, TRAIN, VAL], np.uint8)
    codes = np.stack([clip_codes(i) for i in range(3)])
    store.write_shard(
        0, codes, ["still", "crossing", "pan"], np.zeros(3, np.int32), splits, None, np.array(scores)
    )
    store.finish()
    threshold = 1.5
    kept = LatentClips(uri, TRAIN, min_motion=threshold, shuffle_buffer=1)
    assert clip_ids(kept) == [1]
    assert clip_ids(LatentClips(uri, TRAIN, shuffle_buffer=1)) == [0, 1]  # no threshold: both
    assert clip_ids(LatentClips(uri, VAL, min_motion=threshold, shuffle_buffer=1)) == [2]
    assert open_latents(uri).num_clips == 3 and np.allclose(open_latents(uri).motion(), scores)
    assert clips_above(open_latents(uri), threshold) == {
        "clips_train": 2,
        "clips_train_moving": 1,
        "clips_val": 1,
        "clips_val_moving": 1,
        "clips_test": 0,
        "clips_test_moving": 0,
    }
    with pytest.raises(LatentStoreError, match="no clips of split 0 with motion >= 50"):
        list(LatentClips(uri, TRAIN, min_motion=50))
