"""What each of generate's actors does to a batch of clips, and how the clips' scores add up.

`BatchGenerator` loads the dynamics model and the tokenizer once; for each clip it continues it
(`dynamics.generate`), scores it against its true frames beside the references
(`dynamics.evaluate`), writes its codes, its mp4 (sample 0) and, for a preview clip, its frames
into the generation store (`pipeline.generations`), then records the batch. A clip whose input is
bad is recorded with its reason and the batch goes on; a write that fails fails the batch.
`aggregate_clips` and `by_video` turn the recorded scores into `metrics.json`'s figures.

No Ray or MLflow here: the generate stage runs this as a Ray Data actor pool.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import logs
from common.digit_identity import DigitIdentity, DigitTrack
from dynamics import evaluate
from dynamics.checkpoint import load_dynamics
from dynamics.generate import Continuation, GenerationSettings, continue_clip
from pipeline import storage
from pipeline.generations import GenerationStore
from pipeline.latents import open_latents
from pipeline.preview import to_rgb
from pipeline.truth import RawVideo, StoreTruth, video_start
from pipeline.video import encode_mp4

PREVIEW = ("generated", "median", "truth")  # a preview clip's sample 0, the samples' median, the truth


def protocol_name(prompt_frames: int, steps: int) -> str:
    return f"{prompt_frames}->{steps}"


@dataclass(frozen=True)
class BatchJob:
    """What every `BatchGenerator` of a run is built from, besides the two checkpoints."""

    settings: GenerationSettings
    protocols: list[tuple[int, int]]  # further (prompt frames, steps) each clip is scored on
    raw_videos: dict[str, RawVideo]  # where the store clips' true frames are
    train_mean: np.ndarray | None  # the train split's mean frame, a reference
    preview_positions: set[int]  # the clips whose frames the preview grid shows
    fps: float
    identity: DigitIdentity | None  # the digit classifier for generated Moving MNIST, else None
    latents: str  # the latent store the clips come from
    generations: str  # the folder written: codes.zarr and videos/


class BatchGenerator:
    """Continues, scores and writes a batch of clips. A row is a clip of the latent store (its
    `clip` index, source video `key` and `start`) or a brought video (`path`), at `position` in
    `codes.zarr`. Returns the batch's clip and rejection counts: nothing it made."""

    def __init__(self, dynamics: Path, tokenizer: Path, job: BatchJob):
        from tokenizer.tokenizer import Tokenizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model, _ = load_dynamics(dynamics, map_location=device)
        self.tokenizer = Tokenizer.from_pretrained(tokenizer, map_location=device)
        self.job, self.settings = job, job.settings
        self.size, self.channels = self.tokenizer.config.frame_size, self.tokenizer.config.in_channels
        self.truth = StoreTruth(job.raw_videos, self.size, self.channels)
        mean = job.train_mean
        self.train_mean = None if mean is None else torch.tensor(mean)  # Ray's array is read-only
        self.latents = None  # opened on the first clip of the store
        self.out = GenerationStore.open(storage.join(job.generations, "codes.zarr"))
        self.videos = storage.join(job.generations, "videos")

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
            self.latents = open_latents(self.job.latents)
        codes = torch.from_numpy(self.latents.read_clip(int(batch["clip"][index])).astype(np.int64))
        key, start = str(batch["key"][index]), int(batch["start"][index])
        truth = self.truth.clip(key, start, len(codes))
        return codes, torch.from_numpy(truth), self.truth.digit_tracks(key, start, len(codes))

    def _identify(self, tracks: list) -> evaluate.Identify | None:
        if self.job.identity is None or not tracks:
            return None

        def identify(frames: torch.Tensor, first: int) -> torch.Tensor:
            span = [DigitTrack(t.label, t.corners[first : first + len(frames)]) for t in tracks]
            return self.job.identity.score(frames, span)

        return identify

    def _continue(self, clip: dict, codes: torch.Tensor, truth: torch.Tensor, tracks: list) -> tuple:
        """S continuations of one clip, and their scores (per reference, metric and step) and
        those of each further protocol."""
        s, identify = self.settings, self._identify(tracks)
        run = continue_clip(self.model, self.tokenizer, codes, clip["clip"], s, truth=truth)
        scored = {"scores": clip_scores(run, truth, self.train_mean, identify), "prompt_identity": None}
        if identify is not None:
            prompt = evaluate.prompt_identity(run, truth, identify)
            scored["prompt_identity"] = [prompt["reconstructed"], prompt["original"]]
        scored["protocols"] = {}
        for prompt_frames, steps in self.job.protocols:
            if prompt_frames < len(codes):  # a clip no longer than the prompt has no scores
                other = continue_clip(
                    self.model, self.tokenizer, codes, clip["clip"], s, prompt_frames, steps, truth
                )
                scores = clip_scores(other, truth, self.train_mean, identify)
                scored["protocols"][protocol_name(prompt_frames, steps)] = scores
        return run, scored

    def _write(self, position: int, name: str, run: Continuation, truth: torch.Tensor) -> None:
        """A clip's codes, its mp4 (sample 0) and, for a preview clip, its frames."""
        self.out.write_clip(position, run.codes.numpy())
        video = encode_mp4(to_rgb(run.frames[0].numpy()), fps=self.job.fps, codec="libx264", crf=12)
        storage.write_bytes_atomic(storage.join(self.videos, f"{name}.mp4"), video)
        if position in self.job.preview_positions:
            shown = (run.frames[0], run.median, truth)
            self.out.write_preview(
                position, {kind: frames.numpy() for kind, frames in zip(PREVIEW, shown, strict=True)}
            )


def clip_scores(
    run: Continuation, truth: torch.Tensor, train_mean, identify
) -> dict[str, dict[str, list[float]]]:
    """A continuation's scores (reference -> metric -> per step) as every clip's are kept: the
    fixed set of references and metrics a score table holds."""
    scores = evaluate.score_continuation(run, truth, train_mean, identify)
    return evaluate.table_scores(evaluate.score_table(scores, run.steps))


def aggregate_clips(done: list[dict], protocols: list[tuple[int, int]]) -> dict:
    """The recorded clips' scores aggregated: the run's protocol, then each further one; and the
    digit identity of the prompts as reconstructed and as they are, where it was scored."""
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


def run_metrics(job: BatchJob, done: list[dict], items: list[dict], rejected: list[dict], **about) -> dict:
    """`metrics.json`: the generated clips' scores aggregated (`aggregate_clips`) and per source
    video (`by_video`), the rejected inputs, the clip count and the run's shape; `about`: how far
    the models `trained`, and the `seconds` it took."""
    s = job.settings
    return {
        **aggregate_clips(done, job.protocols),
        "trained": about["trained"],
        "by_video": by_video(done, items, job.protocols),
        "rejected": rejected,
        "clips": len(done),
        "prompt_frames": s.prompt_frames,
        "generate_frames": s.generate_frames,
        "samples": s.samples,
        "seconds": about["seconds"],
    }


def by_video(done: list[dict], items: list[dict], protocols: list[tuple[int, int]]) -> dict:
    """Each source video's clips aggregated alone, so one scene's figures are not hidden in the
    mean; empty when no video has two clips (then the rows are the clips themselves)."""
    video_of = {item["clip"]: item.get("key", item["name"]) for item in items}
    grouped: dict[str, list[dict]] = {}
    for result in done:
        grouped.setdefault(video_of[result["clip"]], []).append(result)
    if len(grouped) == len(done):
        return {}
    return {
        key: {"clips": len(results), **aggregate_clips(results, protocols)}
        for key, results in grouped.items()
    }
