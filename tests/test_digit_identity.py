"""The digit-identity score on real Moving MNIST frames: high on the originals, low where the
digits are gone, moved or blurred; and how a continuation's references are scored with it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common.digit_identity import DigitIdentity, DigitTrack
from dynamics.evaluate import aggregate, prompt_identity, score_continuation, score_table, table_scores
from dynamics.generate import Continuation
from pipeline.moving_mnist import load_glyphs, moving_mnist_sequence


@pytest.fixture(scope="module")
def identity():
    return DigitIdentity(*load_glyphs(None, 28))


def clip(index: int):
    video, labels, corners = moving_mnist_sequence(index, *load_glyphs(None, 28), seed=5)
    return torch.from_numpy(video[:, None]), [DigitTrack(a, c) for a, c in zip(labels, corners, strict=True)]


def blurred(frames: torch.Tensor) -> torch.Tensor:
    low = F.avg_pool2d(frames.float(), 4)
    return F.interpolate(low, scale_factor=4, mode="bilinear").round().clamp(0, 255).to(torch.uint8)


def test_original_digits_are_named_and_lost_ones_are_not(identity):
    scores = {"original": [], "black": [], "held": [], "blurred": []}
    for index in range(40):
        frames, tracks = clip(index)
        scores["original"].append(identity.score(frames, tracks).mean())
        scores["black"].append(identity.score(torch.zeros_like(frames), tracks).mean())
        scores["held"].append(identity.score(frames[:1].expand_as(frames), tracks)[10:].mean())
        scores["blurred"].append(identity.score(blurred(frames), tracks).mean())
    mean = {name: float(np.mean(values)) for name, values in scores.items()}
    assert mean["original"] > 0.85  # digits that cross each other are the misses
    assert mean["black"] < 0.25  # a blank frame is one class for every digit
    assert mean["held"] < mean["original"] - 0.3  # the digits have moved away from where they were
    assert mean["blurred"] < mean["original"] - 0.1


def test_a_continuation_and_the_truth_get_their_identity_per_step(identity):
    frames, tracks = clip(3)
    prompt, steps = 10, 10

    def identify(part: torch.Tensor, first: int) -> torch.Tensor:
        return identity.score(
            part, [DigitTrack(t.label, t.corners[first : first + len(part)]) for t in tracks]
        )

    # two samples: the true future, and the last prompt frame held
    samples = torch.stack(
        [frames, torch.cat([frames[:prompt], frames[prompt - 1 : prompt].expand(steps, -1, -1, -1)])]
    )
    run = Continuation(torch.zeros(2, prompt + steps, 8, 8), samples, prompt, blurred(frames[prompt:]))
    scores = score_continuation(run, frames, torch.zeros(1, 64, 64), identify)
    truth_identity = identity.score(
        frames[prompt:], [DigitTrack(t.label, t.corners[prompt:]) for t in tracks]
    )
    assert set(scores["truth"]) == {"identity", "detail"}  # the truth's digits, and its moving detail
    assert torch.equal(scores["truth"]["identity"], truth_identity)
    assert torch.equal(scores["model"]["identity"], truth_identity)  # sample 0 is the truth
    assert torch.equal(
        scores["copy_last"]["identity"], scores["model_samples"]["identity"] * 2 - truth_identity
    )
    assert float(scores["black"]["identity"].mean()) < float(truth_identity.mean())
    assert torch.equal(scores["reconstruction"]["identity"], identify(blurred(frames[prompt:]), prompt))

    per_clip = table_scores(score_table(scores, steps))
    assert per_clip["truth"]["identity"] == truth_identity.tolist()
    metrics = aggregate([per_clip, per_clip])
    assert metrics["per_step"]["truth"]["identity"] == pytest.approx(truth_identity.tolist())
    assert metrics["mean"]["model"]["identity"] == pytest.approx(float(truth_identity.mean()))
    # a clip without digit tracks leaves identity out of the aggregate rather than biasing it
    plain = table_scores(score_table(score_continuation(run, frames), steps))
    assert "identity" not in aggregate([per_clip, plain])["per_step"]["model"]

    prompt_scores = prompt_identity(run, frames, identify)
    assert prompt_scores["reconstructed"] == prompt_scores["original"]  # the prompt frames are the originals
    assert prompt_scores["original"] == pytest.approx(float(identify(frames[:prompt], 0).mean()))
