"""`stvideo ingest`: videos -> raw webdataset shards, one Ray task per shard."""

from __future__ import annotations

import time
from itertools import islice

from common.identity import value_identity
from common.progress import progress_bar
from jobs import tracking
from jobs.config import PipelineConfig
from jobs.layout import Layout
from jobs.ray_runtime import ray_session
from jobs.stages.base import ClipTally, StageInputError, StageResult, check_splits
from pipeline import storage
from pipeline.footage import Preparation
from pipeline.shards import (
    PARTS_DIR,
    ShardSummary,
    ShardTask,
    build_shard,
    plan_shards,
    preview_gif,
    read_part,
    write_manifest,
)
from pipeline.sources import FolderSource, MovingMnistSource
from pipeline.splits import split_mode


def make_source(cfg: PipelineConfig) -> FolderSource | MovingMnistSource:
    data = cfg.data
    if data.source == "folder":
        return FolderSource(path=data.path, extensions=tuple(data.extensions))
    mm = data.moving_mnist
    return MovingMnistSource(
        num_videos=mm.num_videos,
        fps=data.fps,
        seed=data.seed,
        path=data.path,
        num_frames=mm.num_frames,
        canvas_size=mm.canvas_size,
        digits_per_video=mm.digits_per_video,
        digit_size=mm.digit_size,
        step_length=mm.step_length,
        encoding={
            "codec": cfg.ingest.codec,
            "crf": cfg.ingest.crf,
            "keyframe_interval": cfg.ingest.keyframe_interval,
        },
    )


def preparation(cfg: PipelineConfig) -> Preparation | None:
    """How brought videos are re-encoded at ingest; None for generated ones, or with transcode off."""
    if cfg.data.source != "folder" or not cfg.ingest.transcode:
        return None
    return Preparation(
        fps=cfg.data.fps,
        size=cfg.data.frame_size or cfg.tokenizer.model.frame_size,
        fit=cfg.data.fit,
        shot_threshold=cfg.data.shot_threshold,
        seed=cfg.data.seed,
        encoding={
            "codec": cfg.ingest.codec,
            "crf": cfg.ingest.crf,
            "keyframe_interval": cfg.ingest.keyframe_interval,
        },
    )


def fingerprint(cfg: PipelineConfig, inputs: list[list[str]]) -> str:
    """Identity of what raw/ holds: the settings that shape the shards, and each input's key and stamp."""
    settings = {
        "data": cfg.data.model_dump(mode="json"),
        "ingest": cfg.ingest.model_dump(mode="json", exclude={"overwrite"}),
        "inputs": inputs,
    }
    return value_identity(settings)


def _list_items(source):
    try:
        items = source.items()
    except (OSError, ValueError) as err:
        raise StageInputError(f"data.path: given {source.path!r}; cannot be read ({err})") from None
    if not items:
        raise StageInputError(
            f"data.path: given {source.path!r}; expected video files "
            f"({', '.join(getattr(source, 'extensions', ()))}), found none"
        )
    return items


def _remove_temporary_files(raw_uri: str) -> None:
    """A writer killed mid-upload leaves a temporary file behind; nothing reads those."""
    for folder in (raw_uri, storage.join(raw_uri, PARTS_DIR)):
        for name in storage.list_names(folder):
            if ".tmp-" in name:
                storage.remove(storage.join(folder, name))


def run_ingest(cfg: PipelineConfig, layout: Layout) -> StageResult:
    started = time.perf_counter()
    source = make_source(cfg)
    items = _list_items(source)
    raw_uri = layout.raw
    current = fingerprint(cfg, [[item.key, item.stamp] for item in items])
    _remove_temporary_files(raw_uri)
    storage.makedirs(raw_uri)

    data = cfg.data
    mode = split_mode(len(items), data.val_fraction, data.test_fraction, data.split_by)
    splitting = (mode, data.val_fraction, data.test_fraction, data.clip_frames)
    tasks = [
        ShardTask(index, chunk, raw_uri, current, data.clip_frames, preparation(cfg), splitting)
        for index, chunk in enumerate(plan_shards(items, cfg.ingest.videos_per_shard))
    ]
    # the driver keeps a few numbers per shard; the videos stay in the part records
    summaries: dict[int, ShardSummary] = {}
    clips = ClipTally(cfg)  # clips per split, tallied from each shard's videos as it passes
    for task in tasks:  # shards an unfinished run of this very config already built
        done = read_part(raw_uri, task.index)
        if done is not None and done.fingerprint == current:
            summaries[task.index] = ShardSummary.of(done)
            clips.add(done.videos)
    pending = [task for task in tasks if task.index not in summaries]
    skipped = len(summaries)

    built = _build_shards(cfg, source, pending, summaries, clips) if pending else []
    summaries.update((summary.index, summary) for summary in built)

    manifest = write_manifest(
        raw_uri,
        list(summaries.values()),
        current,
        {"kind": cfg.data.source, "path": cfg.data.path, "num_inputs": len(items), "split_by": mode},
    )
    if not manifest["num_samples"]:
        raise StageInputError(
            f"data.path: kept none of the {len(items)} videos; why each was rejected: {layout.raw_rejects}"
        )
    splits = check_splits(cfg, clips.counts, manifest["num_samples"], mode)
    seconds = time.perf_counter() - started
    first_full = next((shard["name"] for shard in manifest["shards"] if shard["samples"]), None)
    preview = preview_gif(raw_uri, first_full) if first_full else None
    if preview:
        storage.write_bytes_atomic(layout.raw_preview, preview)
        tracking.log_bytes(preview, "preview/raw.gif")
    processed = sum(summary.samples + summary.rejected for summary in built)
    metrics = {
        "videos_kept": manifest["num_samples"],
        "videos_rejected": manifest["num_rejected"],
        "shards": len(manifest["shards"]),
        "shards_skipped": skipped,
        "raw_bytes": sum(shard["bytes"] for shard in manifest["shards"]),
        "videos_without_clips": clips.clipless,
        "seconds": seconds,
    }
    if processed:
        metrics["videos_per_s"] = processed / seconds
        metrics["task_peak_rss_mb"] = max(summary.peak_rss_mb for summary in built)
    summary = (
        f"ingest: kept {manifest['num_samples']} of {len(items)} videos, rejected {manifest['num_rejected']} "
        f"(see {layout.raw_rejects}); {len(manifest['shards'])} shards in {raw_uri}; {splits}"
        f"{clips.clipless_note()}"
    )
    if skipped:
        summary += f"; {skipped} shards were already complete and kept"
    if processed:
        summary += f"; {metrics['videos_per_s']:.1f} videos/s"
        summary += f", {metrics['task_peak_rss_mb']:.0f} MB peak per task"
    return StageResult(
        stage="ingest",
        inputs={"videos": cfg.data.path or f"moving-mnist(seed={cfg.data.seed})"},
        outputs={"raw": raw_uri, "manifest": layout.raw_manifest},
        metrics=metrics,
        summary=summary,
    )


def _build_shards(
    cfg: PipelineConfig,
    source,
    pending: list[ShardTask],
    done: dict[int, ShardSummary],
    clips: ClipTally,
) -> list[ShardSummary]:
    """One Ray task per pending shard; returns their summaries as they finish (each report's
    videos are tallied into `clips`, then dropped: its part record keeps them).

    At most a few tasks per CPU are submitted at a time: the driver then holds and waits on a
    bounded set of tasks (each carries its videos' list), not one per shard of the dataset."""
    built: list[ShardSummary] = []
    with ray_session(cfg.ray):
        import ray

        remote_build = ray.remote(num_cpus=1, max_retries=2)(build_shard)
        source_ref = ray.put(source)
        in_flight = max(8, 4 * int(ray.cluster_resources().get("CPU", 1)))
        queued, waiting = iter(pending), []
        rejected = sum(summary.rejected for summary in done.values())
        with progress_bar(total=sum(len(t.items) for t in pending), desc="ingest", unit="video") as bar:
            while True:
                waiting += [
                    remote_build.remote(task, source_ref) for task in islice(queued, in_flight - len(waiting))
                ]
                if not waiting:
                    break
                finished, waiting = ray.wait(waiting, num_returns=1)
                report = ray.get(finished[0])
                clips.add(report.videos)
                built.append(ShardSummary.of(report))
                rejected += len(report.rejects)
                bar.update(report.samples + len(report.rejects))
                bar.set_postfix(rejected=rejected, refresh=False)
    return built
