"""`stvideo generate`: continuations for every clip of a split, scored in the same run.

A Ray Data job. An actor pool loads the dynamics model and the tokenizer once per
actor; each actor continues its clips (`dynamics.generate`), scores them against
their true frames (`pipeline.truth`) beside the references (`dynamics.evaluate`)
and writes each clip's mp4. Rows come back as numpy columns; the driver writes
`codes.zarr`, `metrics.json` and a preview grid (`preview.gif` / `preview.mp4`),
and logs the scores to MLflow.
"""

from __future__ import annotations

import io
import itertools
import json
import tempfile
import time
from collections import defaultdict
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from common import logs
from common.digit_identity import DigitIdentity, DigitTrack
from common.identity import file_identity
from common.progress import progress_bar
from dynamics import evaluate, report
from dynamics.checkpoint import DynamicsCheckpointError, load_dynamics
from dynamics.generate import GenerationSettings, continue_clip
from jobs import models, tracking
from jobs.config import PipelineConfig
from jobs.layout import Layout
from jobs.ray_runtime import ray_session
from jobs.stages.base import StageInputError, StageResult
from pipeline import storage
from pipeline.generations import write_codes, write_preview
from pipeline.latents import LatentStoreError, open_latents
from pipeline.moving_mnist import load_glyphs
from pipeline.preview import to_rgb
from pipeline.sources import FolderSource
from pipeline.splits import SPLIT_CODES, TRAIN
from pipeline.truth import RawVideo, StoreTruth, mean_frame, raw_videos, video_start
from pipeline.video import encode_mp4

PREVIEW = ("generated", "median", "truth")  # a preview clip's sample 0, the samples' median, the truth


def protocol_name(prompt_frames: int, steps: int) -> str:
    return f"{prompt_frames}->{steps}"


def scores_column(prompt_frames: int, steps: int) -> str:
    """The batch column of a further protocol's score tables."""
    return f"scores_{prompt_frames}_{steps}"


class ClipGenerator:
    """Ray Data actor: continues, scores and writes a batch of clips. A row is a clip of the
    latent store (`codes`, its source video's `key` and `start`) or a brought video (`path`)."""

    def __init__(
        self,
        layout,
        settings,
        protocols,
        raw_videos,
        train_mean,
        preview_clips,
        fps,
        scratch,
        identity,
        registry=None,
    ):
        from tokenizer.tokenizer import Tokenizer

        torch.set_num_threads(1)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        # an actor may run on any node: the checkpoints come from their URIs (the root's folders or
        # pinned MLflow versions), through its scratch cache
        dynamics = models.checkpoint_folder(layout.dynamics, scratch, registry)
        self.model, _ = load_dynamics(dynamics, map_location=device)
        tokenizer = models.checkpoint_folder(layout.tokenizer, scratch, registry)
        self.tokenizer = Tokenizer.from_pretrained(tokenizer, map_location=device)
        self.settings, self.protocols, self.preview_clips, self.fps = settings, protocols, preview_clips, fps
        self.size, self.channels = self.tokenizer.config.frame_size, self.tokenizer.config.in_channels
        self.truth = StoreTruth(raw_videos, self.size, self.channels)
        self.train_mean = None if train_mean is None else torch.tensor(train_mean)  # Ray's is read-only
        self.identity = identity  # a DigitIdentity for generated Moving MNIST, else None
        self.videos = storage.join(layout.generations, "videos")
        s, none = settings, np.zeros((0, self.channels, self.size, self.size), np.uint8)
        self.rejected = {  # the row of an input that failed: zero codes, NaN scores, no preview
            "codes": np.zeros((s.samples, s.prompt_frames + s.generate_frames, *self.model.grid), np.uint16),
            "scores": evaluate.score_table({}, s.generate_frames),
            "prompt_identity": np.full(2, np.nan),  # reconstructed, original
            **{scores_column(p, k): evaluate.score_table({}, k) for p, k in protocols},
            **{f"preview_{kind}": none for kind in PREVIEW},
        }

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        columns = defaultdict(list)
        for index, clip in enumerate(batch["clip"].tolist()):
            name, error = str(batch["name"][index]), ""
            try:
                row = self._continue(clip, name, *self._clip(batch, index))
            except Exception as err:  # one bad input is reported, the rest of the batch goes on
                error = f"{type(err).__name__}: {logs.first_line(err)}"
                row = self.rejected
            for key, value in {"clip": clip, "name": name, "error": error, **row}.items():
                columns[key].append(value)
        return {key: _column(values) for key, values in columns.items()}

    def _clip(self, batch: dict[str, np.ndarray], index: int) -> tuple[torch.Tensor, torch.Tensor, list]:
        """A row's codes [T, h, w], its true frames uint8 [T, C, H, W] and its digits' tracks."""
        if "path" in batch:  # a brought video: its own frames are the truth, encoded here
            s = self.settings
            frames = s.prompt_frames + s.generate_frames
            truth = video_start(str(batch["path"][index]), s.prompt_frames, frames, self.size, self.channels)
            return self.tokenizer.encode(torch.from_numpy(truth)).cpu(), torch.from_numpy(truth), []
        codes = torch.from_numpy(batch["codes"][index].astype(np.int64))
        key, start = str(batch["key"][index]), int(batch["start"][index])
        truth = self.truth.clip(key, start, len(codes))
        return codes, torch.from_numpy(truth), self.truth.digit_tracks(key, start, len(codes))

    def _identify(self, tracks: list) -> evaluate.Identify | None:
        if self.identity is None or not tracks:
            return None

        def identify(frames: torch.Tensor, first: int) -> torch.Tensor:
            span = [DigitTrack(t.label, t.corners[first : first + len(frames)]) for t in tracks]
            return self.identity.score(frames, span)

        return identify

    def _continue(self, clip: int, name: str, codes: torch.Tensor, truth: torch.Tensor, tracks: list) -> dict:
        """S continuations of one clip: their codes, score table and mp4 (sample 0), the preview
        frames of a preview clip; then the score table of each further protocol."""
        s, identify = self.settings, self._identify(tracks)
        run = continue_clip(self.model, self.tokenizer, codes, clip, s, truth=truth)
        scores = evaluate.score_continuation(run, truth, self.train_mean, identify)
        row = {
            "codes": run.codes.numpy().astype(np.uint16),
            "scores": evaluate.score_table(scores, run.steps),
        }
        if identify is not None:
            prompt = evaluate.prompt_identity(run, truth, identify)
            row["prompt_identity"] = np.array([prompt["reconstructed"], prompt["original"]])
        for prompt_frames, steps in self.protocols:
            scores = {}
            if prompt_frames < len(codes):
                other = continue_clip(self.model, self.tokenizer, codes, clip, s, prompt_frames, steps, truth)
                scores = evaluate.score_continuation(other, truth, self.train_mean, identify)
            row[scores_column(prompt_frames, steps)] = evaluate.score_table(scores, steps)
        video = encode_mp4(to_rgb(run.frames[0].numpy()), fps=self.fps, codec="libx264", crf=12)
        storage.write_bytes_atomic(storage.join(self.videos, f"{name}.mp4"), video)
        if clip in self.preview_clips:
            shown = (run.frames[0], run.median, truth)
            row.update(
                {f"preview_{kind}": frames.numpy() for kind, frames in zip(PREVIEW, shown, strict=True)}
            )
        return {**self.rejected, **row}  # what this clip lacks (mostly: preview frames) stays empty


def _column(values: list) -> np.ndarray:
    """One column of a batch; frames of different lengths (previews) as an array of arrays."""
    if len({np.shape(value) for value in values}) == 1:
        return np.array(values)
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def run_generate(cfg: PipelineConfig, layout: Layout) -> StageResult:
    gen, scratch = cfg.generate, storage.scratch_root(cfg.scratch)
    layout, registry = _pinned_checkpoints(cfg, layout)
    try:
        dynamics_local = models.checkpoint_folder(layout.dynamics, scratch, registry)
        _, dynamics_config = load_dynamics(dynamics_local)
        store = open_latents(layout.latents, tokenizer_identity=dynamics_config["tokenizer_identity"])
    except models.ModelURIError as err:
        raise StageInputError(f"generate.dynamics: {err}") from None
    except (DynamicsCheckpointError, LatentStoreError, FileNotFoundError) as err:
        raise StageInputError(f"{err}; run train-dynamics (and encode) first") from None
    tokenizer_local = _check_tokenizer(layout, scratch, registry, store.attrs["tokenizer_identity"])
    raw_videos = _raw_videos(layout, store.attrs["fps"])
    items = _brought_videos(gen.videos, cfg.data.extensions) if gen.videos else _store_clips(gen, store)
    if not gen.videos and not raw_videos:
        raise StageInputError(f"{layout.raw_manifest}: unreadable; store clips are scored on the raw videos")
    out = layout.generations
    settings, protocols = GenerationSettings.of(gen), [tuple(protocol) for protocol in gen.protocols]
    preview_clips = spread_over_videos(items, gen.preview_clips)
    fps = float(store.attrs["fps"] or cfg.data.fps)

    started = time.perf_counter()
    train = set(store.sources()[store.group["split"][:] == TRAIN].tolist())
    size, channels = int(store.attrs["frame_size"]), int(store.attrs["channels"])
    train_mean = mean_frame(raw_videos, train, size, channels, gen.mean_frame_videos)
    identity = _digit_identity(cfg.data) if not gen.videos else None
    actor = (
        layout,
        settings,
        protocols,
        raw_videos,
        train_mean,
        set(preview_clips),
        fps,
        scratch,
        identity,
        registry,
    )
    results = _continue_all(cfg, items, actor)
    seconds = time.perf_counter() - started

    rejected = [{"clip": str(r["name"]), "reason": str(r["error"])} for r in results.values() if r["error"]]
    done = [result for result in results.values() if not result["error"]]
    if not done:
        raise StageInputError(
            f"generate: every input was rejected, e.g. {rejected[0]['clip']}: {rejected[0]['reason']}"
        )
    identity = file_identity(dynamics_local / "model.safetensors")
    write_codes(
        storage.join(out, "codes.zarr"),
        [result["codes"] for result in done],
        [result["clip"] for result in done],
        [str(result["name"]) for result in done],
        {
            **asdict(settings),
            "fps": fps,
            "preview_clips": preview_clips,
            "protocols": [list(protocol) for protocol in protocols],
            "dynamics_identity": identity,
            "tokenizer_identity": dynamics_config["tokenizer_identity"],
            "latents": layout.latents,
        },
    )
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
    metrics_json = json.dumps(metrics, indent=2).encode()
    storage.write_bytes_atomic(storage.join(out, "metrics.json"), metrics_json)
    shown = [results[i] for i in preview_clips if len(results.get(i, {}).get("preview_generated", ()))]
    frames = {kind: [result[f"preview_{kind}"] for result in shown] for kind in PREVIEW}
    median = frames["median"] if gen.samples > 1 else None
    preview_gif = write_preview(out, frames["generated"], frames["truth"], median, gen.prompt_frames, fps)

    tracking.log_bytes(preview_gif, "preview/preview.gif")
    _log_preview_steps(preview_gif, gen.prompt_frames)
    tracking.log_bytes(metrics_json, "metrics.json")
    if "model" in metrics["per_step"]:
        _report(cfg, out, metrics, preview_gif)
    headline = tracking.log_scores_by_step(metrics)
    for prompt_frames, steps in protocols:
        if protocol_name(prompt_frames, steps) in metrics.get("protocols", {}):
            scored = metrics["protocols"][protocol_name(prompt_frames, steps)]
            headline.update(tracking.log_scores_by_step(scored, f"p{prompt_frames}_k{steps}_"))
    summary = (
        f"generate: {len(done)} clips, {gen.prompt_frames} prompt -> {gen.generate_frames} frames, in {out}"
    )
    if rejected:
        summary += f"; {len(rejected)} rejected (see metrics.json)"
    summary += _cut_short_note(trained)
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


def _report(cfg: PipelineConfig, out: str, metrics: dict, preview_gif: bytes) -> None:
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
    page = report.report_html(metrics, samples, preview_gif, title, pngs)
    storage.write_bytes_atomic(storage.join(out, "report.html"), page.encode())
    tracking.log_bytes(page.encode(), "report.html")


def _pinned_checkpoints(cfg: PipelineConfig, layout: Layout) -> tuple[Layout, str | None]:
    """The layout with MLflow aliases pinned to the versions they name now, so every actor reads
    the same models, and the MLflow they come from (None when both are folders)."""
    registry = models.registry_uri(cfg, layout.dynamics, layout.tokenizer)
    pinned = {}
    for field, key in (("dynamics", "generate.dynamics"), ("tokenizer", "encode.tokenizer")):
        try:
            pinned[field] = models.pin(getattr(layout, field), registry)
        except models.ModelURIError as err:
            raise StageInputError(f"{key}: {err}") from None
    return replace(layout, **pinned), registry


def _check_tokenizer(layout: Layout, scratch, registry: str | None, made_with: str) -> Path:
    """Decoding with another tokenizer than the one that made the latents gives noise: refuse.
    Returns the checkpoint's local folder."""
    try:
        folder = models.checkpoint_folder(layout.tokenizer, scratch, registry)
        given = file_identity(folder / "model.safetensors")
    except models.ModelURIError as err:
        raise StageInputError(f"encode.tokenizer: {err}") from None
    except FileNotFoundError:
        raise StageInputError(f"encode.tokenizer: {layout.tokenizer}: no checkpoint there") from None
    if given != made_with:
        raise StageInputError(
            f"encode.tokenizer: {layout.tokenizer} is tokenizer {given}, but {layout.latents} was made "
            f"with tokenizer {made_with} (and the dynamics model learned its codes): give that one"
        )
    return folder


def _continue_all(cfg: PipelineConfig, items: list[dict], actor: tuple) -> dict[int, dict]:
    """Every item through a pool of `ClipGenerator` actors: clip -> its row, in clip order."""
    gen, results = cfg.generate, {}
    with ray_session(cfg.ray):
        import ray
        import ray.data

        logs.configure()  # importing ray.data set its loggers' levels: ours again

        ray.data.DataContext.get_current().enable_progress_bars = False
        dataset = ray.data.from_items(items).map_batches(
            ClipGenerator,
            fn_constructor_args=actor,
            batch_size=gen.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=gen.num_actors),
            num_gpus=gen.num_gpus if ray.cluster_resources().get("GPU", 0) > 0 else 0,
            resources=gen.actor_resources or None,
        )
        with progress_bar(total=len(items), desc="generate", unit="clip") as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for index, clip in enumerate(batch["clip"].tolist()):
                    results[clip] = {key: column[index] for key, column in batch.items()}
                    bar.update(1)
    return dict(sorted(results.items()))


def _digit_identity(data) -> DigitIdentity | None:
    """The digit classifier for generated Moving MNIST, fitted on its glyph source; else None."""
    if data.source != "moving-mnist" or (data.path or "").endswith(".npy"):
        return None
    glyphs, labels = load_glyphs(data.path, data.moving_mnist.digit_size)
    return DigitIdentity(glyphs, labels) if len(set(labels.tolist()) - {-1}) > 1 else None


def _aggregate(done: list[dict], protocols: list[tuple[int, int]]) -> dict:
    """The clips' score tables aggregated: the run's protocol, then each further one; and the
    digit identity of the prompts as reconstructed and as they are, where it was scored."""
    metrics = evaluate.aggregate([evaluate.table_scores(result["scores"]) for result in done])
    prompts = np.array([result["prompt_identity"] for result in done])
    if len(prompts) and not np.isnan(prompts).any():
        reconstructed, original = prompts.mean(0).tolist()
        metrics["prompt_identity"] = {"reconstructed": reconstructed, "original": original}
    if protocols:
        metrics["protocols"] = {}
    for prompt_frames, steps in protocols:
        per_clip = [evaluate.table_scores(result[scores_column(prompt_frames, steps)]) for result in done]
        if any(per_clip):  # clips no longer than the prompt have no scores
            scored = evaluate.aggregate([scores for scores in per_clip if scores])
            metrics["protocols"][protocol_name(prompt_frames, steps)] = scored
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


def _raw_videos(layout: Layout, fps: float | None) -> dict[str, RawVideo]:
    """Where each video's true frames are; none when the raw shards are gone."""
    try:
        return raw_videos(storage.read_json(layout.raw_manifest), layout.raw_shard, fps)
    except (OSError, ValueError):
        return {}


def spread_over_videos(items: list[dict], count: int) -> list[int]:
    """`count` clips for the preview, as many videos as there are shown: each video's first clip
    in turn, then each one's second, and so on (a split by time holds runs of one video's clips)."""
    by_video: dict[str, list[int]] = {}
    for item in items:
        by_video.setdefault(item.get("key", item["name"]), []).append(item["clip"])
    rounds = itertools.zip_longest(*by_video.values())
    return [clip for row in rounds for clip in row if clip is not None][:count]


def _store_clips(gen, store) -> list[dict]:
    """The clips of one split of the latent store (at most `max_clips`), with their codes."""
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
    codes = store.codes.get_orthogonal_selection((chosen,))
    sources, starts = store.sources(), store.group["start_frame"][:]
    return [
        {
            "clip": int(i),
            "name": f"{int(i):06d}",
            "codes": codes[n],
            "key": str(sources[i]),
            "start": int(starts[i]),
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
    return [{"clip": i, "name": item.key, "path": item.ref} for i, item in enumerate(listed)]
