"""`stvideo generate`: continuations for every clip of a split, scored in the same run.

A Ray Data job. An actor pool loads the dynamics model and the tokenizer once per actor; each
actor continues its clips (`dynamics.generate`), scores them against their true frames
(`pipeline.truth`) beside the references (`dynamics.evaluate`) and writes what it made itself:
each clip's codes into `codes.zarr` (pre-sized by the driver, a chunk per clip) and its mp4, a
preview clip's frames, then the batch's record (`pipeline.generations`). The driver receives a
count per batch; it aggregates the records into `metrics.json`, draws the preview grid
(`preview.gif` / `preview.mp4`) and logs the scores to MLflow. A killed run resumes with the
clips no record names.
"""

from __future__ import annotations

import io
import itertools
import json
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from common import logs
from common.digit_identity import DigitIdentity, DigitTrack
from common.identity import file_identity, store_identity
from common.progress import progress_bar
from dynamics import evaluate, report
from dynamics.checkpoint import DynamicsCheckpointError, load_dynamics
from dynamics.generate import GenerationSettings, continue_clip
from jobs import model_registry, tracking
from jobs.config import PipelineConfig
from jobs.layout import Layout, started_with
from jobs.ray_runtime import ray_session
from jobs.stages.base import StageInputError, StageResult
from pipeline import storage
from pipeline.generations import GenerationStore, write_preview
from pipeline.latents import LatentStoreError, key_strings, open_latents
from pipeline.moving_mnist import load_glyphs
from pipeline.preview import to_rgb
from pipeline.shards import RawManifest
from pipeline.sources import FolderSource
from pipeline.splits import SPLIT_CODES, TRAIN
from pipeline.truth import RawVideo, StoreTruth, mean_frame, raw_videos, video_start
from pipeline.video import encode_mp4

PREVIEW = ("generated", "median", "truth")  # a preview clip's sample 0, the samples' median, the truth


def protocol_name(prompt_frames: int, steps: int) -> str:
    return f"{prompt_frames}->{steps}"


@dataclass(frozen=True)
class GeneratorInputs:
    """What every `ClipGenerator` actor is built from."""

    layout: Layout
    settings: GenerationSettings
    protocols: list[tuple[int, int]]
    raw_videos: dict[str, RawVideo]
    train_mean: np.ndarray | None  # the train split's mean frame, a reference
    preview_positions: set[int]  # the clips whose frames the preview grid shows
    fps: float
    scratch: Path
    identity: DigitIdentity | None  # the digit classifier for generated Moving MNIST, else None
    registry: str | None = None  # the MLflow the checkpoints come from, None for folders


class ClipGenerator:
    """Ray Data actor: continues, scores and writes a batch of clips. A row is a clip of the
    latent store (its `clip` index, source video `key` and `start`) or a brought video (`path`),
    at `position` in `codes.zarr`. Returns the batch's clip count: nothing it made."""

    def __init__(self, inputs: GeneratorInputs):
        from tokenizer.tokenizer import Tokenizer

        torch.set_num_threads(1)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        layout, registry = inputs.layout, inputs.registry
        # an actor may run on any node: the checkpoints come from their URIs (the root's folders or
        # pinned MLflow versions), through its scratch cache
        dynamics = model_registry.checkpoint_folder(layout.dynamics, inputs.scratch, registry)
        self.model, _ = load_dynamics(dynamics, map_location=device)
        tokenizer = model_registry.checkpoint_folder(layout.tokenizer, inputs.scratch, registry)
        self.tokenizer = Tokenizer.from_pretrained(tokenizer, map_location=device)
        self.inputs, self.settings = inputs, inputs.settings
        self.size, self.channels = self.tokenizer.config.frame_size, self.tokenizer.config.in_channels
        self.truth = StoreTruth(inputs.raw_videos, self.size, self.channels)
        mean = inputs.train_mean
        self.train_mean = None if mean is None else torch.tensor(mean)  # Ray's array is read-only
        self.latents = None  # opened on the first clip of the store
        self.out = GenerationStore.open(storage.join(layout.generations, "codes.zarr"))
        self.videos = storage.join(layout.generations, "videos")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        began, clips = time.time(), []
        for index, position in enumerate(batch["position"].tolist()):
            clip = {
                "position": position,
                "clip": int(batch["clip"][index]),
                "name": str(batch["name"][index]),
            }
            try:
                codes, truth, tracks = self._clip(batch, index)
                run, scored = self._continue(clip, codes, truth, tracks)
            except Exception as err:  # one bad input is reported, the rest of the batch goes on
                clip["error"] = f"{type(err).__name__}: {logs.first_line(err)}"
            else:
                # outside the try: a write that fails (a full disk) is not the clip's fault, so it
                # fails the task and the stage, whose rerun generates the clip again
                self._write(clip["position"], clip["name"], run, truth)
                clip.update(scored, error="")
            clips.append(clip)
        self.out.record_batch(clips, {"seconds": time.time() - began})
        rejected = sum(bool(clip["error"]) for clip in clips)
        return {"clips": np.array([len(clips)]), "rejected": np.array([rejected])}

    def _clip(self, batch: dict[str, np.ndarray], index: int) -> tuple[torch.Tensor, torch.Tensor, list]:
        """A row's codes [T, h, w], its true frames uint8 [T, C, H, W] and its digits' tracks."""
        if "path" in batch:  # a brought video: its own frames are the truth, encoded here
            s = self.settings
            frames = s.prompt_frames + s.generate_frames
            truth = video_start(str(batch["path"][index]), s.prompt_frames, frames, self.size, self.channels)
            return self.tokenizer.encode(torch.from_numpy(truth)).cpu(), torch.from_numpy(truth), []
        if self.latents is None:
            self.latents = open_latents(self.inputs.layout.latents)
        codes = torch.from_numpy(self.latents.read_clip(int(batch["clip"][index])).astype(np.int64))
        key, start = str(batch["key"][index]), int(batch["start"][index])
        truth = self.truth.clip(key, start, len(codes))
        return codes, torch.from_numpy(truth), self.truth.digit_tracks(key, start, len(codes))

    def _identify(self, tracks: list) -> evaluate.Identify | None:
        if self.inputs.identity is None or not tracks:
            return None

        def identify(frames: torch.Tensor, first: int) -> torch.Tensor:
            span = [DigitTrack(t.label, t.corners[first : first + len(frames)]) for t in tracks]
            return self.inputs.identity.score(frames, span)

        return identify

    def _continue(self, clip: dict, codes: torch.Tensor, truth: torch.Tensor, tracks: list) -> tuple:
        """S continuations of one clip, and their scores (per reference, metric and step) and
        those of each further protocol."""
        s, identify = self.settings, self._identify(tracks)
        run = continue_clip(self.model, self.tokenizer, codes, clip["clip"], s, truth=truth)
        scored = {"scores": _scores(run, truth, self.train_mean, identify), "prompt_identity": None}
        if identify is not None:
            prompt = evaluate.prompt_identity(run, truth, identify)
            scored["prompt_identity"] = [prompt["reconstructed"], prompt["original"]]
        scored["protocols"] = {}
        for prompt_frames, steps in self.inputs.protocols:
            if prompt_frames < len(codes):  # a clip no longer than the prompt has no scores
                other = continue_clip(
                    self.model, self.tokenizer, codes, clip["clip"], s, prompt_frames, steps, truth
                )
                scores = _scores(other, truth, self.train_mean, identify)
                scored["protocols"][protocol_name(prompt_frames, steps)] = scores
        return run, scored

    def _write(self, position: int, name: str, run, truth: torch.Tensor) -> None:
        """A clip's codes, its mp4 (sample 0) and, for a preview clip, its frames."""
        self.out.write_clip(position, run.codes.numpy())
        video = encode_mp4(to_rgb(run.frames[0].numpy()), fps=self.inputs.fps, codec="libx264", crf=12)
        storage.write_bytes_atomic(storage.join(self.videos, f"{name}.mp4"), video)
        if position in self.inputs.preview_positions:
            shown = (run.frames[0], run.median, truth)
            self.out.write_preview(
                position, {kind: frames.numpy() for kind, frames in zip(PREVIEW, shown, strict=True)}
            )


def _scores(run, truth: torch.Tensor, train_mean, identify) -> dict[str, dict[str, list[float]]]:
    """A continuation's scores (reference -> metric -> per step) as every clip's are kept: the
    fixed set of references and metrics a score table holds."""
    scores = evaluate.score_continuation(run, truth, train_mean, identify)
    return evaluate.table_scores(evaluate.score_table(scores, run.steps))


def run_generate(cfg: PipelineConfig, layout: Layout) -> StageResult:
    gen, scratch = cfg.generate, storage.scratch_root(cfg.scratch)
    layout, registry = _pinned_checkpoints(cfg, layout)
    dynamics_local, store = _dynamics_and_latents(layout, scratch, registry)
    tokenizer_local = _check_tokenizer(layout, scratch, registry, store.attrs["tokenizer_identity"])
    items = _brought_videos(gen.videos, cfg.data.extensions) if gen.videos else _store_clips(gen, store)
    train = _first_train_videos(store, gen.mean_frame_videos)  # what the mean-frame reference averages
    wanted = {item["key"] for item in items if "key" in item} | set(train)
    raw_videos = _raw_videos(layout, wanted, store.attrs["fps"])
    if not gen.videos and not raw_videos:
        raise StageInputError(f"{layout.raw_manifest}: unreadable; store clips are scored on the raw videos")
    out, settings = layout.generations, GenerationSettings.of(gen)
    protocols = [tuple(protocol) for protocol in gen.protocols]
    preview_clips = spread_over_videos(items, gen.preview_clips)
    fps = float(store.attrs["fps"] or cfg.data.fps)
    generations = _prepare_codes(cfg, layout, items, store, dynamics_local, preview_clips, fps)
    kept = generations.done_positions()  # a resumed run's recorded clips

    started = time.perf_counter()
    pending = [item for item in items if item["position"] not in kept]
    position_of = {item["clip"]: item["position"] for item in items}
    if pending:
        size, channels = int(store.attrs["frame_size"]), int(store.attrs["channels"])
        inputs = GeneratorInputs(
            layout=layout,
            settings=settings,
            protocols=protocols,
            raw_videos=raw_videos,
            train_mean=mean_frame(raw_videos, set(train), size, channels, gen.mean_frame_videos),
            preview_positions={position_of[clip] for clip in preview_clips},
            fps=fps,
            scratch=scratch,
            identity=_digit_identity(cfg.data) if not gen.videos else None,
            registry=registry,
        )
        _continue_all(cfg, pending, inputs)
    seconds = time.perf_counter() - started

    done, rejected = _gather(generations, len(items))
    trained = _trained({"tokenizer": tokenizer_local, "dynamics": dynamics_local})
    metrics = {
        **_aggregate(done, protocols),
        "trained": trained,
        "by_video": _by_video(done, items, protocols),
        "rejected": rejected,
        "clips": len(done),
        "prompt_frames": gen.prompt_frames,
        "generate_frames": gen.generate_frames,
        "samples": gen.samples,
        "seconds": seconds,
    }
    generated = {clip["position"] for clip in done}
    shown = [position_of[clip] for clip in preview_clips if position_of[clip] in generated]
    made_by = _made_by(cfg, layout, generations.group.attrs)
    headline = _write_and_log(cfg, out, metrics, generations, shown, fps, made_by)
    summary = (
        f"generate: {len(done)} clips, {gen.prompt_frames} prompt -> {gen.generate_frames} frames, in {out}"
    )
    if rejected:
        first = rejected[0]
        summary += f"; {len(rejected)} rejected, first {first['clip']}: {first['reason']} (all: metrics.json)"
    if kept:
        summary += f"; {len(kept)} clips were already generated and kept"
    summary += _cut_short_note(trained)
    summary += _publish_generator(cfg, tokenizer_local, dynamics_local, store, metrics)
    if "model" in metrics["mean"]:
        summary += f"; {evaluate.describe(metrics, gen.samples)}"
        summary += (
            f"; preview {storage.join(out, 'preview.gif')}, metrics {storage.join(out, 'metrics.json')}, "
            f"report {storage.join(out, 'report.html')}"
        )
    return StageResult(
        stage="generate",
        inputs={"latents": layout.latents, "dynamics": layout.dynamics, "tokenizer": layout.tokenizer},
        outputs={"generations": layout.generations, "metrics": storage.join(out, "metrics.json")},
        metrics={**headline, "clips": len(done), "seconds": seconds},
        summary=summary,
    )


def _dynamics_and_latents(layout: Layout, scratch: Path, registry: str | None):
    """The dynamics checkpoint's local folder and the latent store it was trained on."""
    try:
        dynamics_local = model_registry.checkpoint_folder(layout.dynamics, scratch, registry)
        _, dynamics_config = load_dynamics(dynamics_local)
        store = open_latents(layout.latents, tokenizer_identity=dynamics_config["tokenizer_identity"])
    except model_registry.ModelURIError as err:
        raise StageInputError(f"generate.dynamics: {err}") from None
    except (DynamicsCheckpointError, LatentStoreError, FileNotFoundError) as err:
        raise StageInputError(f"{err}; run train-dynamics (and encode) first") from None
    return dynamics_local, store


def _prepare_codes(cfg, layout: Layout, items, store, dynamics_local: Path, preview_clips, fps: float):
    """`codes.zarr`, pre-sized for every clip (the actors write into it), with what made it."""
    gen = cfg.generate
    return GenerationStore.prepare(
        storage.join(layout.generations, "codes.zarr"),
        (gen.samples, gen.prompt_frames + gen.generate_frames, *store.attrs["grid"]),
        [item["clip"] for item in items],
        [item["name"] for item in items],
        {
            **asdict(GenerationSettings.of(gen)),
            "fps": fps,
            "preview_clips": preview_clips,
            "protocols": [list(protocol) for protocol in gen.protocols],
            "dynamics_identity": file_identity(dynamics_local / "model.safetensors"),
            "tokenizer_identity": store.attrs["tokenizer_identity"],
            "latents": layout.latents,
        },
    )


def _made_by(cfg: PipelineConfig, layout: Layout, attrs) -> dict[str, str]:
    """What the report names as having made it: the run, the models (a registered version as
    its pinned `models:/name/N`) with their weights' identity, the clips and the config."""
    run = tracking.current_run_id()
    fingerprint = started_with(layout.generations) or "unrecorded"
    clips = (
        f"videos {cfg.generate.videos}"
        if cfg.generate.videos
        else f"{cfg.generate.split} split of {layout.latents}"
    )
    return {
        "MLflow run": run or "none (tracking off, or its server did not answer)",
        "dynamics": f"{layout.dynamics} (weights {attrs['dynamics_identity'][:12]})",
        "tokenizer": f"{layout.tokenizer} (weights {attrs['tokenizer_identity'][:12]})",
        "clips": clips,
        "config": f"{cfg.name}; generate's fingerprint {fingerprint[:12]} (its settings and inputs)",
    }


def _write_and_log(
    cfg, out: str, metrics: dict, generations, shown: list[int], fps: float, made_by: dict[str, str]
) -> dict:
    """metrics.json, the preview and the report written and logged; the run's headline metrics."""
    gen = cfg.generate
    metrics_json = json.dumps(metrics, indent=2).encode()
    storage.write_bytes_atomic(storage.join(out, "metrics.json"), metrics_json)
    preview_gif = _write_preview(generations, shown, out, gen, fps)
    tracking.log_bytes(preview_gif, "preview/preview.gif")
    _log_preview_steps(preview_gif, gen.prompt_frames)
    tracking.log_bytes(metrics_json, "metrics.json")
    if "model" in metrics["per_step"]:
        _report(cfg, out, metrics, preview_gif, made_by)
    headline = tracking.log_scores_by_step(metrics)
    for prompt_frames, steps in gen.protocols:
        if protocol_name(prompt_frames, steps) in metrics.get("protocols", {}):
            scored = metrics["protocols"][protocol_name(prompt_frames, steps)]
            headline.update(tracking.log_scores_by_step(scored, f"p{prompt_frames}_k{steps}_"))
    return headline


def _publish_generator(cfg: PipelineConfig, tokenizer: Path, dynamics: Path, store, metrics: dict) -> str:
    """The pair as one MLflow model, registered with these scores (`jobs.generator_model`)."""
    gen, attrs = cfg.generate, store.attrs
    size = int(attrs["frame_size"])
    on = f"videos {gen.videos}" if gen.videos else f"latents {store_identity(attrs)[:12]}, {gen.split} split"
    scored = {
        "frame_shape": (int(attrs["channels"]), size, size),
        "grid": tuple(attrs["grid"]),
        "metrics": metrics,
        "scored_on": f"{on}, {metrics['clips']} clips, {gen.prompt_frames} -> {gen.generate_frames} frames",
    }
    folders = {"tokenizer": tokenizer, "dynamics": dynamics}
    return tracking.publish_generator(cfg, folders, GenerationSettings.of(gen), scored)


def _gather(generations: GenerationStore, planned: int) -> tuple[list[dict], list[dict]]:
    """Every clip the actors recorded, in position order, as (generated, rejected); the store is
    then marked complete. Raises when a planned clip is missing or every input was rejected."""
    clips = sorted((clip for record in generations.records() for clip in record["clips"]), key=_position)
    if [clip["position"] for clip in clips] != list(range(planned)):
        raise RuntimeError(
            f"generate: {generations.uri} records {len(clips)} clips, not the {planned} planned"
        )
    rejected = [{"clip": clip["name"], "reason": clip["error"]} for clip in clips if clip["error"]]
    done = [clip for clip in clips if not clip["error"]]
    if not done:
        raise StageInputError(
            f"generate: every input was rejected, e.g. {rejected[0]['clip']}: {rejected[0]['reason']}"
        )
    generations.finish(np.array([not clip["error"] for clip in clips]))
    return done, rejected


def _write_preview(generations: GenerationStore, positions: list[int], out: str, gen, fps: float) -> bytes:
    """The preview GIF of the clips at `positions`, from the frames their actors recorded."""
    shown = [generations.preview(position) for position in positions]
    frames = {kind: [clip[kind] for clip in shown] for kind in PREVIEW}
    median = frames["median"] if gen.samples > 1 else None
    return write_preview(out, frames["generated"], frames["truth"], median, gen.prompt_frames, fps)


def _position(clip: dict) -> int:
    return clip["position"]


def _log_preview_steps(preview_gif: bytes, prompt_frames: int) -> None:
    """The preview's generated frames on the run's image charts, each at its horizon step: a
    slider over the continuation beside the per-step scores."""
    from PIL import Image, ImageSequence

    with Image.open(io.BytesIO(preview_gif)) as gif, tempfile.TemporaryDirectory() as folder:
        for index, frame in enumerate(ImageSequence.Iterator(gif)):
            if index >= prompt_frames:
                path = Path(folder) / f"preview-{index:03d}.png"
                frame.convert("RGB").save(path)
                tracking.log_image(str(path), "preview", index - prompt_frames + 1)


def _report(
    cfg: PipelineConfig, out: str, metrics: dict, preview_gif: bytes, made_by: dict[str, str]
) -> None:
    """`report.html` beside the metrics, and the per-step comparison figures on the run's image
    charts, so the run page shows the model beside every reference at a glance."""
    samples = cfg.generate.samples
    pngs = report.figure_pngs(metrics, samples)
    with tempfile.TemporaryDirectory() as folder:
        for protocol, files in pngs.items():
            # a further protocol's files in MLflow: p15_k5_mse_by_step.png
            prefix = f"p{protocol.replace('->', '_k')}_" if protocol else ""
            for file, data in files.items():
                path = Path(folder) / f"{prefix}{file}"
                path.write_bytes(data)
                tracking.log_artifact(str(path), "comparison")
                tracking.log_image(str(path), f"comparison_{path.stem}", 0)
    title = f"{cfg.name}: generations/{cfg.generate.name}"
    page = report.report_html(metrics, samples, preview_gif, title, pngs, made_by)
    storage.write_bytes_atomic(storage.join(out, "report.html"), page.encode())
    tracking.log_bytes(page.encode(), "report.html")


def _pinned_checkpoints(cfg: PipelineConfig, layout: Layout) -> tuple[Layout, str | None]:
    """The layout with MLflow aliases pinned to the versions they name now, so every actor reads
    the same models, and the MLflow they come from (None when both are folders)."""
    registry = model_registry.registry_uri(cfg, layout.dynamics, layout.tokenizer)
    pinned = {}
    for field, key in (("dynamics", "generate.dynamics"), ("tokenizer", "encode.tokenizer")):
        try:
            pinned[field] = model_registry.pin(getattr(layout, field), registry)
        except model_registry.ModelURIError as err:
            raise StageInputError(f"{'generate.model' if cfg.generate.model else key}: {err}") from None
    return replace(layout, **pinned), registry


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
    with ray_session(cfg.ray):
        import ray
        import ray.data

        logs.configure()  # importing ray.data set its loggers' levels: ours again

        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_items(pending).map_batches(
            ClipGenerator,
            fn_constructor_args=(inputs,),
            batch_size=gen.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=gen.num_actors),
            num_gpus=gen.num_gpus if ray.cluster_resources().get("GPU", 0) > 0 else 0,
            resources=gen.actor_resources or None,
        )
        with progress_bar(total=len(pending), desc="generate", unit="clip") as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(int(batch["clips"].sum()))


def _digit_identity(data) -> DigitIdentity | None:
    """The digit classifier for generated Moving MNIST, fitted on its glyph source; else None."""
    if data.source != "moving-mnist" or (data.path or "").endswith(".npy"):
        return None
    glyphs, labels = load_glyphs(data.path, data.moving_mnist.digit_size)
    return DigitIdentity(glyphs, labels) if len(set(labels.tolist()) - {-1}) > 1 else None


def _aggregate(done: list[dict], protocols: list[tuple[int, int]]) -> dict:
    """The clips' scores aggregated: the run's protocol, then each further one; and the digit
    identity of the prompts as reconstructed and as they are, where it was scored."""
    metrics = evaluate.aggregate([clip["scores"] for clip in done])
    prompts = [clip["prompt_identity"] for clip in done]
    if prompts and None not in prompts:
        reconstructed, original = np.array(prompts).mean(0).tolist()
        metrics["prompt_identity"] = {"reconstructed": reconstructed, "original": original}
    if protocols:
        metrics["protocols"] = {}
    for prompt_frames, steps in protocols:
        name = protocol_name(prompt_frames, steps)
        per_clip = [clip["protocols"][name] for clip in done if clip["protocols"].get(name)]
        if per_clip:  # clips no longer than the prompt have no scores
            metrics["protocols"][name] = evaluate.aggregate(per_clip)
    return metrics


def _trained(folders: dict[str, Path]) -> dict[str, dict]:
    """How far each model trained (its steps, the step budget, whether the time guard stopped
    it), from its checkpoint's metrics.json; a checkpoint without one is left out."""
    keys = ("steps", "max_steps", "stopped_by_time")
    reached = {}
    for name, folder in folders.items():
        try:
            summary = json.loads((Path(folder) / "metrics.json").read_text())
        except (OSError, ValueError):
            continue
        reached[name] = {key: summary[key] for key in keys if key in summary}
    return reached


def _cut_short_note(trained: dict[str, dict]) -> str:
    """A warning for the summary when a model's time guard ended its training early; else ''."""
    cut_short = [name for name, reached in trained.items() if reached.get("stopped_by_time")]
    if not cut_short:
        return ""
    return (
        f"; NOTE: the {' and the '.join(cut_short)} training stopped at its time guard before its "
        "step budget, so these figures are from a shorter run than the config's"
    )


def _by_video(done: list[dict], items: list[dict], protocols: list[tuple[int, int]]) -> dict:
    """Each source video's clips aggregated alone, so one scene's figures are not hidden in the
    mean; empty when no video has two clips (then the rows are the clips themselves)."""
    video_of = {item["clip"]: item.get("key", item["name"]) for item in items}
    grouped: dict[str, list[dict]] = {}
    for result in done:
        grouped.setdefault(video_of[result["clip"]], []).append(result)
    if len(grouped) == len(done):
        return {}
    return {
        key: {"clips": len(results), **_aggregate(results, protocols)} for key, results in grouped.items()
    }


def _raw_videos(layout: Layout, keys: set[str], fps: float | None) -> dict[str, RawVideo]:
    """Where the named videos' true frames are; none when the raw shards are gone."""
    try:
        return raw_videos(RawManifest.read(layout.raw), keys, fps)
    except (OSError, ValueError):
        return {}


def _first_train_videos(store, count: int, block: int = 65_536) -> list[str]:
    """The first `count` videos with a train clip, in store order (the raw manifest's), read a
    block of clips at a time."""
    splits, keys = store.group["split"], {}
    for start in range(0, store.num_clips, block):
        sources = store.sources(start, start + block)
        for key in sources[splits[start : start + block] == TRAIN]:
            keys.setdefault(str(key))
            if len(keys) == count:
                return list(keys)
    return list(keys)


def spread_over_videos(items: list[dict], count: int) -> list[int]:
    """`count` clips for the preview, as many videos as there are shown: each video's first clip
    in turn, then each one's second, and so on (a split by time holds runs of one video's clips)."""
    by_video: dict[str, list[int]] = {}
    for item in items:
        by_video.setdefault(item.get("key", item["name"]), []).append(item["clip"])
    rounds = itertools.zip_longest(*by_video.values())
    return [clip for row in rounds for clip in row if clip is not None][:count]


def _store_clips(gen, store) -> list[dict]:
    """The clips of one split of the latent store (at most `max_clips`); the actors read their codes."""
    clip_frames = int(store.attrs["clip_frames"])
    if gen.prompt_frames >= clip_frames:
        raise StageInputError(
            f"generate.prompt_frames: given {gen.prompt_frames}, "
            f"expected fewer than the clips' {clip_frames} frames"
        )
    split_code = SPLIT_CODES[gen.split]
    chosen = np.flatnonzero(store.group["split"][:] == split_code)[: gen.max_clips or None]
    if len(chosen) == 0:
        raise StageInputError(f"generate.split: given {gen.split!r}; the store has no clips of that split")
    sources = key_strings(store.group["source"].oindex[chosen])
    starts = store.group["start_frame"].oindex[chosen]
    return [
        {
            "position": n,
            "clip": int(i),
            "name": f"{int(i):06d}",
            "key": str(sources[n]),
            "start": int(starts[n]),
        }
        for n, i in enumerate(chosen)
    ]


def _brought_videos(path: str, extensions: list[str]) -> list[dict]:
    """Videos a user points at (a folder, a glob or a file): encoded with the tokenizer on the way in."""
    try:
        listed = FolderSource(path, tuple(extensions)).items()
    except OSError as err:
        raise StageInputError(f"generate.videos: given {path!r}; cannot be read ({err})") from None
    if not listed:
        raise StageInputError(f"generate.videos: given {path!r}; expected video files, found none")
    return [{"position": i, "clip": i, "name": item.key, "path": item.ref} for i, item in enumerate(listed)]
