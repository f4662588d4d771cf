"""`stvideo encode`: every clip of the raw shards -> codebook indices in latents.zarr.

The unit of work is one zarr shard of the store (`encode.clips_per_shard` clips). Ray Data does
the heavy lifting: CPU tasks decode a shard's clip windows with decord from the raw webdataset
shards, and a pool of tokenizer actors (the model loaded once per actor) encodes them and writes
the zarr shard itself, owning it whole. The driver counts each raw shard's clips (one pass over
the raw part records, keeping a number per raw shard), pre-sizes the store and counts the shards
as they are recorded: no video's plan, frame or code passes through it; each task plans its own
shard's clips. Each written shard is recorded under `_progress/`, so a killed run resumes where
it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.progress import progress_bar
from jobs import model_registry
from jobs.config import PipelineConfig
from jobs.layout import Layout
from jobs.ray_runtime import ray_data
from jobs.stages.base import StageInputError, StageResult
from pipeline import storage
from pipeline.clips import ClipIndex, ClipWindows, decode_shard_rows, row_strings
from pipeline.latents import MISSING, SCHEMA_VERSION, LatentStore, LatentStoreError, open_latents
from pipeline.shards import RawManifest
from pipeline.splits import SPLIT_CODES
from tokenizer.tokenizer import CheckpointError, Tokenizer


class ShardEncoder:
    """Ray Data actor: loads the tokenizer once; for each shard's decoded clips, encodes them in
    batches and writes the whole zarr shard (and its `_progress/` record) from here."""

    def __init__(
        self,
        checkpoint: str,
        scratch: Path,
        store_uri: str,
        batch_size: int,
        threads: int = 1,
        registry: str | None = None,
    ):
        import torch

        torch.set_num_threads(threads)
        # an actor may run on any node: the checkpoint comes from its URI, through the scratch cache
        self.tokenizer = Tokenizer.from_pretrained(
            model_registry.checkpoint_folder(checkpoint, scratch, registry),
            map_location="cuda" if torch.cuda.is_available() else "cpu",
        )
        self.store, self.batch_size = open_latents(store_uri, complete=False), batch_size

    def __call__(self, batch: dict) -> dict:
        import torch

        began = time.time()  # wall clock: the driver compares it with its own (one host, or NTP's)
        shards = [int(shard) for shard in batch["shard"]]
        for row, shard in enumerate(shards):
            began_shard = time.time()
            frames = torch.from_numpy(np.array(batch["frames"][row]))  # a writable copy
            codes = np.concatenate(
                [
                    self.tokenizer.encode(part.flatten(0, 1)).cpu().numpy().astype(np.uint16)
                    for part in frames.split(self.batch_size)
                ]
            ).reshape(len(frames), frames.shape[1], *self.tokenizer.grid)
            errors = np.array(row_strings(batch, "error", row), dtype=object)
            keys = row_strings(batch, "key", row)
            split = np.where(errors == "", batch["split"][row], MISSING).astype(np.uint8)
            rejects = {key: str(error) for key, error in zip(keys, errors, strict=True) if error}
            start, stop = self.store.shard_range(shard)
            if batch["clip"][row][0] != start or len(codes) != stop - start:
                raise RuntimeError(
                    f"encode: shard {shard} was decoded with other clips than {start}..{stop - 1}"
                )
            seconds = {  # the shard's own work, without Ray's start: what bench/scale.py adds up
                "decode_seconds": float(batch["decode_seconds"][row]),
                "encode_seconds": time.time() - began_shard,
            }
            self.store.write_shard(
                shard, codes, keys, batch["start"][row], split, rejects, batch["motion"][row], seconds
            )
        return {
            "shard": np.array(shards),
            "clips": np.array([len(batch["clip"][row]) for row in range(len(shards))]),
            "encoded": np.array([(began, time.time())] * len(shards)),
        }


@dataclass
class EncodingSpan:
    """When the encoder actors began their first batch and ended their last (wall clock): what
    the stage spent outside it before (Ray's start, the actors' model load) is then known."""

    began: float = float("inf")
    ended: float = float("-inf")

    def add(self, encoded: np.ndarray) -> None:
        self.began, self.ended = (
            min(self.began, float(encoded[:, 0].min())),
            max(self.ended, float(encoded[:, 1].max())),
        )


def _identity(cfg: PipelineConfig, tokenizer: Tokenizer, raw_fingerprint: str) -> dict:
    """What the store's contents depend on; a store with other values is not ours to resume."""
    return {
        "tokenizer_identity": tokenizer.identity,
        "codebook_size": tokenizer.config.codebook_size,
        "frame_size": tokenizer.config.frame_size,
        "channels": tokenizer.config.in_channels,
        "clip_stride": cfg.encode.clip_stride or cfg.data.clip_frames,
        "clip_frames": cfg.data.clip_frames,
        "grid": list(tokenizer.grid),
        "fps": cfg.encode.fps,
        "raw_fingerprint": raw_fingerprint,
        "split_fractions": [cfg.data.val_fraction, cfg.data.test_fraction],
    }


def _prepare_store(
    uri: str, identity: dict, num_clips: int, cfg: PipelineConfig, grid, key_width: int
) -> LatentStore:
    """The store an unfinished run of this config left (to resume), else a new one. The runner
    hands encode a fresh staging location whenever the config or inputs changed, so a store
    found here with other contents is one a crash left half created: it is started over."""
    if storage.exists(storage.join(uri, "zarr.json")):
        try:
            store = open_latents(uri, complete=False)
        except LatentStoreError:
            store = None
        same = store is not None and store.attrs["schema_version"] == SCHEMA_VERSION
        same = same and all(store.attrs.get(k) == v for k, v in identity.items())
        same = same and "motion" in store.group  # a store begun before motion scores: started over
        if same and store.num_clips == num_clips and store.clips_per_shard == cfg.encode.clips_per_shard:
            return store
    return LatentStore.create(
        uri, num_clips, cfg.data.clip_frames, grid, cfg.encode.clips_per_shard, identity, key_width
    )


def run_encode(cfg: PipelineConfig, layout: Layout) -> StageResult:
    started, started_wall = time.perf_counter(), time.time()
    checkpoint, registry = _pinned_tokenizer(cfg, layout)
    tokenizer, manifest = _load_inputs(layout, checkpoint, registry, storage.scratch_root(cfg.scratch))
    clip_frames = cfg.data.clip_frames
    windows = ClipWindows(
        clip_frames,
        cfg.encode.clip_stride or clip_frames,
        cfg.encode.fps,
        (cfg.data.val_fraction, cfg.data.test_fraction),
    )
    try:
        index = ClipIndex.build(manifest, windows)  # a few numbers per raw shard, nothing per video
    except ValueError as err:
        raise StageInputError(str(err)) from None
    num_clips = index.num_clips
    if num_clips == 0:
        raise StageInputError(f"data.clip_frames: given {clip_frames}; no video in {layout.raw} is that long")

    identity = _identity(cfg, tokenizer, manifest.fingerprint)
    store = _prepare_store(layout.latents, identity, num_clips, cfg, tokenizer.grid, index.key_width)
    done = store.done_shards()
    pending = [  # only the videos of unwritten shards are read again
        {"shard": shard, "start": start, "stop": stop}
        for shard in range(store.num_shards)
        if shard not in done
        for start, stop in [store.shard_range(shard)]
    ]
    span = EncodingSpan()
    written = (
        _encode_shards(store, pending, cfg, (checkpoint, registry), index, tokenizer, span) if pending else 0
    )
    store.finish({"rejected": store.rejects()})  # refuses a store with a shard not recorded

    seconds = time.perf_counter() - started
    splits = store.group["split"][:]
    metrics = {
        "clips": num_clips,
        "clips_train": int((splits == 0).sum()),
        "clips_val": int((splits == 1).sum()),
        "clips_test": int((splits == 2).sum()),
        "clips_missing": int((splits == MISSING).sum()),
        "shards_written": written,
        "shards_skipped": len(done),
        "seconds": seconds,
    }
    metrics.update(_motion_medians(store.motion(), splits))
    encoded = sum(stop - start for start, stop in map(store.shard_range, set(range(store.num_shards)) - done))
    if encoded:
        metrics["clips_per_s"] = encoded / seconds
    if encoded and span.ended > span.began:
        metrics["startup_seconds"] = span.began - started_wall  # to the first batch: Ray, actors, model
        metrics["clips_per_s_encoding"] = encoded / (span.ended - span.began)
    grid = tokenizer.grid
    summary = (
        f"encode: {num_clips} clips of {clip_frames} frames -> {layout.latents} "
        f"(grid {grid[0]}x{grid[1]}, {store.num_shards} shards; {metrics['clips_train']} train, "
        f"{metrics['clips_val']} val, {metrics['clips_test']} test, {metrics['clips_missing']} missing)"
    )
    medians = [f"{key.rsplit('_', 1)[1]} {value:.1f}" for key, value in metrics.items() if "motion_" in key]
    summary += f"; median motion {', '.join(medians)} (mean grey change between frames, 0-255)"
    if done:
        summary += f"; {len(done)} shards were already written and kept"
    if encoded:
        summary += f"; {metrics['clips_per_s']:.1f} clips/s"
    if "startup_seconds" in metrics:
        summary += (
            f" ({metrics['clips_per_s_encoding']:.1f} while encoding, "
            f"after {metrics['startup_seconds']:.1f} s starting Ray and the encoder)"
        )
    return StageResult(
        stage="encode",
        inputs={"raw": layout.raw, "tokenizer": checkpoint},
        outputs={"latents": layout.latents},
        metrics=metrics,
        summary=summary,
    )


def _motion_medians(motion: np.ndarray, splits: np.ndarray) -> dict[str, float]:
    """Each split's median motion score: the scale `dynamics.min_motion` is set on."""
    return {
        f"motion_median_{name}": float(np.median(motion[splits == code]))
        for name, code in SPLIT_CODES.items()
        if (splits == code).any()
    }


def _pinned_tokenizer(cfg: PipelineConfig, layout: Layout) -> tuple[str, str | None]:
    """The tokenizer's URI with an alias pinned to the version it names now (every actor reads
    that one), and the MLflow it comes from (None for a folder)."""
    registry = model_registry.registry_uri(cfg, layout.tokenizer)
    try:
        return model_registry.pin(layout.tokenizer, registry), registry
    except model_registry.ModelURIError as err:
        raise StageInputError(f"encode.tokenizer: {err}") from None


def _load_inputs(
    layout: Layout, checkpoint: str, registry: str | None, scratch: Path
) -> tuple[Tokenizer, RawManifest]:
    """The tokenizer to encode with and the raw manifest, or a clear error naming what is missing."""
    try:
        manifest = RawManifest.read(layout.raw)
    except FileNotFoundError:
        raise StageInputError(f"root: {layout.raw_manifest} not found; run `stvideo ingest` first") from None
    try:
        tokenizer = Tokenizer.from_pretrained(model_registry.checkpoint_folder(checkpoint, scratch, registry))
    except model_registry.ModelURIError as err:
        raise StageInputError(f"encode.tokenizer: {err}") from None
    except FileNotFoundError:
        raise StageInputError(
            f"encode.tokenizer: {layout.tokenizer}: no checkpoint there; run `stvideo train-tokenizer` first"
        ) from None
    except CheckpointError as err:
        raise StageInputError(f"encode.tokenizer: {err}; run `stvideo train-tokenizer` first") from None
    return tokenizer, manifest


def _encode_shards(
    store: LatentStore,
    pending: list[dict],
    cfg: PipelineConfig,
    checkpoint: tuple[str, str | None],
    index: ClipIndex,
    tokenizer: Tokenizer,
    span: EncodingSpan,
) -> int:
    """Decode and encode the pending shards on Ray Data; the encoder actors write them. Returns
    the shards written."""
    with ray_data(cfg.ray, cfg.encode.num_gpus) as (data, gpus):
        dataset = (
            data.from_items(pending, override_num_blocks=len(pending))  # a task per shard
            .map_batches(
                decode_shard_rows,  # stateless CPU tasks, apart from the encoder: no torch
                batch_size=1,
                batch_format="numpy",
                fn_kwargs={
                    "index": index,
                    "frame_size": tokenizer.config.frame_size,
                    "channels": tokenizer.config.in_channels,
                },
            )
            .map_batches(
                ShardEncoder,
                fn_constructor_args=(
                    checkpoint[0],
                    storage.scratch_root(cfg.scratch),
                    store.uri,
                    cfg.encode.batch_size,
                    cfg.encode.threads,
                    checkpoint[1],
                ),
                batch_size=1,
                batch_format="numpy",
                compute=data.ActorPoolStrategy(size=cfg.encode.num_actors),
                num_gpus=gpus,
                resources=cfg.encode.actor_resources or None,
            )
        )
        total = sum(row["stop"] - row["start"] for row in pending)
        written = 0
        with progress_bar(total=total, desc="encode", unit="clip") as bar:
            # the driver sees one small row per written shard: its index, clip counts and times
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                span.add(batch["encoded"])
                written += len(batch["shard"])
                bar.update(int(batch["clips"].sum()))
    return written
