"""`stvideo generate`: continuations for every clip of a split, scored in the same run.

A Ray Data job. An actor pool (`ClipGenerator`) loads the dynamics model and the tokenizer once per
actor; each actor continues, scores and writes its clips itself (`dynamics.batch_generation`):
their codes into `codes.zarr` (pre-sized by the driver, a chunk per clip), their mp4s, a preview
clip's frames, then the batch's record (`pipeline.generations`). The driver receives a count per
batch; it aggregates the records into `metrics.json`, draws the preview grid and the report
(`dynamics.report`) and logs the scores to MLflow. A killed run resumes with the clips no record
names.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from common import training
from common.identity import file_identity
from common.progress import progress_bar
from dynamics import evaluate, report
from dynamics.batch_generation import BatchGenerator, BatchJob, run_metrics
from dynamics.checkpoint import DynamicsCheckpointError, load_dynamics
from dynamics.generate import GenerationSettings
from jobs import generator_model, lineage, model_registry, tracking
from jobs.config import PipelineConfig
from jobs.layout import Layout
from jobs.ray_runtime import ray_data
from jobs.stages.base import StageInputError, StageResult
from pipeline import prompts, storage
from pipeline.generations import GenerationStore
from pipeline.latents import LatentStoreError, open_latents
from pipeline.shards import RawManifest
from pipeline.truth import digit_identity, mean_frame, raw_videos


@dataclass(frozen=True)
class GeneratorInputs:
    """What every `ClipGenerator` actor is built from."""

    layout: Layout  # the checkpoints' URIs: the root's folders or pinned MLflow versions
    job: BatchJob
    scratch: Path  # where an actor keeps the checkpoints it fetched
    registry: str | None = None  # the MLflow the checkpoints come from, None for folders


class ClipGenerator(BatchGenerator):
    """Ray Data actor: a `BatchGenerator` on one CPU thread, whose checkpoints come from their URIs
    through its scratch cache (an actor may run on any node)."""

    def __init__(self, inputs: GeneratorInputs):
        torch.set_num_threads(1)
        layout, registry = inputs.layout, inputs.registry
        dynamics = model_registry.checkpoint_folder(layout.dynamics, inputs.scratch, registry)
        tokenizer = model_registry.checkpoint_folder(layout.tokenizer, inputs.scratch, registry)
        super().__init__(dynamics, tokenizer, inputs.job)


def run_generate(cfg: PipelineConfig, layout: Layout) -> StageResult:
    gen, scratch = cfg.generate, storage.scratch_root(cfg.scratch)
    layout, registry, dynamics_local, tokenizer_local, store = _checkpoints(cfg, layout, scratch)
    items, preview_clips, train, job = _plan(cfg, layout, store)
    generations = _prepare_codes(cfg, layout, items, store, dynamics_local, preview_clips, job.fps)
    kept = generations.done_positions()  # a resumed run's recorded clips

    started = time.perf_counter()
    pending = [item for item in items if item["position"] not in kept]
    if pending:  # the references' inputs, made only when there is work for them
        size, channels = int(store.attrs["frame_size"]), int(store.attrs["channels"])
        train_mean = mean_frame(job.raw_videos, set(train), size, channels, gen.mean_frame_videos)
        identity = digit_identity(cfg.data) if not gen.videos else None
        job = replace(job, train_mean=train_mean, identity=identity)
        _continue_all(cfg, pending, GeneratorInputs(layout, job, scratch, registry))
    seconds = time.perf_counter() - started

    done, rejected = generations.gather(len(items))
    if not done:
        first = rejected[0]
        raise StageInputError(f"generate: every input was rejected, e.g. {first['clip']}: {first['reason']}")
    trained = training.checkpoints_reached({"tokenizer": tokenizer_local, "dynamics": dynamics_local})
    metrics = run_metrics(job, done, items, rejected, trained=trained, seconds=seconds)
    shown = _shown(items, done, preview_clips)
    headline = _write_outputs(cfg, layout, metrics, generations, shown, job.fps)
    out = layout.generations
    folders = {"tokenizer": tokenizer_local, "dynamics": dynamics_local}
    scored = generator_model.scored(gen, store.attrs, metrics)
    notes = training.cut_short_note(trained)
    notes += tracking.publish_generator(cfg, folders, GenerationSettings.of(gen), scored)
    return StageResult(
        stage="generate",
        inputs={"latents": layout.latents, "dynamics": layout.dynamics, "tokenizer": layout.tokenizer},
        outputs={"generations": layout.generations, "metrics": storage.join(out, "metrics.json")},
        metrics={**headline, "clips": len(done), "seconds": seconds},
        summary=_summary(gen, out, done, rejected, kept, metrics, notes),
    )


def _summary(gen, out: str, done: list, rejected: list[dict], kept: set, metrics: dict, notes: str) -> str:
    """The stage's summary line: the clips made, rejected and kept, `notes` (a time guard that cut
    training short, the registered model), the figures and where to look."""
    line = (
        f"generate: {len(done)} clips, {gen.prompt_frames} prompt -> {gen.generate_frames} frames, in {out}"
    )
    if rejected:
        first = rejected[0]
        line += f"; {len(rejected)} rejected, first {first['clip']}: {first['reason']} (all: metrics.json)"
    if kept:
        line += f"; {len(kept)} clips were already generated and kept"
    line += notes
    if "model" in metrics["mean"]:
        line += f"; {evaluate.describe(metrics, gen.samples)}; preview {storage.join(out, 'preview.gif')}, "
        line += f"metrics {storage.join(out, 'metrics.json')}, report {storage.join(out, 'report.html')}"
    return line


def _plan(cfg: PipelineConfig, layout: Layout, store) -> tuple[list[dict], list[int], list[str], BatchJob]:
    """The clips to continue (`pipeline.prompts`), those the preview shows, the train videos the
    mean-frame reference averages, and the actors' job (its references' inputs still unset)."""
    gen = cfg.generate
    try:
        if gen.videos:
            items = prompts.brought_videos(gen.videos, cfg.data.extensions)
        else:
            items = prompts.store_clips(store, gen.split, gen.prompt_frames, gen.max_clips)
    except prompts.PromptError as err:
        raise StageInputError(str(err)) from None
    train = prompts.first_train_videos(store, gen.mean_frame_videos)
    wanted = {item["key"] for item in items if "key" in item} | set(train)
    try:
        videos = raw_videos(RawManifest.read(layout.raw), wanted, store.attrs["fps"])
    except (OSError, ValueError):
        videos = {}  # the raw shards are gone
    if not gen.videos and not videos:
        raise StageInputError(f"{layout.raw_manifest}: unreadable; store clips are scored on the raw videos")
    preview_clips = prompts.spread_over_videos(items, gen.preview_clips)
    position_of = {item["clip"]: item["position"] for item in items}
    job = BatchJob(
        settings=GenerationSettings.of(gen),
        protocols=[tuple(protocol) for protocol in gen.protocols],
        raw_videos=videos,
        train_mean=None,
        preview_positions={position_of[clip] for clip in preview_clips},
        fps=float(store.attrs["fps"] or cfg.data.fps),
        identity=None,
        latents=layout.latents,
        generations=layout.generations,
    )
    return items, preview_clips, train, job


def _prepare_codes(cfg, layout: Layout, items, store, dynamics_local: Path, preview_clips, fps: float):
    """`codes.zarr`, pre-sized for every clip (the actors write into it), with what made it."""
    gen = cfg.generate
    attrs = {**asdict(GenerationSettings.of(gen)), "fps": fps, "preview_clips": preview_clips}
    attrs["protocols"] = [list(protocol) for protocol in gen.protocols]
    attrs["dynamics_identity"] = file_identity(dynamics_local / "model.safetensors")
    attrs.update(tokenizer_identity=store.attrs["tokenizer_identity"], latents=layout.latents)
    shape = (gen.samples, gen.prompt_frames + gen.generate_frames, *store.attrs["grid"])
    clips, names = [item["clip"] for item in items], [item["name"] for item in items]
    return GenerationStore.prepare(storage.join(layout.generations, "codes.zarr"), shape, clips, names, attrs)


def _shown(items: list[dict], done: list[dict], preview_clips: list[int]) -> list[int]:
    """The positions of the preview clips that were generated (not rejected)."""
    position_of = {item["clip"]: item["position"] for item in items}
    generated = {clip["position"] for clip in done}
    return [position_of[clip] for clip in preview_clips if position_of[clip] in generated]


def _write_outputs(cfg, layout: Layout, metrics: dict, generations, shown: list[int], fps: float) -> dict:
    """metrics.json, the preview and the report, written beside the codes and logged
    (`tracking.log_generation`); returns the run's headline metrics."""
    gen, out = cfg.generate, layout.generations
    metrics_json = json.dumps(metrics, indent=2).encode()
    storage.write_bytes_atomic(storage.join(out, "metrics.json"), metrics_json)
    preview_gif = generations.write_previews(shown, out, gen.prompt_frames, fps)
    made = None
    if "model" in metrics["per_step"]:
        made_by = lineage.made_by(cfg, layout, generations.group.attrs, tracking.current_run_id())
        title = f"{cfg.name}: generations/{gen.name}"
        made = report.report_files(metrics, gen.samples, preview_gif, title, made_by)
        storage.write_bytes_atomic(storage.join(out, "report.html"), made[0].encode())
    steps = report.preview_steps(preview_gif, gen.prompt_frames)
    return tracking.log_generation(metrics_json, preview_gif, made, steps, [tuple(p) for p in gen.protocols])


def _checkpoints(cfg: PipelineConfig, layout: Layout, scratch: Path):
    """The layout with its MLflow aliases pinned to the versions they name now (every actor reads
    the same models), the MLflow they come from (None for folders), the dynamics checkpoint's and
    the tokenizer's local folders, and the latent store the dynamics model learned."""
    one_model = "generate.model" if cfg.generate.model else None  # both checkpoints from one model
    named = {"dynamics": (one_model or "generate.dynamics", layout.dynamics)}
    named["tokenizer"] = (one_model or "encode.tokenizer", layout.tokenizer)
    try:
        pinned, registry = model_registry.pinned(cfg, named)
    except model_registry.ModelURIError as err:
        raise StageInputError(str(err)) from None
    layout = replace(layout, **pinned)
    try:
        dynamics = model_registry.checkpoint_folder(layout.dynamics, scratch, registry)
        _, dynamics_config = load_dynamics(dynamics)
        store = open_latents(layout.latents, tokenizer_identity=dynamics_config["tokenizer_identity"])
    except model_registry.ModelURIError as err:
        raise StageInputError(f"generate.dynamics: {err}") from None
    except (DynamicsCheckpointError, LatentStoreError, FileNotFoundError) as err:
        raise StageInputError(f"{err}; run train-dynamics (and encode) first") from None
    tokenizer = _check_tokenizer(layout, scratch, registry, store.attrs["tokenizer_identity"])
    return layout, registry, dynamics, tokenizer, store


def _check_tokenizer(layout: Layout, scratch, registry: str | None, made_with: str) -> Path:
    """Decoding with another tokenizer than the one that made the latents gives noise: refuse.
    Returns the checkpoint's local folder."""
    try:
        folder = model_registry.checkpoint_folder(layout.tokenizer, scratch, registry)
        given = file_identity(folder / "model.safetensors")
    except model_registry.ModelURIError as err:
        raise StageInputError(f"encode.tokenizer: {err}") from None
    except FileNotFoundError:
        raise StageInputError(f"encode.tokenizer: {layout.tokenizer}: no checkpoint there") from None
    if given != made_with:
        raise StageInputError(
            f"encode.tokenizer: {layout.tokenizer} is tokenizer {given}, but {layout.latents} was made "
            f"with tokenizer {made_with} (and the dynamics model learned its codes): give that one"
        )
    return folder


def _continue_all(cfg: PipelineConfig, pending: list[dict], inputs: GeneratorInputs) -> None:
    """The pending clips through a pool of `ClipGenerator` actors, which write what they make;
    the driver sees one small row per batch."""
    gen = cfg.generate
    with ray_data(cfg.ray, gen.num_gpus) as (data, gpus):
        dataset = data.from_items(pending).map_batches(
            ClipGenerator,
            fn_constructor_args=(inputs,),
            batch_size=gen.batch_size,
            batch_format="numpy",
            compute=data.ActorPoolStrategy(size=gen.num_actors),
            num_gpus=gpus,
            resources=gen.actor_resources or None,
        )
        with progress_bar(total=len(pending), desc="generate", unit="clip") as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(int(batch["clips"].sum()))
