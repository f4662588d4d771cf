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

from collections.abc import Callable

import numpy as np
import torch

from common.metrics import psnr_per_frame, ssim_per_frame, to_unit
from dynamics.generate import Continuation

METRICS = ("mse", "mae", "psnr", "ssim", "identity", "detail")
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
    "truth",  # the true frames themselves: their digit identity (that score's ceiling) and detail
)
# the trivial references a model has to beat; the reconstruction is a bound, not a rival. Copy-last
# in latents is what a latent model gets by copying the last prompt frame's codes; the gap from
# copy-last in pixels is the tokenizer's share of the error
TRIVIAL = ("copy_last", "copy_last_latent", "black", "train_mean")
# point estimates made from all S samples of a prompt: their pixel average (MSE-optimal, blurs
# where they disagree) and their per-pixel median (MAE-optimal, stays sharp)
SAMPLE_ESTIMATES = ("model_average", "model_median")
# with one sample, these are that sample's scores again: no table or figure repeats them
ONE_SAMPLE_REPEATS = ("model_median", "model_average", "model_samples", "model_best")
# the rows of a score table: every reference, then the samples' diversity (MSE only)
SCORED = (*REFERENCES, "diversity")
DEFINITION = (
    "mse/mae: sum over CxHxW of [0,1] pixels, mean over frames; "
    "ssim: scikit-image's structural_similarity on [0,1] frames (7x7 uniform window); "
    "identity: share of the digits a classifier trained on the glyphs names right in a crop at "
    "each digit's true position (Moving MNIST only; truth: the original frames, its ceiling); "
    "diversity: mean pairwise MSE between the samples of one prompt; "
    "detail: mean grey gradient magnitude (|dx| + |dy| of [0,1] pixels, x100) inside the region where "
    "the true frames change during the continuation (truth: the true frames' own, what a continuation "
    "that keeps its moving objects sharp matches and one that fades them falls below)"
)
# a pixel is in the moving region where the truth's grey level moves this far (of 1) from the last
# prompt frame at some generated step: well above codec noise, below a walker's contrast
MOVING_CHANGE = 0.06
# an identity score: frames uint8 [T, C, H, W] of consecutive steps and the first step's index in the
# clip -> the share of digits named right in each frame [T]
Identify = Callable[[torch.Tensor, int], torch.Tensor]


def frame_scores(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Frames [T, C, H, W] (uint8 or [0, 1]) -> each metric per frame, [T]."""
    difference = to_unit(predicted) - to_unit(truth)
    return {
        "mse": difference.pow(2).flatten(1).sum(1),
        "mae": difference.abs().flatten(1).sum(1),
        "psnr": psnr_per_frame(predicted, truth),
        "ssim": ssim_per_frame(predicted, truth),
    }


def moving_region(frames: torch.Tensor) -> torch.Tensor:
    """Where the truth moves: a bool mask [H, W] of the pixels whose grey level changes by more
    than MOVING_CHANGE from the first of `frames` [T, C, H, W] (the last prompt frame) at any
    later one, grown by a pixel so a moving object's edges are in it; the whole frame when
    nothing moves."""
    grey = to_unit(frames).mean(1)
    moved = (grey[1:] - grey[:1]).abs().amax(0) > MOVING_CHANGE
    grown = torch.nn.functional.max_pool2d(moved[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0
    return grown if grown.any() else torch.ones_like(grown)


def moving_detail(frames: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Frames [T, C, H, W] -> the mean grey gradient magnitude inside `region` per frame [T], x100.
    A moving object kept sharp has the truth's edges; one faded into the background or blurred
    away has fewer. It says nothing of where the object is: MSE does."""
    grey = to_unit(frames).mean(1)
    dx = torch.nn.functional.pad((grey[:, :, 1:] - grey[:, :, :-1]).abs(), (0, 1))
    dy = torch.nn.functional.pad((grey[:, 1:] - grey[:, :-1]).abs(), (0, 0, 0, 1))
    return 100 * ((dx + dy) * region).flatten(1).sum(1) / region.sum()


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
    run: Continuation,
    truth: torch.Tensor,
    mean_frame: torch.Tensor | None = None,
    identify: Identify | None = None,
) -> dict[str, dict[str, torch.Tensor]]:
    """A continuation and the references, scored against the clip's true frames [T, C, H, W]
    over the generated steps that have a true frame: reference -> metric -> [steps]. Empty when
    no step has one; `train_mean` only with a `mean_frame` [C, H, W] in [0, 1], `diversity`
    (MSE only) only with several samples, `reconstruction` only when the run has one; the digit
    `identity` of every reference and of the `truth` only with `identify`; the moving-region `detail`
    of every reference and of the `truth` always."""
    start = run.prompt_frames
    horizon = min(run.steps, len(truth) - start)
    if horizon <= 0:
        return {}
    future, ahead = truth[start : start + horizon], run.frames[:, start : start + horizon]
    per_sample = [frame_scores(sample, future) for sample in ahead]
    best = min(range(len(per_sample)), key=lambda i: float(per_sample[i]["mse"].mean()))
    estimates = {
        "model": ahead[0],
        "model_best": ahead[best],
        "model_average": run.average[start : start + horizon],
        "model_median": run.median[start : start + horizon],
        "copy_last": truth[start - 1 : start].expand_as(future),
        "copy_last_latent": run.frames[0, start - 1 : start].expand_as(future),
        "black": torch.zeros_like(future),
    }
    if mean_frame is not None:
        estimates["train_mean"] = mean_frame.expand(future.shape)
    if run.reconstruction is not None:
        estimates["reconstruction"] = run.reconstruction[:horizon]
    scores = {ref: frame_scores(frames, future) for ref, frames in estimates.items()}
    scores["model_samples"] = {m: torch.stack([p[m] for p in per_sample]).mean(0) for m in per_sample[0]}
    region = moving_region(truth[start - 1 : start + horizon])
    for ref, frames in estimates.items():
        scores[ref]["detail"] = moving_detail(frames, region)
    scores["model_samples"]["detail"] = torch.stack([moving_detail(s, region) for s in ahead]).mean(0)
    scores["truth"] = {"detail": moving_detail(future, region)}
    if len(ahead) > 1:
        scores["diversity"] = {"mse": sample_diversity(ahead)}
    if identify is not None:
        for ref, frames in estimates.items():
            scores[ref]["identity"] = identify(as_uint8(frames), start)
        scores["model_samples"]["identity"] = torch.stack([identify(s, start) for s in ahead]).mean(0)
        scores["truth"]["identity"] = identify(future, start)
    return scores


def as_uint8(frames: torch.Tensor) -> torch.Tensor:
    """Frames uint8, or float in [0, 1] -> uint8."""
    if frames.dtype == torch.uint8:
        return frames
    return (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)


def prompt_identity(run: Continuation, truth: torch.Tensor, identify: Identify) -> dict[str, float]:
    """The digit identity of the prompt as the tokenizer reconstructs it (the frames the preview
    holds) and of the original prompt frames, averaged over the prompt."""
    prompt = run.prompt_frames
    return {
        "reconstructed": float(identify(run.frames[0, :prompt], 0).mean()),
        "original": float(identify(truth[:prompt], 0).mean()),
    }


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
        steps = int((~np.isnan(row)).any(0).sum())  # a reference may lack a metric, never a step
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
        if runs:  # a metric every clip has (identity: Moving MNIST only)
            scored = [m for m in METRICS if all(m in run for run in runs)]
            per_step[ref] = {m: np.mean([run[m] for run in runs], axis=0).tolist() for m in scored}
    mean = {ref: {m: float(np.mean(v)) for m, v in values.items()} for ref, values in per_step.items()}
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
    if "identity" in mean["model"] and "truth" in mean:
        named = [(label, ref) for label, ref in IDENTITY_NAMES if "identity" in mean.get(ref, {})]
        text += "; digits named right: " + ", ".join(
            f"{label} {mean[ref]['identity']:.0%}" for label, ref in named
        )
    if "detail" in mean["model"] and "detail" in mean.get("truth", {}):
        ratio = np.asarray(metrics["per_step"]["model"]["detail"]) / np.asarray(
            metrics["per_step"]["truth"]["detail"]
        )
        text += (
            f"; moving-region detail of sample 0 / the truth's {ratio.min():.2f}-{ratio.max():.2f} by step"
        )
    if "prompt_identity" in metrics:
        prompt = metrics["prompt_identity"]
        text += f" (prompt: reconstructed {prompt['reconstructed']:.0%}, original {prompt['original']:.0%})"
    return text


# how `describe` names the identity scores it quotes
IDENTITY_NAMES = (
    ("sample 0", "model"),
    ("median", "model_median"),
    ("copy-last", "copy_last"),
    ("reconstruction", "reconstruction"),
    ("originals", "truth"),
)


# the rows of the README's tables, in its order and words
TABLE_ROWS = (
    ("model", "likeliest continuation (sample 0)"),
    ("model_median", "median of {samples} samples"),
    ("model_average", "average of {samples} samples"),
    ("model_samples", "mean over samples"),
    ("model_best", "best of {samples} (oracle)"),
    ("copy_last", "copy-last"),
    ("copy_last_latent", "copy-last in latents (its reconstruction, held)"),
    ("black", "all-black"),
    ("train_mean", "training-set mean frame"),
    ("reconstruction", "tokenizer reconstruction (bound)"),
    ("truth", "original frames (ceiling; for detail, the target)"),
)
TABLE_METRICS = {
    "mse": ("MSE", "{:.1f}"),
    "ssim": ("SSIM", "{:.3f}"),
    "identity": ("digits named right", "{:.0%}"),
    "detail": ("moving-region detail", "{:.2f}"),
}


def markdown_tables(metrics: dict, samples: int) -> str:
    """`metrics.json`'s per-step scores as markdown tables, one per metric (MSE, SSIM, and digit
    identity where scored): the README's tables, made from a run rather than typed."""
    per_step, mean = metrics["per_step"], metrics["mean"]
    steps = len(per_step["model"]["mse"])
    tables = []
    for metric, (title, number) in TABLE_METRICS.items():
        rows = [(ref, label) for ref, label in TABLE_ROWS if metric in per_step.get(ref, {})]
        if samples == 1:
            rows = [(ref, label) for ref, label in rows if ref not in ONE_SAMPLE_REPEATS]
        if not rows or metric not in per_step["model"]:
            continue
        lines = [
            "| " + " | ".join([title, *map(str, range(1, steps + 1)), "mean"]) + " |",
            "| " + " | ".join(["---"] * (steps + 2)) + " |",
        ]
        for ref, label in rows:
            values = [number.format(v) for v in per_step[ref][metric]] + [number.format(mean[ref][metric])]
            lines.append("| " + " | ".join([label.format(samples=samples), *values]) + " |")
        tables.append("\n".join(lines))
    return "\n\n".join(tables) + "\n"
