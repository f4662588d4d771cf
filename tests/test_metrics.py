"""Image metrics against their reference definitions."""

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from common.metrics import psnr_per_frame, ssim_per_frame
from pipeline.moving_mnist import load_glyphs, moving_mnist_sequence


def reference_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """OpenSTL's call: scikit-image on [0, 1] frames; ours are uint8 [C, H, W]."""
    return structural_similarity(
        a.transpose(1, 2, 0) / 255.0, b.transpose(1, 2, 0) / 255.0, data_range=1.0, channel_axis=-1
    )


@pytest.mark.parametrize("channels, height, width", [(1, 64, 64), (3, 64, 64), (3, 37, 50), (1, 7, 7)])
def test_ssim_equals_scikit_image_on_random_frames(channels, height, width):
    rng = np.random.default_rng(channels * 1000 + height)
    a = rng.integers(0, 256, size=(6, channels, height, width), dtype=np.uint8)
    # a noisy copy as well as unrelated frames: SSIM near 1 as well as near 0
    noisy = np.clip(a.astype(int) + rng.integers(-20, 21, size=a.shape), 0, 255).astype(np.uint8)
    b = np.concatenate([noisy[:3], rng.integers(0, 256, size=(3, channels, height, width), dtype=np.uint8)])
    ours = ssim_per_frame(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    expected = [reference_ssim(x, y) for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    assert ours[:3].min() > 0.5 > ours[3:].max()


def test_ssim_equals_scikit_image_on_moving_mnist_frames():
    glyphs, labels = load_glyphs(None, 28)
    video, _, _ = moving_mnist_sequence(3, glyphs, labels, num_frames=20)
    frames = torch.from_numpy(video[:, None])
    ours = ssim_per_frame(frames[10:11].expand(3, -1, -1, -1), frames[[11, 15, 19]]).numpy()
    expected = [reference_ssim(video[None, 10], video[None, t]) for t in (11, 15, 19)]
    np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_identical_frames_score_one_and_infinite_quality():
    frames = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    assert torch.allclose(ssim_per_frame(frames, frames), torch.ones(2))
    assert (psnr_per_frame(frames, frames) >= 99).all()
