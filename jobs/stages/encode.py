"""`stvideo encode`: every clip of the raw shards -> codebook indices in latents.zarr.

Ray Data does the heavy lifting: read the webdataset shards, decode clip
windows with decord in CPU tasks, encode them in a pool of tokenizer actors
(the model loaded once per actor). The driver gathers the codes as they
stream in and hands each zarr shard, once all its clips have arrived, to a
writer that owns that whole shard; each written shard is recorded, so a killed
run resumes where it stopped.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common import logs
from common.identity import store_identity
from common.progress import progress_bar
from jobs import models
from jobs.config import PipelineConfig
from jobs.layout import Layout
from jobs.ray_runtime import ray_session
from jobs.stages.base import StageInputError, StageResult
from pipeline import storage
from pipeline.clips import ClipDecoder, VideoPlan, plan_clips
from pipeline.latents import MISSING, SCHEMA_VERSION, LatentStore, LatentStoreError, open_latents
from pipeline.splits import SPLIT_CODES
from tokenizer.tokenizer import CheckpointError, Tokenizer


class TokenizerEncoder:
    """Ray Data actor: loads the tokenizer once, encodes batches of clips."""

    def __init__(self, checkpoint: str, scratch: Path, threads: int = 1, registry: str | None = None):
        import torch

        torch.set_num_threads(threads)
        # an actor may run on any node: the checkpoint comes from its URI, through the scratch cache
        self.tokenizer = Tokenizer.from_pretrained(
            models.checkpoint_folder(checkpoint, scratch, registry),
            map_location="cuda" if torch.cuda.is_available() else "cpu",
        )

    def __call__(self, batch: dict) -> dict:
        import torch

        began = time.time()  # wall clock: the driver compares it with its own (one host, or NTP's)
        frames = torch.from_numpy(np.array(batch["frames"]))  # a writable copy
        clips, length = frames.shape[:2]
        codes = self.tokenizer.encode(frames.flatten(0, 1)).cpu().numpy().astype(np.uint16)
        return {
            "clip": batch["clip"],
            "key": batch["key"],
            "start": batch["start"],
            "motion": batch["motion"],
            "error": batch["error"],
            "codes": codes.reshape(clips, length, *codes.shape[1:]),
            "encoded": np.full((clips, 2), (began, time.time())),
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


class ShardBuffer:
    """The clips of one zarr shard as they arrive, in any order."""

    def __init__(self, start: int, stop: int, clip_frames: int, grid: tuple[int, int]):
        size = stop - start
        self.start, self.remaining = start, size
        self.codes = np.zeros((size, clip_frames, *grid), dtype=np.uint16)
        self.source = [""] * size
        self.start_frame = np.zeros(size, dtype=np.int32)
        self.split = np.full(size, MISSING, dtype=np.uint8)
        self.motion = np.full(size, np.nan, dtype=np.float32)
        self.rejects: dict[str, str] = {}

    def add(
        self, clip: int, codes: np.ndarray, key: str, start: int, split: int, motion: float, error: str
    ) -> bool:
        offset = clip - self.start
        self.codes[offset], self.source[offset], self.start_frame[offset] = codes, key, start
        self.motion[offset] = motion
        self.split[offset] = MISSING if error else split
        if error:
            self.rejects[key] = error
        self.remaining -= 1
        return self.remaining == 0


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
    try:
        plans, num_clips = plan_clips(
            manifest,
            layout.raw,
            clip_frames,
            cfg.encode.clip_stride or clip_frames,
            cfg.encode.fps,
            (cfg.data.val_fraction, cfg.data.test_fraction),
        )
    except ValueError as err:
        raise StageInputError(str(err)) from None
    if num_clips == 0:
        raise StageInputError(f"data.clip_frames: given {clip_frames}; no video in {layout.raw} is that long")

    identity = _identity(cfg, tokenizer, manifest["fingerprint"])
    key_width = max((len(plan.key.encode()) for plan in plans), default=1)
    store = _prepare_store(layout.latents, identity, num_clips, cfg, tokenizer.grid, key_width)
    done = store.done_shards()
    buffers = {
        s: ShardBuffer(*store.shard_range(s), clip_frames, tokenizer.grid)
        for s in range(store.num_shards)
        if s not in done
    }
    # only videos with a clip in an unwritten shard are read again
    pending = [
        p for p in plans if any(store.shard_of(p.first_clip + i) in buffers for i in range(len(p.starts)))
    ]
    span = EncodingSpan()
    written = (
        _encode_into(store, buffers, pending, cfg, (checkpoint, registry), tokenizer, span) if pending else 0
    )
    if buffers:
        raise RuntimeError(f"encode: shards {sorted(buffers)[:5]} never received all their clips")
    store.finish({"rejected": store.rejects()})

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
        inputs={"raw": layout.raw, "tokenizer": checkpoint, "tokenizer_identity": tokenizer.identity},
        outputs={"latents": layout.latents, "latents_identity": store_identity(store.attrs)},
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
    registry = models.registry_uri(cfg, layout.tokenizer)
    try:
        return models.pin(layout.tokenizer, registry), registry
    except models.ModelURIError as err:
        raise StageInputError(f"encode.tokenizer: {err}") from None


def _load_inputs(
    layout: Layout, checkpoint: str, registry: str | None, scratch: Path
) -> tuple[Tokenizer, dict]:
    """The tokenizer to encode with and the raw manifest, or a clear error naming what is missing."""
    if not storage.exists(layout.raw_manifest):
        raise StageInputError(f"root: {layout.raw_manifest} not found; run `stvideo ingest` first")
    try:
        tokenizer = Tokenizer.from_pretrained(models.checkpoint_folder(checkpoint, scratch, registry))
    except models.ModelURIError as err:
        raise StageInputError(f"encode.tokenizer: {err}") from None
    except FileNotFoundError:
        raise StageInputError(
            f"encode.tokenizer: {layout.tokenizer}: no checkpoint there; run `stvideo train-tokenizer` first"
        ) from None
    except CheckpointError as err:
        raise StageInputError(f"encode.tokenizer: {err}; run `stvideo train-tokenizer` first") from None
    return tokenizer, storage.read_json(layout.raw_manifest)


def _encode_into(
    store: LatentStore,
    buffers: dict[int, ShardBuffer],
    pending: list[VideoPlan],
    cfg: PipelineConfig,
    checkpoint: tuple[str, str | None],
    tokenizer: Tokenizer,
    span: EncodingSpan,
) -> int:
    """Decode and encode the pending videos' clips on Ray Data; each shard is handed to a writer
    once all its clips have arrived (and leaves `buffers`). Returns the shards written."""
    split_of_clip = {
        (plan.key, start): split
        for plan in pending
        for start, split in zip(plan.starts, plan.splits, strict=True)
    }
    with ray_session(cfg.ray):
        import ray
        import ray.data

        logs.configure()  # importing ray.data set its loggers' levels: ours again

        ray.data.DataContext.get_current().enable_progress_bars = False  # one bar, ours, counts clips
        gpus = cfg.encode.num_gpus if ray.cluster_resources().get("GPU", 0) > 0 else 0
        decoder = ClipDecoder(
            {plan.key: plan for plan in pending},
            cfg.data.clip_frames,
            tokenizer.config.frame_size,
            tokenizer.config.in_channels,
        )
        dataset = (
            ray.data.read_webdataset(sorted({plan.shard for plan in pending}), decoder=None)
            .flat_map(decoder)  # stateless CPU tasks
            .map_batches(
                TokenizerEncoder,
                fn_constructor_args=(
                    checkpoint[0],
                    storage.scratch_root(cfg.scratch),
                    cfg.encode.threads,
                    checkpoint[1],
                ),
                batch_size=cfg.encode.batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=cfg.encode.num_actors),
                num_gpus=gpus,
                resources=cfg.encode.actor_resources or None,
            )
        )
        total = sum(buffer.remaining for buffer in buffers.values())
        with (
            ThreadPoolExecutor(max_workers=2) as writers,
            progress_bar(total=total, desc="encode", unit="clip") as bar,
        ):
            futures = []
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                span.add(batch["encoded"])
                columns = (batch[name] for name in ("clip", "codes", "key", "start", "motion", "error"))
                for clip, codes, key, start, motion, error in zip(*columns, strict=True):
                    shard = store.shard_of(int(clip))
                    if shard not in buffers:
                        continue  # a video spanning a written and an unwritten shard
                    split = split_of_clip[str(key), int(start)]
                    clip_row = (int(clip), codes, str(key), int(start), split, float(motion), str(error))
                    if buffers[shard].add(*clip_row):
                        # the shard is whole: one writer owns it
                        futures.append(writers.submit(_write, store, shard, buffers.pop(shard)))
                    bar.update(1)
            for future in futures:
                future.result()
    return len(futures)


def _write(store: LatentStore, shard: int, buffer: ShardBuffer) -> None:
    store.write_shard(
        shard, buffer.codes, buffer.source, buffer.start_frame, buffer.split, buffer.rejects, buffer.motion
    )
