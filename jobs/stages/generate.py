"""`stvideo generate`: continuations for every clip of a split, scored in the same run.

A Ray Data job. An actor pool loads the dynamics model and the tokenizer's
decoder once per actor; each actor rolls clips out with the temporal key/value
cache, decodes them, writes each clip's mp4, and scores the prediction (sample 0,
and the median and average of all samples) against the true frames (decoded from
the raw shards) beside references measured on the same clips: the last prompt
frame held, an all-black frame, the training-set mean frame, and the tokenizer's
own reconstruction of the true future (the bound of any latent model). The driver
gathers the codes into `codes.zarr`, the scores into `metrics.json`, and a
preview grid into `preview.gif` / `preview.mp4`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from jobs import tracking
from jobs.config import PipelineConfig
from jobs.ray_runtime import ray_session
from jobs.stages.base import StageInputError, StageResult
from pipeline import storage
from pipeline.latents import LatentStoreError, open_latents
from pipeline.splits import SPLIT_NAMES

METRICS = ("mse", "mae", "psnr", "ssim")
REFERENCES = (
    "model",
    "model_samples",
    "model_best",
    "model_average",
    "model_median",
    "copy_last",
    "black",
    "train_mean",
    "reconstruction",
)
# the trivial references a model has to beat; the reconstruction is a bound, not a rival
TRIVIAL = ("copy_last", "black", "train_mean")
# point estimates made from all S samples of a prompt: their pixel average (MSE-optimal, blurs
# where they disagree) and their per-pixel median (MAE-optimal, stays sharp)
SAMPLE_ESTIMATES = ("model_average", "model_median")


class ClipGenerator:
    """Ray Data actor: rolls out, decodes, scores and writes a batch of clips.

    A row is either a clip of the latent store (`codes`, and its source video's
    `key` and `start` in the raw shards for the truth) or a video a user brought
    (`path`: decoded and encoded here; its own frames are the truth).
    """

    def __init__(
        self,
        dynamics_dir: str,
        tokenizer_dir: str,
        raw_index: dict,
        settings: dict,
        out_dir: str,
        mean_frame: np.ndarray | None = None,
    ):
        import torch

        from dynamics.checkpoint import load_dynamics
        from tokenizer.tokenizer import Tokenizer

        torch.set_num_threads(1)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, _ = load_dynamics(dynamics_dir, map_location=device)
        self.tokenizer = Tokenizer.from_pretrained(tokenizer_dir, map_location=device)
        self.raw_index, self.settings, self.out_dir = raw_index, settings, Path(out_dir)
        self.shard_cache: dict[str, dict] = {}
        self.mean_frame = (
            None if mean_frame is None else torch.tensor(mean_frame, dtype=torch.float32)
        )  # Ray hands it read-only

    def _true_frames(self, key: str, start: int, frames: int):
        """A store clip's real frames, decoded from its raw shard at the tokenizer's size."""
        import torch

        from pipeline.clips import VideoPlan, iter_clips, video_bytes
        from pipeline.shards import iter_samples

        shard, step = self.raw_index[key]
        if shard not in self.shard_cache:
            self.shard_cache = {shard: {s["__key__"]: s for s in iter_samples(shard)}}  # one shard at a time
        plan = VideoPlan(key, shard, 0, (start,), step)
        config = self.tokenizer.config
        data = video_bytes(self.shard_cache[shard][key])
        [clip] = iter_clips(data, plan, frames, config.frame_size, config.in_channels)
        return torch.from_numpy(clip)

    def _user_video(self, path: str):
        """A brought video's first P + K frames (uint8 [T, C, H, W]) and their codes."""
        import fsspec
        import torch

        from pipeline.video import probe_video, read_frames

        with fsspec.open(path, "rb") as handle:
            data = handle.read()
        info = probe_video(data)  # raises RejectedVideo with a reason
        need = self.settings["prompt_frames"]
        if info.num_frames < need:
            raise ValueError(f"only {info.num_frames} frames, fewer than the {need} prompt frames")
        count = min(info.num_frames, need + self.settings["generate_frames"])
        frames = read_frames(data, size=self.tokenizer.config.frame_size, indices=list(range(count)))
        if self.tokenizer.config.in_channels == 1:
            frames = frames.mean(axis=-1, keepdims=True).round().astype(np.uint8)
        truth = torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))
        return truth, self.tokenizer.encode(truth).cpu()

    def __call__(self, batch: dict) -> dict:
        rows: dict[str, list] = {
            "clip": [],
            "name": [],
            "codes": [],
            "scores": [],
            "preview": [],
            "error": [],
        }
        for index, clip_id in enumerate(batch["clip"]):
            name, error, generated, scores, preview = str(batch["name"][index]), "", None, {}, ""
            try:
                if "path" in batch:
                    truth, codes = self._user_video(str(batch["path"][index]))
                else:
                    import torch

                    codes = torch.from_numpy(batch["codes"][index].astype(np.int64))
                    truth = self._true_frames(
                        str(batch["key"][index]), int(batch["start"][index]), len(codes)
                    )
                generated, scores, preview = self._continue(int(clip_id), name, codes, truth)
            except Exception as err:  # one bad input is reported, the rest of the batch goes on
                error = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200]}"
            shape = (
                self.settings["samples"],
                self.settings["prompt_frames"] + self.settings["generate_frames"],
            )
            rows["clip"].append(int(clip_id))
            rows["name"].append(name)
            rows["codes"].append(
                generated if generated is not None else np.zeros((*shape, *self.model.grid), np.uint16)
            )
            rows["scores"].append(json.dumps(scores))
            rows["preview"].append(preview)
            rows["error"].append(error)
        return {key: np.stack(value) if key == "codes" else np.array(value) for key, value in rows.items()}

    def _continue(self, clip_id: int, name: str, codes, truth):
        """Roll one clip out S times, decode, score against the truth, write its mp4; then
        the same for each further protocol (prompt, generated frames), scores only."""
        from pipeline.preview import to_rgb
        from pipeline.video import encode_mp4

        s = self.settings
        generated, decoded, scores = self._roll_and_score(
            clip_id, codes, truth, s["prompt_frames"], s["generate_frames"]
        )
        for prompt_frames, steps in s.get("protocols", []):
            if prompt_frames < len(codes):
                _, _, extra = self._roll_and_score(clip_id, codes, truth, prompt_frames, steps)
                scores[protocol_name(prompt_frames, steps)] = extra
        video = encode_mp4(to_rgb(decoded[0].numpy()), fps=s["fps"], codec="libx264", crf=12)
        (self.out_dir / "videos" / f"{name}.mp4").write_bytes(video)
        preview = ""
        if clip_id in s["preview_clips"]:
            preview = json.dumps(
                {
                    "generated": decoded[0].tolist(),
                    "median": decoded.median(0).values.tolist(),
                    "truth": truth.tolist(),
                }
            )
        return generated.numpy().astype(np.uint16), scores, preview

    def _roll_and_score(self, clip_id: int, codes, truth, prompt_frames: int, steps: int):
        """S rollouts of `steps` frames from the first `prompt_frames` codes, decoded, and their
        scores beside the references: (codes [S, P + K, h, w], frames [S, P + K, C, H, W], scores)."""
        import torch

        from dynamics.evaluate import copy_last_scores, frame_scores, sample_diversity
        from dynamics.rollout import rollout

        s = self.settings
        samples = s["samples"]
        prompt = codes[None, :prompt_frames]
        # the likeliest continuation (temperature 0) first when asked, then the drawn samples in one
        # batched rollout: a generator per clip and group, so the output does not depend on batching
        greedy = 1 if s.get("greedy_first") else 0
        groups = [(0.0, 0, greedy), (s["temperature"], greedy, samples - greedy)]
        generated, expected = [], []
        for temperature, first, count in groups:
            if count == 0:
                continue
            vectors: list = []
            generated.append(
                rollout(
                    self.model,
                    prompt.expand(count, -1, -1, -1),
                    steps,
                    temperature=temperature,
                    top_k=s["top_k"],
                    deterministic=s["deterministic"],
                    generator=torch.Generator().manual_seed(s["seed"] * 1_000_003 + clip_id * 101 + first),
                    vectors=vectors,
                )
            )
            expected.append(torch.stack(vectors, 1))  # [count, K, h*w, code_dim]
        generated = torch.cat(generated)  # [S, P + K, h, w]
        # every sample shares the prompt: decoded once; each generated frame decoded once
        if s.get("decode") == "expected":  # generated frames from the expected code vectors
            futures = self.tokenizer.decode_vectors(
                torch.cat(expected).flatten(0, 1).unflatten(1, self.model.grid)
            )
        else:
            futures = self.tokenizer.decode(generated[:, prompt_frames:].flatten(0, 1))
        prompt_decoded = self.tokenizer.decode(codes[:prompt_frames]).cpu()
        decoded = torch.cat(
            [prompt_decoded.expand(samples, -1, -1, -1, -1), futures.cpu().unflatten(0, (samples, -1))], dim=1
        )  # [S, P + K, C, H, W]
        horizon = min(steps, len(truth) - prompt_frames)  # steps that have ground truth
        scores = {}
        if horizon > 0:
            future = truth[prompt_frames : prompt_frames + horizon]
            per_sample = [frame_scores(d[prompt_frames : prompt_frames + horizon], future) for d in decoded]
            best = min(range(samples), key=lambda i: float(per_sample[i]["mse"].mean()))
            # the model's continuation is sample 0, the one written to videos/ and the preview
            scores["model"] = per_sample[0]
            scores["model_samples"] = {m: torch.stack([p[m] for p in per_sample]).mean(0) for m in METRICS}
            scores["model_best"] = per_sample[best]
            # the pixel average of the S samples: the MSE-optimal point estimate, which blurs where
            # the samples disagree instead of committing to one guess (a single sharp but misplaced
            # digit costs its error twice)
            ahead = decoded[:, prompt_frames : prompt_frames + horizon]  # [S, horizon, C, H, W]
            scores["model_average"] = frame_scores(ahead.float().mean(0) / 255.0, future)
            # the per-pixel median: the MAE-optimal estimate, a consensus that stays sharp (a pixel
            # is lit where most samples light it) instead of smearing grey where they disagree
            scores["model_median"] = frame_scores(ahead.median(0).values, future)
            scores["copy_last"] = copy_last_scores(truth[prompt_frames - 1 : prompt_frames], future)
            scores["black"] = frame_scores(torch.zeros_like(future), future)
            if self.mean_frame is not None:
                scores["train_mean"] = frame_scores(self.mean_frame.expand(future.shape), future)
            if samples > 1:
                scores["diversity"] = {
                    "mse": sample_diversity(decoded[:, prompt_frames : prompt_frames + horizon])
                }
            recon = self.tokenizer.decode(codes[prompt_frames : prompt_frames + horizon]).cpu()
            scores["reconstruction"] = frame_scores(recon, future)
        scores = {ref: {m: v.tolist() for m, v in values.items()} for ref, values in scores.items()}
        return generated, decoded, scores


def protocol_name(prompt_frames: int, generate_frames: int) -> str:
    return f"{prompt_frames}->{generate_frames}"


def run_generate(cfg: PipelineConfig) -> StageResult:
    from common.files import file_identity
    from dynamics.checkpoint import DynamicsCheckpointError, load_dynamics
    from pipeline.preview import continuation_grid, gif_bytes
    from pipeline.video import encode_mp4

    gen = cfg.generate
    root = tracking.local_root(cfg) if storage.is_local(cfg.root) else None
    if root is None:
        raise StageInputError(f"root: given {cfg.root!r}; generate writes videos to a local root")
    dynamics_dir, tokenizer_dir = root / "dynamics", Path(cfg.encode.tokenizer or root / "tokenizer")
    latents_uri = str(root / "latents.zarr")
    try:
        _, dyn_config = load_dynamics(dynamics_dir)
        store = open_latents(latents_uri, tokenizer_identity=dyn_config["tokenizer_identity"])
    except (DynamicsCheckpointError, LatentStoreError) as err:
        raise StageInputError(f"{err}; run train-dynamics (and encode) first") from None
    if gen.videos:
        items, raw_index = _brought_videos(gen.videos, cfg.data.extensions), {}
    else:
        items, raw_index = _store_clips(cfg, store)
    out_dir = root / "generations" / gen.name
    (out_dir / "videos").mkdir(parents=True, exist_ok=True)
    preview_ids = [item["clip"] for item in items[: gen.preview_clips]]
    settings = {
        "prompt_frames": gen.prompt_frames,
        "generate_frames": gen.generate_frames,
        "samples": gen.samples,
        "temperature": gen.temperature,
        "greedy_first": gen.greedy_first,
        "top_k": gen.top_k,
        "deterministic": gen.deterministic,
        "seed": gen.seed,
        "fps": float(store.attrs["fps"] or cfg.data.fps),
        "preview_clips": preview_ids,
        "protocols": [list(protocol) for protocol in gen.protocols],
        "decode": gen.decode,
    }
    started = time.perf_counter()
    mean_frame = _train_mean_frame(cfg, store, tokenizer_dir, gen.mean_frame_videos)
    results: dict[int, dict] = {}
    with ray_session(cfg.ray):
        import ray
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        gpus = gen.num_gpus if ray.cluster_resources().get("GPU", 0) > 0 else 0
        dataset = ray.data.from_items(items).map_batches(
            ClipGenerator,
            fn_constructor_args=(
                str(dynamics_dir),
                str(tokenizer_dir),
                raw_index,
                settings,
                str(out_dir),
                mean_frame,
            ),
            batch_size=gen.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=gen.num_actors),
            num_gpus=gpus,
        )
        with tqdm(total=len(items), desc="generate", unit="clip") as bar:
            for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                for row in zip(
                    *(batch[k] for k in ("clip", "name", "codes", "scores", "preview", "error")), strict=True
                ):
                    clip, name, codes, scores, preview, error = row
                    results[int(clip)] = {
                        "name": str(name),
                        "codes": codes,
                        "scores": json.loads(scores),
                        "preview": preview,
                        "error": str(error),
                    }
                    bar.update(1)
    seconds = time.perf_counter() - started

    rejected = [
        {"clip": results[i]["name"], "reason": results[i]["error"]}
        for i in sorted(results)
        if results[i]["error"]
    ]
    ids = sorted(i for i in results if not results[i]["error"])
    if not ids:
        raise StageInputError(
            f"generate: every input was rejected, e.g. {rejected[0]['clip']}: {rejected[0]['reason']}"
        )
    group = zarr.open_group(str(out_dir / "codes.zarr"), mode="w")
    group.create_array(
        "codes",
        data=np.stack([results[i]["codes"] for i in ids]),
        chunks=(1, *results[ids[0]]["codes"].shape),
    )
    group.create_array("clip", data=np.array(ids, dtype=np.int64))
    group.create_array("name", data=np.array([results[i]["name"] for i in ids], dtype=str))
    group.attrs.update(
        {
            **settings,
            "dynamics_identity": file_identity(dynamics_dir / "model.safetensors"),
            "tokenizer_identity": dyn_config["tokenizer_identity"],
            "latents": latents_uri,
        }
    )

    metrics = _aggregate([results[i]["scores"] for i in ids])
    if gen.protocols:
        metrics["protocols"] = {}
        for prompt_frames, steps in gen.protocols:
            key = protocol_name(prompt_frames, steps)
            per_clip = [results[i]["scores"][key] for i in ids if key in results[i]["scores"]]
            if per_clip:
                metrics["protocols"][key] = _aggregate(per_clip)
    metrics.update(
        {
            "rejected": rejected,
            "clips": len(ids),
            "prompt_frames": gen.prompt_frames,
            "generate_frames": gen.generate_frames,
            "samples": gen.samples,
            "seconds": seconds,
        }
    )
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))

    previews = [json.loads(results[i]["preview"]) for i in preview_ids if results.get(i, {}).get("preview")]
    grid = continuation_grid(
        [np.array(p["generated"], dtype=np.uint8) for p in previews],
        [np.array(p["truth"], dtype=np.uint8) for p in previews],
        gen.prompt_frames,
        [np.array(p["median"], dtype=np.uint8) for p in previews] if gen.samples > 1 else None,
    )
    (out_dir / "preview.gif").write_bytes(gif_bytes(grid, settings["fps"], scale=2))
    even = grid[:, : grid.shape[1] // 2 * 2, : grid.shape[2] // 2 * 2]  # yuv420p wants even sizes
    (out_dir / "preview.mp4").write_bytes(encode_mp4(even, fps=settings["fps"]))
    tracking.log_artifact(str(out_dir / "preview.gif"), "preview")
    tracking.log_artifact(str(out_dir / "metrics.json"))
    headline = _log_scores(metrics)
    for (prompt_frames, steps), key in [(p, protocol_name(*p)) for p in gen.protocols]:
        if key in metrics.get("protocols", {}):
            headline.update(_log_scores(metrics["protocols"][key], f"p{prompt_frames}_k{steps}_"))
    summary = f"generate: {len(ids)} clips, {gen.prompt_frames} prompt -> {gen.generate_frames} frames"
    summary += f", in {out_dir}"
    if rejected:
        summary += f"; {len(rejected)} rejected (see metrics.json)"
    if "model" in metrics["mean"]:
        mean = metrics["mean"]
        rivals = ", ".join(f"{ref} {mean[ref]['mse']:.1f}" for ref in TRIVIAL if ref in mean)
        summary += (
            f"; MSE per frame {mean['model']['mse']:.1f} ({rivals}; "
            f"reconstruction bound {mean['reconstruction']['mse']:.1f}), SSIM {mean['model']['ssim']:.3f}"
        )
        if "beats_references" in metrics:
            beats = metrics["beats_references"]
            named = [("sample 0", beats)]
            named += [
                (f"{e.removeprefix('model_')} of {gen.samples}", beats[e])
                for e in SAMPLE_ESTIMATES
                if e in beats
            ]

            def steps(wins: list[bool]) -> str:
                return _ranges(np.flatnonzero(wins) + 1)

            summary += "; below every trivial reference on MSE / above on SSIM at steps: " + ", ".join(
                f"{label} {steps(wins['mse'])} / {steps(wins['ssim'])}" for label, wins in named
            )
        summary += f"; preview {out_dir / 'preview.gif'}, metrics {out_dir / 'metrics.json'}"
    return StageResult(
        stage="generate",
        inputs={"latents": latents_uri, "dynamics": str(dynamics_dir), "tokenizer": str(tokenizer_dir)},
        outputs={"generations": str(out_dir), "metrics": str(out_dir / "metrics.json")},
        metrics={**headline, "clips": len(ids), "seconds": seconds},
        summary=summary,
    )


def _store_clips(cfg: PipelineConfig, store) -> tuple[list[dict], dict]:
    """Clips of one split of the latent store, and where each one's true frames are."""
    from pipeline.clips import frame_step

    gen = cfg.generate
    clip_frames = int(store.attrs["clip_frames"])
    if gen.prompt_frames >= clip_frames:
        raise StageInputError(
            f"generate.prompt_frames: given {gen.prompt_frames}, "
            f"expected fewer than the clips' {clip_frames} frames"
        )
    split_code = {name: code for code, name in SPLIT_NAMES.items()}[gen.split]
    chosen = np.flatnonzero(store.group["split"][:] == split_code)[: gen.max_clips or None]
    if len(chosen) == 0:
        raise StageInputError(f"generate.split: given {gen.split!r}; the store has no clips of that split")
    manifest = storage.read_json(storage.join(cfg.root, "raw", "manifest.json"))
    raw_index = {
        video["key"]: (
            storage.join(cfg.root, "raw", shard["name"]),
            frame_step(video["fps"], store.attrs["fps"]),
        )
        for shard in manifest["shards"]
        for video in shard["videos"]
    }
    codes = store.codes.get_orthogonal_selection((chosen,))
    sources, starts = store.group["source"][:], store.group["start_frame"][:]
    items = [
        {
            "clip": int(i),
            "name": f"{int(i):06d}",
            "codes": codes[n],
            "key": str(sources[i]),
            "start": int(starts[i]),
        }
        for n, i in enumerate(chosen)
    ]
    return items, raw_index


def _brought_videos(path: str, extensions: list[str]) -> list[dict]:
    """Videos a user points at (a folder, a glob or a file): encoded with the tokenizer on the way in."""
    from pipeline.sources import FolderSource

    try:
        listed = FolderSource(path, tuple(extensions)).items()
    except OSError as err:
        raise StageInputError(f"generate.videos: given {path!r}; cannot be read ({err})") from None
    if not listed:
        raise StageInputError(f"generate.videos: given {path!r}; expected video files, found none")
    return [{"clip": i, "name": item.key, "path": item.ref} for i, item in enumerate(listed)]


def _aggregate(per_clip: list[dict]) -> dict:
    """Per horizon step and overall means, for the model and each reference; the samples'
    diversity; and at which steps the model beats the best trivial reference."""
    per_step: dict[str, dict[str, list[float]]] = {}
    for ref in REFERENCES:
        runs = [scores[ref] for scores in per_clip if ref in scores]
        if not runs:
            continue
        per_step[ref] = {m: np.mean([run[m] for run in runs], axis=0).tolist() for m in METRICS}
    mean = {ref: {m: float(np.mean(values[m])) for m in METRICS} for ref, values in per_step.items()}
    metrics = {
        "per_step": per_step,
        "mean": mean,
        "definition": "mse/mae: sum over CxHxW of [0,1] pixels, mean over frames; "
        "diversity: mean pairwise MSE between the samples of one prompt",
    }
    spread = [scores["diversity"]["mse"] for scores in per_clip if "diversity" in scores]
    if spread:
        by_step = np.mean(spread, axis=0)
        metrics["diversity"] = {"per_step": by_step.tolist(), "mean": float(by_step.mean())}
    rivals = [ref for ref in TRIVIAL if ref in per_step]
    if "model" in per_step and rivals:
        best_mse = np.min([per_step[ref]["mse"] for ref in rivals], axis=0)
        best_ssim = np.max([per_step[ref]["ssim"] for ref in rivals], axis=0)

        def wins(estimate: str) -> dict:
            mse_wins = np.asarray(per_step[estimate]["mse"]) < best_mse
            ssim_wins = np.asarray(per_step[estimate]["ssim"]) > best_ssim
            return {
                "mse": mse_wins.tolist(),
                "ssim": ssim_wins.tolist(),
                "steps": _ranges(np.flatnonzero(mse_wins & ssim_wins) + 1),
            }

        # the model's continuation (sample 0); and the point estimates made from all its samples
        metrics["beats_references"] = wins("model")
        for estimate in SAMPLE_ESTIMATES:
            if estimate in per_step:
                metrics["beats_references"][estimate] = wins(estimate)
    return metrics


def _log_scores(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Log MSE and SSIM per horizon step (the step as MLflow's step) for the model and every
    reference, and the diversity; returns the overall means, for the run's summary metrics."""
    headline = {f"{prefix}{ref}_{m}": metrics["mean"][ref][m] for ref in metrics["mean"] for m in METRICS}
    if "diversity" in metrics:
        headline[f"{prefix}diversity_mse"] = metrics["diversity"]["mean"]
    for step in range(1, len(metrics["per_step"].get("model", {}).get("mse", [])) + 1):
        by_step = {
            f"{prefix}{ref}_{m}_by_step": metrics["per_step"][ref][m][step - 1]
            for ref in metrics["per_step"]
            for m in ("mse", "ssim")
        }
        if "diversity" in metrics:
            by_step[f"{prefix}diversity_mse_by_step"] = metrics["diversity"]["per_step"][step - 1]
        tracking.log_metrics(by_step, step=step)
    return headline


def _ranges(steps) -> str:
    """[1, 2, 3, 5] -> '1-3,5'; 'none' when empty."""
    parts, run = [], []
    for step in (int(s) for s in steps):
        if run and step != run[-1] + 1:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(step)
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts) or "none"


def _train_mean_frame(cfg: PipelineConfig, store, tokenizer_dir: Path, max_videos: int) -> np.ndarray | None:
    """The mean frame [C, H, W] in [0, 1] over the train split's videos, decoded from the raw
    shards at the tokenizer's frame size: the best constant guess a model could learn.
    None when the raw shards are gone (their clips then go without this reference)."""
    from pipeline.clips import video_bytes
    from pipeline.shards import iter_samples
    from pipeline.splits import TRAIN
    from pipeline.video import read_frames

    arch = json.loads((Path(tokenizer_dir) / "config.json").read_text())["model"]
    size, channels = int(arch["frame_size"]), int(arch["in_channels"])
    train_keys = set(np.asarray(store.group["source"][:])[store.group["split"][:] == TRAIN].tolist())
    try:
        manifest = storage.read_json(storage.join(cfg.root, "raw", "manifest.json"))
    except (OSError, ValueError):
        return None
    total, count, videos = None, 0, 0
    for shard in manifest["shards"]:
        wanted = {video["key"] for video in shard["videos"]} & train_keys
        if not wanted:
            continue
        for sample in iter_samples(storage.join(cfg.root, "raw", shard["name"])):
            if sample["__key__"] not in wanted:
                continue
            frames = read_frames(video_bytes(sample), size=size).astype(np.float64)
            if channels == 1:  # as the clips are made grey
                frames = frames.mean(axis=-1, keepdims=True).round()
            frames /= 255.0
            frame_sum = frames.sum(axis=0).transpose(2, 0, 1)
            total = frame_sum if total is None else total + frame_sum
            count, videos = count + len(frames), videos + 1
            if videos >= max_videos:
                return (total / count).astype(np.float32)
    return None if total is None else (total / count).astype(np.float32)
