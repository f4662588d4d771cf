"""Scores of predicted frames against the truth, per horizon step, OpenSTL-style.

MSE and MAE are summed over C x H x W on [0, 1] pixels and averaged over frames
(OpenSTL's definition, so Moving MNIST figures compare with its table); PSNR and
SSIM are per frame, SSIM as OpenSTL computes it (scikit-image's, on [0, 1] frames).

A continuation is scored beside references measured on the same clips: the last
prompt frame held (as it is, and as the tokenizer reconstructs it), an all-black
frame, the training-set mean frame, and the tokenizer's own reconstruction of the
true future (the bound of any latent model).
`aggregate` turns the per-clip scores into the per-step and overall means of
`metrics.json`, and says at which steps the model beats every trivial reference.
"""

from __future__ import annotations

import numpy as np
import torch

from common.metrics import psnr_per_frame, ssim_per_frame, to_unit
from dynamics.generate import Continuation

METRICS = ("mse", "mae", "psnr", "ssim")
REFERENCES = (
    "model",  # sample 0: the continuation written to videos/ and shown in the preview
    "model_samples",  # the mean of every sample's scores
    "model_best",  # the sample with the lowest mean MSE (an oracle)
    "model_average",
    "model_median",
    "copy_last",
    "copy_last_latent",  # the tokenizer's reconstruction of the last prompt frame, held
    "black",
    "train_mean",
    "reconstruction",
)
# the trivial references a model has to beat; the reconstruction is a bound, not a rival. Copy-last
# in latents is what a latent model gets by copying the last prompt frame's codes; the gap from
# copy-last in pixels is the tokenizer's share of the error
TRIVIAL = ("copy_last", "copy_last_latent", "black", "train_mean")
# point estimates made from all S samples of a prompt: their pixel average (MSE-optimal, blurs
# where they disagree) and their per-pixel median (MAE-optimal, stays sharp)
SAMPLE_ESTIMATES = ("model_average", "model_median")
# the rows of a score table: every reference, then the samples' diversity (MSE only)
SCORED = (*REFERENCES, "diversity")
DEFINITION = (
    "mse/mae: sum over CxHxW of [0,1] pixels, mean over frames; "
    "ssim: scikit-image's structural_similarity on [0,1] frames (7x7 uniform window); "
    "diversity: mean pairwise MSE between the samples of one prompt"
)


def frame_scores(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Frames [T, C, H, W] (uint8 or [0, 1]) -> each metric per frame, [T]."""
    difference = to_unit(predicted) - to_unit(truth)
    return {
        "mse": difference.pow(2).flatten(1).sum(1),
        "mae": difference.abs().flatten(1).sum(1),
        "psnr": psnr_per_frame(predicted, truth),
        "ssim": ssim_per_frame(predicted, truth),
    }


def copy_last_scores(prompt_last: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """The reference every model must beat: the last prompt frame, held."""
    return frame_scores(prompt_last.expand_as(truth), truth)


def sample_diversity(samples: torch.Tensor) -> torch.Tensor:
    """Samples [S, T, C, H, W] of one prompt -> mean pairwise MSE (OpenSTL units) per frame, [T].

    How far apart the Gaussian layers' samples land: 0 when they all agree."""
    count = samples.shape[0]
    if count < 2:
        return torch.zeros(samples.shape[1])
    unit = to_unit(samples)
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    return torch.stack([(unit[i] - unit[j]).pow(2).flatten(1).sum(1) for i, j in pairs]).mean(0)


def score_continuation(
    run: Continuation, truth: torch.Tensor, mean_frame: torch.Tensor | None = None
) -> dict[str, dict[str, torch.Tensor]]:
    """A continuation and the references, scored against the clip's true frames [T, C, H, W]
    over the generated steps that have a true frame: reference -> metric -> [steps]. Empty when
    no step has one; `train_mean` only with a `mean_frame` [C, H, W] in [0, 1], `diversity`
    (MSE only) only with several samples, `reconstruction` only when the run has one."""
    start = run.prompt_frames
    horizon = min(run.steps, len(truth) - start)
    if horizon <= 0:
        return {}
    future, ahead = truth[start : start + horizon], run.frames[:, start : start + horizon]
    per_sample = [frame_scores(sample, future) for sample in ahead]
    best = min(range(len(per_sample)), key=lambda i: float(per_sample[i]["mse"].mean()))
    scores = {
        "model": per_sample[0],
        "model_samples": {m: torch.stack([p[m] for p in per_sample]).mean(0) for m in METRICS},
        "model_best": per_sample[best],
        "model_average": frame_scores(run.average[start : start + horizon], future),
        "model_median": frame_scores(run.median[start : start + horizon], future),
        "copy_last": copy_last_scores(truth[start - 1 : start], future),
        "copy_last_latent": copy_last_scores(run.frames[0, start - 1 : start], future),
        "black": frame_scores(torch.zeros_like(future), future),
    }
    if mean_frame is not None:
        scores["train_mean"] = frame_scores(mean_frame.expand(future.shape), future)
    if len(ahead) > 1:
        scores["diversity"] = {"mse": sample_diversity(ahead)}
    if run.reconstruction is not None:
        scores["reconstruction"] = frame_scores(run.reconstruction[:horizon], future)
    return scores


def score_table(scores: dict[str, dict], steps: int) -> np.ndarray:
    """Per-reference scores (as `score_continuation` gives) -> one float64 array
    [len(SCORED), len(METRICS), steps], NaN where a reference, a metric or a step is missing:
    a fixed shape, so the scores of many clips stack (and cross Ray) as one column."""
    table = np.full((len(SCORED), len(METRICS), steps), np.nan)
    for row, ref in enumerate(SCORED):
        for column, metric in enumerate(METRICS):
            if metric in scores.get(ref, {}):
                values = np.asarray(scores[ref][metric], dtype=np.float64)
                table[row, column, : len(values)] = values
    return table


def table_scores(table: np.ndarray) -> dict[str, dict[str, list[float]]]:
    """`score_table`'s inverse, as lists: reference -> metric -> per step, absent ones left out."""
    scores = {}
    for row, ref in zip(table, SCORED, strict=True):
        steps = int((~np.isnan(row[0])).sum())  # every reference has an MSE
        if steps:
            scores[ref] = {
                m: row[i, :steps].tolist() for i, m in enumerate(METRICS) if not np.isnan(row[i, 0])
            }
    return scores


def step_ranges(steps) -> str:
    """Horizon steps [1, 2, 3, 5] -> '1-3,5'; 'none' when empty."""
    parts, run = [], []
    for step in (int(s) for s in steps):
        if run and step != run[-1] + 1:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(step)
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts) or "none"


def beats_references(per_step: dict[str, dict[str, list[float]]]) -> dict | None:
    """At which steps the model's continuation, and each estimate made from all its samples,
    is below every trivial reference on MSE and above every one on SSIM; None without them."""
    rivals = [ref for ref in TRIVIAL if ref in per_step]
    if "model" not in per_step or not rivals:
        return None
    best_mse = np.min([per_step[ref]["mse"] for ref in rivals], axis=0)
    best_ssim = np.max([per_step[ref]["ssim"] for ref in rivals], axis=0)

    def wins(estimate: str) -> dict:
        mse_wins = np.asarray(per_step[estimate]["mse"]) < best_mse
        ssim_wins = np.asarray(per_step[estimate]["ssim"]) > best_ssim
        both = np.flatnonzero(mse_wins & ssim_wins) + 1
        return {"mse": mse_wins.tolist(), "ssim": ssim_wins.tolist(), "steps": step_ranges(both)}

    verdict = wins("model")
    for estimate in SAMPLE_ESTIMATES:
        if estimate in per_step:
            verdict[estimate] = wins(estimate)
    return verdict


def aggregate(per_clip: list[dict[str, dict[str, list[float]]]]) -> dict:
    """Per-clip scores -> per horizon step and overall means for the model and each reference;
    the samples' diversity; and where the model beats every trivial reference."""
    per_step: dict[str, dict[str, list[float]]] = {}
    for ref in REFERENCES:
        runs = [scores[ref] for scores in per_clip if ref in scores]
        if runs:
            per_step[ref] = {m: np.mean([run[m] for run in runs], axis=0).tolist() for m in METRICS}
    mean = {ref: {m: float(np.mean(values[m])) for m in METRICS} for ref, values in per_step.items()}
    metrics = {"per_step": per_step, "mean": mean, "definition": DEFINITION}
    spread = [scores["diversity"]["mse"] for scores in per_clip if "diversity" in scores]
    if spread:
        by_step = np.mean(spread, axis=0)
        metrics["diversity"] = {"per_step": by_step.tolist(), "mean": float(by_step.mean())}
    verdict = beats_references(per_step)
    if verdict is not None:
        metrics["beats_references"] = verdict
    return metrics


def describe(metrics: dict, samples: int) -> str:
    """Aggregated scores (with the model's) in a sentence: MSE beside the references, SSIM, and
    the steps where sample 0 and each estimate from the `samples` beat every trivial reference."""
    mean = metrics["mean"]
    rivals = ", ".join(f"{ref} {mean[ref]['mse']:.1f}" for ref in TRIVIAL if ref in mean)
    text = (
        f"MSE per frame {mean['model']['mse']:.1f} ({rivals}; "
        f"reconstruction bound {mean['reconstruction']['mse']:.1f}), SSIM {mean['model']['ssim']:.3f}"
    )
    if "beats_references" in metrics:
        beats = metrics["beats_references"]
        named = [("sample 0", beats)]
        named += [
            (f"{e.removeprefix('model_')} of {samples}", beats[e]) for e in SAMPLE_ESTIMATES if e in beats
        ]

        def steps(wins: list[bool]) -> str:
            return step_ranges(np.flatnonzero(wins) + 1)

        text += "; below every trivial reference on MSE / above on SSIM at steps: " + ", ".join(
            f"{label} {steps(wins['mse'])} / {steps(wins['ssim'])}" for label, wins in named
        )
    return text
