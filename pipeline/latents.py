"""The latent store `<root>/latents.zarr`: codebook indices of every clip, and a
reader that streams them to training without touching pixels.

Layout (Zarr v3 group):
- `codes`  uint16 [N, T, h, w]: `clips_per_shard` clips per chunk, one file each, zstd (reading a
  shard is one decode: with one clip per chunk, zarr's cost per chunk was 90% of streaming);
- `source` uint8 [N, key_width]: each clip's video key in UTF-8, zero-padded (a Zarr v3 core
  type, so every Zarr v3 reader opens it: zarr-python's variable-length strings have no
  Zarr v3 spec, and tensorstore refuses them); `LatentStore.sources` gives them as text;
- `start_frame` int32 [N], `split` uint8 [N] (0 train, 1 val, 2 test, 255 missing: the
  clip's video failed to decode), `motion` float32 [N] (`pipeline.clips.motion_score`, NaN
  for a missing clip; absent from stores written before it); these are chunked one shard's
  worth of clips per chunk, so whoever writes a shard owns every byte of it;
- attributes: schema version, tokenizer identity, codebook size, grid, clip
  length, stride, fps, frame size, and `complete` once every shard is written.

Writers own whole shards: a partial shard write is a read-modify-write that
loses concurrent writers' clips. Each finished shard is recorded under
`_progress/`, so a killed writer resumes without duplicates or holes.

This module never imports the tokenizer or any video code.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
import zarr
from torch.utils.data import IterableDataset, get_worker_info
from zarr.codecs import ZstdCodec

from common import logs
from pipeline import storage
from pipeline.splits import SPLIT_CODES, TRAIN

# 2: `source` as UTF-8 bytes in uint8; stores of 1 (`source` as variable-length strings) are
# still read, and encode writes a store of 3 in their place. 3: `codes` one chunk per shard
# (2: one chunk per clip, in sharded files; read as they are)
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
MISSING = 255  # split value of a clip whose video could not be decoded
PROGRESS_DIR = "_progress"
REQUIRED_ATTRS = (
    "schema_version",
    "tokenizer_identity",
    "codebook_size",
    "grid",
    "clip_frames",
    "clip_stride",
    "fps",
    "frame_size",
    "num_clips",
    "clips_per_shard",
)


class LatentStoreError(Exception):
    """A latent store that cannot be used as asked; the message says why."""


def _open_group(uri: str, mode: str) -> zarr.Group:
    return zarr.open_group(uri, mode=mode)


@dataclass
class LatentStore:
    uri: str
    group: zarr.Group

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    # fixed when the store is created: opened or read once (each `group[...]` reads metadata)
    @cached_property
    def codes(self) -> zarr.Array:
        return self.group["codes"]

    @cached_property
    def num_clips(self) -> int:
        return int(self.attrs["num_clips"])

    @cached_property
    def clips_per_shard(self) -> int:
        return int(self.attrs["clips_per_shard"])

    @property
    def num_shards(self) -> int:
        return -(-self.num_clips // self.clips_per_shard)

    def read_shard(self, shard: int) -> np.ndarray:
        """One shard's codes in one read of its file, the chunks decoded as one batch. A shard that
        does not decode names the array, the shard and the first clip that fails."""
        start, stop = self.shard_range(shard)
        try:
            if self._shard_chunk is not None:
                return self._shard_chunk(shard)[: stop - start]
            with zarr.config.set({"codec_pipeline.batch_size": stop - start}):
                return self.codes[start:stop]
        except Exception as err:  # zstd, blosc or shard-index errors, whichever codec noticed
            bad = next((clip for clip in range(start, stop) if not self._readable(clip)), start)
            raise self._undecodable(bad, err, "does not decode, first at") from None

    def read_clip(self, clip: int) -> np.ndarray:
        """One clip's codes [T, h, w]; a chunk that does not decode names the array, shard and clip."""
        try:
            return self.codes[clip]
        except Exception as err:  # zstd, blosc or shard-index errors, whichever codec noticed
            raise self._undecodable(clip, err, "does not decode at") from None

    def _undecodable(self, clip: int, err: Exception, how: str) -> LatentStoreError:
        """The array, shard and clip that did not decode, and what to do."""
        shard = self.shard_of(clip)
        start, stop = self.shard_range(shard)
        return LatentStoreError(
            f"{self.uri}: array 'codes', shard {shard} (clips {start}..{stop - 1}) {how} clip {clip} "
            f"({logs.first_line(err, 160)}); encode again (--force) to rewrite it"
        )

    @cached_property
    def _shard_chunk(self):
        """For a store of schema 3 (one chunk per shard, little-endian bytes then zstd, what
        encode writes), a reader of one shard's chunk: its file's bytes, zstd-decoded. zarr-python
        spends about 1 ms a chunk hopping between its event loop and worker threads, 20 times
        the file read and the decode (bench/scale.py), which is what streaming clips does.
        Other layouts (schema 2's sharded files) return None and are read through zarr-python."""
        from numcodecs import Zstd
        from zarr.codecs import BytesCodec

        meta = self.codes.metadata
        codecs = getattr(meta, "codecs", ())
        one_chunk_per_shard = tuple(self.codes.chunks) == (self.clips_per_shard, *self.codes.shape[1:])
        if not (
            one_chunk_per_shard
            and len(codecs) == 2
            and isinstance(codecs[0], BytesCodec)
            and codecs[0].endian is not None
            and isinstance(codecs[1], ZstdCodec)
        ):
            return None
        dtype = np.dtype(self.codes.dtype).newbyteorder("<" if codecs[0].endian.value == "little" else ">")
        zstd = Zstd(level=codecs[1].level, checksum=codecs[1].checksum)
        fs, root = storage.filesystem(storage.join(self.uri, "codes"))

        def read(shard: int) -> np.ndarray:
            path = f"{root}/{meta.encode_chunk_key((shard, *[0] * (self.codes.ndim - 1)))}"
            try:
                data = np.frombuffer(zstd.decode(fs.cat_file(path)), dtype=dtype)
            except FileNotFoundError:  # zarr writes no chunk that is all fill value
                return np.full(self.codes.chunks, self.codes.fill_value, dtype=np.uint16)
            return data.astype(np.uint16, copy=False).reshape(self.codes.chunks)

        return read

    def _readable(self, clip: int) -> bool:
        try:
            self.codes[clip]
            return True
        except Exception:
            return False

    def sources(self, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """The video keys of clips start..stop as text (every clip by default)."""
        return key_strings(self.group["source"][start:stop])

    def motion(self) -> np.ndarray:
        """Every clip's motion score (`pipeline.clips.motion_score`); a store written before
        motion was scored is refused with what to do."""
        if "motion" not in self.group:
            raise LatentStoreError(
                f"{self.uri}: no motion scores (written before them); encode again (--force)"
            )
        return self.group["motion"][:]

    def shard_of(self, clip: int) -> int:
        return clip // self.clips_per_shard

    def shard_range(self, shard: int) -> tuple[int, int]:
        start = shard * self.clips_per_shard
        return start, min(start + self.clips_per_shard, self.num_clips)

    # --- writing ------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        uri: str,
        num_clips: int,
        clip_frames: int,
        grid: tuple[int, int],
        clips_per_shard: int,
        attrs: dict,
        key_width: int = 64,
    ) -> LatentStore:
        """Pre-size every array (driver only), so writers never resize or race on metadata.
        `key_width`: room for the longest video key, in UTF-8 bytes."""
        group = _open_group(uri, "w")
        height, width = grid
        group.create_array(
            "codes",
            shape=(num_clips, clip_frames, height, width),
            chunks=(clips_per_shard, clip_frames, height, width),
            dtype="uint16",
            compressors=ZstdCodec(level=3),
            fill_value=0,
        )
        group.create_array(
            "source",
            shape=(num_clips, key_width),
            chunks=(clips_per_shard, key_width),
            dtype="uint8",
            fill_value=0,
        )
        group.create_array("start_frame", shape=(num_clips,), chunks=(clips_per_shard,), dtype="int32")
        group.create_array(
            "split", shape=(num_clips,), chunks=(clips_per_shard,), dtype="uint8", fill_value=MISSING
        )
        group.create_array(
            "motion", shape=(num_clips,), chunks=(clips_per_shard,), dtype="float32", fill_value=np.nan
        )
        group.attrs.update(
            {
                **attrs,
                "schema_version": SCHEMA_VERSION,
                "num_clips": num_clips,
                "clips_per_shard": clips_per_shard,
                "clip_frames": clip_frames,
                "grid": list(grid),
                "complete": False,
            }
        )
        return cls(uri, group)

    def write_shard(
        self,
        shard: int,
        codes: np.ndarray,
        source: list[str],
        start_frame: np.ndarray,
        split: np.ndarray,
        rejects: dict[str, str] | None = None,
        motion: np.ndarray | None = None,
        note: dict | None = None,
    ) -> None:
        """Write one whole shard's clips, their motion scores and the videos it rejected
        (key -> reason), then record it as finished (with `note`: what its writer measured)."""
        start, stop = self.shard_range(shard)
        if len(codes) != stop - start:
            raise ValueError(
                f"shard {shard} holds clips {start}..{stop - 1}: got {len(codes)}, not {stop - start}"
            )
        with storage.naming(self.uri):
            self.codes[start:stop] = codes.astype(np.uint16, copy=False)
            self.group["source"][start:stop] = key_bytes(source, self.group["source"].shape[1])
            self.group["start_frame"][start:stop] = start_frame
            self.group["split"][start:stop] = split
            if motion is not None:
                self.group["motion"][start:stop] = motion
        if rejects:
            storage.write_json(storage.join(self._progress_uri(), f"rejects-{shard:06d}.json"), rejects)
        # who wrote it: encode's workers write their own shards, never its driver
        writer = {"host": socket.gethostname(), "pid": os.getpid()}
        record = {"clips": stop - start, "missing": int((split == MISSING).sum()), "writer": writer}
        self._mark_done(shard, {**record, **(note or {})})

    def _progress_uri(self, shard: int | None = None) -> str:
        folder = storage.join(self.uri, PROGRESS_DIR)
        return folder if shard is None else storage.join(folder, f"shard-{shard:06d}.json")

    def _mark_done(self, shard: int, record: dict) -> None:
        storage.write_json(self._progress_uri(shard), record)

    def done_shards(self) -> set[int]:
        names = storage.list_names(self._progress_uri())
        return {int(name[6:12]) for name in names if name.startswith("shard-") and name.endswith(".json")}

    def rejects(self) -> list[dict]:
        """Every video a writer rejected, with its reason, sorted by key."""
        found: dict[str, str] = {}
        for name in storage.list_names(self._progress_uri()):
            if name.startswith("rejects-"):
                found.update(storage.read_json(storage.join(self._progress_uri(), name)))
        return [{"key": key, "reason": reason} for key, reason in sorted(found.items())]

    def finish(self, extra_attrs: dict | None = None) -> None:
        missing = set(range(self.num_shards)) - self.done_shards()
        if missing:
            raise LatentStoreError(f"{self.uri}: shards {sorted(missing)[:5]} are not written yet")
        self.group.attrs.update({**(extra_attrs or {}), "complete": True})


def clips_above(store: LatentStore, min_motion: float | None) -> dict[str, int]:
    """Per split, its clips and those whose motion is at least `min_motion` (all of them when
    None): `{"clips_train": 1030, "clips_train_moving": 812, ...}`."""
    splits = store.group["split"][:]
    moving = np.ones(len(splits), bool) if min_motion is None else store.motion() >= min_motion
    counts = {}
    for name, code in SPLIT_CODES.items():
        counts[f"clips_{name}"] = int((splits == code).sum())
        counts[f"clips_{name}_moving"] = int(((splits == code) & moving).sum())
    return counts


def key_bytes(keys: list[str], width: int) -> np.ndarray:
    """Keys as UTF-8 in uint8 [len(keys), width], zero-padded; a key too long is refused."""
    out = np.zeros((len(keys), width), dtype=np.uint8)
    for row, key in enumerate(keys):
        encoded = key.encode()
        if len(encoded) > width or b"\0" in encoded:
            raise ValueError(f"key {key!r}: {len(encoded)} bytes, room for {width} (and no NUL)")
        out[row, : len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
    return out


def key_strings(stored: np.ndarray) -> np.ndarray:
    """Keys as text from `key_bytes`' uint8 [N, width], or from a schema-1 string array."""
    stored = np.asarray(stored)
    if stored.dtype != np.uint8:  # schema 1: zarr-python's variable-length strings
        return np.array(stored.tolist(), dtype=str)
    return np.array([row.tobytes().rstrip(b"\0").decode() for row in stored], dtype=str)


def open_latents(
    uri: str,
    tokenizer_identity: str | None = None,
    complete: bool = True,
) -> LatentStore:
    """Open and validate a store; refuse one written by another tokenizer than the one named."""
    try:
        group = _open_group(uri, "r+" if not complete else "r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as err:
        raise LatentStoreError(f"{uri}: no latent store here ({err})") from None
    attrs = dict(group.attrs)
    missing = [name for name in REQUIRED_ATTRS if name not in attrs]
    if missing:
        raise LatentStoreError(f"{uri}: not a latent store (attributes missing: {', '.join(missing)})")
    if attrs["schema_version"] not in READABLE_SCHEMAS:
        raise LatentStoreError(
            f"{uri}: schema version {attrs['schema_version']}, this code reads "
            f"{', '.join(map(str, READABLE_SCHEMAS))}; encode again (--force) to rewrite it"
        )
    for name in ("codes", "source", "start_frame", "split"):
        if name not in group:
            raise LatentStoreError(f"{uri}: array {name!r} is missing")
    codes = group["codes"]
    expected = (attrs["num_clips"], attrs["clip_frames"], *attrs["grid"])
    if tuple(codes.shape) != tuple(expected) or codes.dtype != np.uint16:
        raise LatentStoreError(f"{uri}: codes are {codes.dtype} {codes.shape}, expected uint16 {expected}")
    if complete and not attrs.get("complete"):
        raise LatentStoreError(f"{uri}: the store is incomplete; rerun `stvideo encode` to finish it")
    if tokenizer_identity is not None and attrs["tokenizer_identity"] != tokenizer_identity:
        raise LatentStoreError(
            f"{uri}: encoded with tokenizer {attrs['tokenizer_identity']}, not {tokenizer_identity}; "
            "encode again with this tokenizer"
        )
    return LatentStore(uri, group)


class LatentClips(IterableDataset):
    """Clips of one split as integer tensors [T, h, w], streamed a whole shard at a time; with
    `batch_size`, batches of them [B, T, h, w] (for a DataLoader with `batch_size=None`).

    Each (rank, DataLoader worker) pair is one reader. With at least as many
    shards as readers, each reader owns whole shards; with fewer, every reader
    reads every shard and keeps the clips whose index falls to it. Either way
    every clip goes to exactly one reader per epoch. Clips pass through a
    shuffle buffer; the order is a pure function of (seed, epoch, reader).

    A batch is the reader's next `batch_size` clips, stacked where they are read: exactly what
    a DataLoader with that `batch_size` would group (each of its workers fills a batch from its
    own reader, and batches come round-robin from the workers), without its fetch and collate
    per clip, which cost the reader as much as reading the store.
    """

    def __init__(
        self,
        uri: str,
        split: int = TRAIN,
        tokenizer_identity: str | None = None,
        rank: int = 0,
        world_size: int = 1,
        shuffle_buffer: int = 256,
        seed: int = 0,
        crop_frames: int | None = None,
        repeat: bool = False,
        skip_per_worker: list[int] | None = None,
        min_motion: float | None = None,
        batch_size: int | None = None,
    ):
        store = open_latents(uri, tokenizer_identity)  # fail early, in the constructor
        if min_motion is not None:
            store.motion()  # a store without scores fails here, not in a worker
        self.uri = uri
        self.num_shards, self.clip_frames = store.num_shards, int(store.attrs["clip_frames"])
        if crop_frames is not None and not 1 <= crop_frames <= self.clip_frames:
            raise ValueError(f"crop_frames: given {crop_frames}, expected 1..{self.clip_frames}")
        self.split, self.rank, self.world_size = split, rank, world_size
        self.shuffle_buffer, self.seed, self.crop_frames, self.repeat = (
            shuffle_buffer,
            seed,
            crop_frames,
            repeat,
        )
        self.skip_per_worker = skip_per_worker or []  # clips each worker already delivered (resume)
        self.min_motion = min_motion  # clips that move less are left out (NaN: missing, never read)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size: given {batch_size}, expected at least 1 (or None: single clips)")
        self.batch_size = batch_size

    def _reader(self) -> tuple[int, int, int]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        return self.rank * workers + worker, self.world_size * workers, worker

    def wanted(self, store: LatentStore) -> np.ndarray:
        """Which clips this stream reads: its split's, less those below `min_motion`."""
        wanted = store.group["split"][:] == self.split  # one byte a clip: read once, not once a shard
        if self.min_motion is not None:
            wanted &= store.motion() >= self.min_motion
        return wanted

    def _whole_shards_feed_everyone(self, store: LatentStore, wanted: np.ndarray, readers: int) -> bool:
        """Whole shards per reader only if every reader then gets clips of the split: a reader
        with none would spin forever on a repeating stream while the other ranks wait on it."""
        if self.num_shards < readers:
            return False
        counts = [int(wanted[slice(*store.shard_range(s))].sum()) for s in range(self.num_shards)]
        return all(sum(counts[r::readers]) > 0 for r in range(readers))

    def _kept(
        self, store: LatentStore, wanted: np.ndarray, shard: int, reader: int, readers: int, whole: bool
    ):
        """Which clips of a shard this reader takes (a bool per clip), or None for none."""
        start, stop = store.shard_range(shard)
        keep = wanted[start:stop].copy()
        if not whole:
            keep &= (np.arange(start, stop) % readers) == reader
        return keep if keep.any() else None

    def __iter__(self) -> Iterator[torch.Tensor]:
        reader, readers, worker = self._reader()
        skip = self.skip_per_worker[worker] if worker < len(self.skip_per_worker) else 0
        # a resumed run drops what it already consumed; the order and the crops stay the same
        clips = itertools.islice(self._stream(reader, readers), skip, None)
        if self.batch_size is None:
            return (torch.from_numpy(clip.astype(np.int64)) for clip in clips)
        return _stacked(clips, self.batch_size)

    def _stream(self, reader: int, readers: int) -> Iterator[np.ndarray]:
        """This reader's clips (uint16 [T, h, w]) in their shuffled, cropped order."""
        store = open_latents(self.uri)
        wanted = self.wanted(store)
        whole = self._whole_shards_feed_everyone(store, wanted, readers)
        shards = list(range(self.num_shards))[reader::readers] if whole else list(range(self.num_shards))
        if not wanted.any():
            moving = f" with motion >= {self.min_motion}" if self.min_motion is not None else ""
            raise LatentStoreError(f"{self.uri}: no clips of split {self.split}{moving}")
        kept = {shard: self._kept(store, wanted, shard, reader, readers, whole) for shard in shards}
        crop = self.crop_frames if self.crop_frames and self.crop_frames < self.clip_frames else None
        epoch = 0
        while True:
            rng = np.random.default_rng([self.seed, epoch, reader])
            buffer: list[np.ndarray] = []
            for shard in rng.permutation(shards):
                if kept[shard] is not None:
                    buffer.extend(store.read_shard(int(shard))[kept[shard]])
                yield from _take_random(buffer, len(buffer) - self.shuffle_buffer, rng, crop)
            yield from _take_random(buffer, len(buffer), rng, crop)
            if not self.repeat:
                return
            epoch += 1


def _take_random(buffer: list, count: int, rng: np.random.Generator, crop: int | None) -> Iterator:
    """`count` clips out of the shuffle buffer at random, each in O(1) (swapped to the end
    first), and cropped to `crop` frames from a random start. The random numbers are drawn at
    once (a take's, then its crop's, for each clip): the very numbers one draw at a time gives,
    without its microsecond each."""
    if count <= 0:
        return
    per_clip = 2 if crop else 1
    draws = rng.random(count * per_clip).tolist()
    for first in range(0, len(draws), per_clip):
        index = int(draws[first] * len(buffer))
        buffer[index], buffer[-1] = buffer[-1], buffer[index]
        clip = buffer.pop()
        if crop:
            begin = int(draws[first + 1] * (len(clip) - crop + 1))
            clip = clip[begin : begin + crop]
        yield clip


def _stacked(clips: Iterator[np.ndarray], size: int) -> Iterator[torch.Tensor]:
    """Consecutive clips stacked `size` at a time as int64; a finite stream's last batch may be short."""
    while batch := list(itertools.islice(clips, size)):
        yield torch.from_numpy(np.array(batch, dtype=np.int64))
