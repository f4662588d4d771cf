"""`stvideo generate`: continuations for every clip of a split, scored in the same run.

A Ray Data job. An actor pool loads the dynamics model and the tokenizer's
decoder once per actor; each actor rolls clips out with the temporal key/value
cache, decodes them, writes each clip's mp4, and scores the prediction against
the true frames (decoded from the raw shards) beside two references measured on
the same clips: the last prompt frame held, and the tokenizer's own
reconstruction of the true future (the bound of any latent model). The driver
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
REFERENCES = ("model", "model_best", "copy_last", "reconstruction")


class ClipGenerator:
    """Ray Data actor: rolls out, decodes, scores and writes a batch of clips.

    A row is either a clip of the latent store (`codes`, and its source video's
    `key` and `start` in the raw shards for the truth) or a video a user brought
    (`path`: decoded and encoded here; its own frames are the truth).
    """

    def __init__(self, dynamics_dir: str, tokenizer_dir: str, raw_index: dict, settings: dict, out_dir: str):
        import torch

        from dynamics.checkpoint import load_dynamics
        from tokenizer.tokenizer import Tokenizer

        torch.set_num_threads(1)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, _ = load_dynamics(dynamics_dir, map_location=device)
        self.tokenizer = Tokenizer.from_pretrained(tokenizer_dir, map_location=device)
        self.raw_index, self.settings, self.out_dir = raw_index, settings, Path(out_dir)
        self.shard_cache: dict[str, dict] = {}

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
        """Roll one clip out S times, decode, score against the truth, write its mp4."""
        import torch

        from dynamics.evaluate import copy_last_scores, frame_scores
        from dynamics.rollout import rollout
        from pipeline.preview import to_rgb
        from pipeline.video import encode_mp4

        s = self.settings
        prompt_frames, steps, samples = s["prompt_frames"], s["generate_frames"], s["samples"]
        prompt = codes[None, :prompt_frames]
        # one generator per clip and sample: the same seed gives the same output whatever the batching
        generated = torch.cat(
            [
                rollout(
                    self.model,
                    prompt,
                    steps,
                    temperature=s["temperature"],
                    top_k=s["top_k"],
                    deterministic=s["deterministic"],
                    generator=torch.Generator().manual_seed(s["seed"] * 1_000_003 + clip_id * 101 + sample),
                )
                for sample in range(samples)
            ]
        )  # [S, P + K, h, w]
        decoded = torch.stack(
            [self.tokenizer.decode(sample).cpu() for sample in generated]
        )  # [S, P+K, C, H, W]
        horizon = min(steps, len(truth) - prompt_frames)  # steps that have ground truth
        scores = {}
        if horizon > 0:
            future = truth[prompt_frames : prompt_frames + horizon]
            per_sample = [frame_scores(d[prompt_frames : prompt_frames + horizon], future) for d in decoded]
            best = min(range(samples), key=lambda i: float(per_sample[i]["mse"].mean()))
            scores["model"] = {m: torch.stack([p[m] for p in per_sample]).mean(0) for m in METRICS}
            scores["model_best"] = per_sample[best]
            scores["copy_last"] = copy_last_scores(truth[prompt_frames - 1 : prompt_frames], future)
            recon = self.tokenizer.decode(codes[prompt_frames : prompt_frames + horizon]).cpu()
            scores["reconstruction"] = frame_scores(recon, future)
        scores = {ref: {m: v.tolist() for m, v in values.items()} for ref, values in scores.items()}
        video = encode_mp4(to_rgb(decoded[0].numpy()), fps=s["fps"], codec="libx264", crf=12)
        (self.out_dir / "videos" / f"{name}.mp4").write_bytes(video)
        preview = ""
        if clip_id in s["preview_clips"]:
            preview = json.dumps({"generated": decoded[0].tolist(), "truth": truth.tolist()})
        return generated.numpy().astype(np.uint16), scores, preview


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
        "top_k": gen.top_k,
        "deterministic": gen.deterministic,
        "seed": gen.seed,
        "fps": float(store.attrs["fps"] or cfg.data.fps),
        "preview_clips": preview_ids,
    }
    started = time.perf_counter()
    results: dict[int, dict] = {}
    with ray_session(cfg.ray):
        import ray
        import ray.data

        ray.data.DataContext.get_current().enable_progress_bars = False
        gpus = gen.num_gpus if ray.cluster_resources().get("GPU", 0) > 0 else 0
        dataset = ray.data.from_items(items).map_batches(
            ClipGenerator,
            fn_constructor_args=(str(dynamics_dir), str(tokenizer_dir), raw_index, settings, str(out_dir)),
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
    )
    (out_dir / "preview.gif").write_bytes(gif_bytes(grid, settings["fps"], scale=2))
    even = grid[:, : grid.shape[1] // 2 * 2, : grid.shape[2] // 2 * 2]  # yuv420p wants even sizes
    (out_dir / "preview.mp4").write_bytes(encode_mp4(even, fps=settings["fps"]))
    tracking.log_artifact(str(out_dir / "preview.gif"), "preview")
    tracking.log_artifact(str(out_dir / "metrics.json"))
    headline = {f"{ref}_{m}": metrics["mean"][ref][m] for ref in metrics["mean"] for m in METRICS}
    for step, values in enumerate(metrics["per_step"]["model"]["mse"], start=1):
        tracking.log_metrics(
            {
                "model_mse_by_step": values,
                **{
                    f"{ref}_mse_by_step": metrics["per_step"][ref]["mse"][step - 1]
                    for ref in metrics["per_step"]
                    if ref != "model"
                },
            },
            step=step,
        )
    summary = f"generate: {len(ids)} clips, {gen.prompt_frames} prompt -> {gen.generate_frames} frames"
    summary += f", in {out_dir}"
    if rejected:
        summary += f"; {len(rejected)} rejected (see metrics.json)"
    if "model" in metrics["mean"]:
        mean = metrics["mean"]
        summary += (
            f"; MSE per frame {mean['model']['mse']:.1f} (copy-last {mean['copy_last']['mse']:.1f}, "
            f"reconstruction bound {mean['reconstruction']['mse']:.1f}), SSIM {mean['model']['ssim']:.3f}; "
            f"preview {out_dir / 'preview.gif'}, metrics {out_dir / 'metrics.json'}"
        )
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
    """Per horizon step and overall means, for the model and each reference."""
    per_step: dict[str, dict[str, list[float]]] = {}
    for ref in REFERENCES:
        runs = [scores[ref] for scores in per_clip if ref in scores]
        if not runs:
            continue
        per_step[ref] = {m: np.mean([run[m] for run in runs], axis=0).tolist() for m in METRICS}
    mean = {ref: {m: float(np.mean(values[m])) for m in METRICS} for ref, values in per_step.items()}
    return {
        "per_step": per_step,
        "mean": mean,
        "definition": "mse/mae: sum over CxHxW of [0,1] pixels, mean over frames",
    }
