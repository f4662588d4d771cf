"""Image quality on uint8-range frames: MSE, PSNR and SSIM, per frame."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_unit(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [0, 1]; float input is taken as already in [0, 1]."""
    return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()


def mse_per_frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean squared error in [0, 1] units, one value per frame of [N, C, H, W]."""
    return (to_unit(a) - to_unit(b)).pow(2).flatten(1).mean(1)


def psnr_per_frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(1.0 / mse_per_frame(a, b).clamp(min=1e-10))


def ssim_per_frame(a: torch.Tensor, b: torch.Tensor, window: int = 7) -> torch.Tensor:
    """SSIM as OpenSTL reports it: scikit-image's `structural_similarity` on [0, 1] frames
    (data range 1, a uniform `window` x `window` window, sample covariances, averaged over the
    positions a whole window fits and over channels). One value per frame of [N, C, H, W]."""
    x, y = to_unit(a), to_unit(b)
    channels = x.shape[1]
    kernel = torch.full((channels, 1, window, window), 1.0 / window**2, device=x.device)

    def local_mean(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kernel, groups=channels)  # no padding: scikit-image crops the border

    samples = window**2
    unbiased = samples / (samples - 1)
    mu_x, mu_y = local_mean(x), local_mean(y)
    var_x = unbiased * (local_mean(x * x) - mu_x**2)
    var_y = unbiased * (local_mean(y * y) - mu_y**2)
    cov = unbiased * (local_mean(x * y) - mu_x * mu_y)
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of a code histogram: how many codes are effectively in use."""
    share = counts.float() / counts.sum().clamp(min=1)
    share = share[share > 0]
    return float(torch.exp(-(share * share.log()).sum()))
