"""Scores of predicted frames against the truth, per horizon step, OpenSTL-style.

MSE and MAE are summed over C x H x W on [0, 1] pixels and averaged over frames
(OpenSTL's definition, so Moving MNIST figures compare with its table); PSNR and
SSIM are per frame.
"""

from __future__ import annotations

import torch

from common.metrics import psnr_per_frame, ssim_per_frame


def _unit(frames: torch.Tensor) -> torch.Tensor:
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()


def frame_scores(predicted: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Frames [T, C, H, W] (uint8 or [0, 1]) -> each metric per frame, [T]."""
    difference = _unit(predicted) - _unit(truth)
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
    unit = _unit(samples)
    pairs = [(i, j) for i in range(count) for j in range(i + 1, count)]
    return torch.stack([(unit[i] - unit[j]).pow(2).flatten(1).sum(1) for i, j in pairs]).mean(0)
