"""Scores of generated frames, checked against hand computations."""

import math

import torch

from dynamics.evaluate import copy_last_scores, frame_scores


def test_scores_match_a_hand_made_example():
    truth = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    predicted = truth.clone()
    predicted[0, 0, 0, 0] = 255  # frame 0: one pixel fully wrong
    predicted[1, 0, :2, :2] = 51  # frame 1: four pixels off by 0.2
    scores = frame_scores(predicted, truth)
    # OpenSTL: squared / absolute error summed over C x H x W, on [0, 1] pixels
    assert torch.allclose(scores["mse"], torch.tensor([1.0, 4 * 0.2**2]))
    assert torch.allclose(scores["mae"], torch.tensor([1.0, 4 * 0.2]))
    # PSNR from the per-pixel mean squared error
    expected_psnr = [10 * math.log10(1 / (1.0 / 64)), 10 * math.log10(1 / (4 * 0.04 / 64))]
    assert torch.allclose(scores["psnr"], torch.tensor(expected_psnr), atol=1e-4)
    assert (scores["ssim"] < 1).all()


def test_copy_last_scores_perfectly_on_a_static_video():
    frame = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    truth = frame.expand(5, -1, -1, -1).clone()
    scores = copy_last_scores(frame, truth)
    assert torch.equal(scores["mse"], torch.zeros(5)) and torch.equal(scores["mae"], torch.zeros(5))
    assert torch.allclose(scores["ssim"], torch.ones(5))
    moving = truth.clone()
    moving[2:] = 255 - moving[2:]
    assert (copy_last_scores(frame, moving)["mse"][2:] > 0).all()
