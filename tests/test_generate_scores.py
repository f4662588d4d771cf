"""Scores of generated frames, checked against hand computations."""

import math

import numpy as np
import pytest
import torch

from dynamics.evaluate import (
    METRICS,
    REFERENCES,
    aggregate,
    copy_last_scores,
    describe,
    frame_scores,
    moving_detail,
    moving_region,
    sample_diversity,
    score_continuation,
    score_table,
    step_ranges,
    table_scores,
)
from dynamics.generate import Continuation


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


def test_sample_diversity_is_the_mean_pairwise_distance():
    samples = torch.zeros(3, 2, 1, 4, 4)
    samples[1, :, 0, 0, 0] = 1.0  # sample 1 differs from 0 and 2 by one full pixel
    # pairs (0,1) 1, (0,2) 0, (1,2) 1: mean 2/3 per frame
    assert torch.allclose(sample_diversity(samples), torch.full((2,), 2 / 3))
    assert torch.equal(sample_diversity(samples[:1]), torch.zeros(2))


def test_aggregate_says_where_the_model_beats_every_trivial_reference():
    def scores(mse, ssim):
        return {"mse": mse, "mae": mse, "psnr": [0.0] * len(mse), "ssim": ssim}

    clip = {
        "model": scores([1.0, 5.0, 2.0, 1.0], [0.9, 0.9, 0.9, 0.5]),
        "model_median": scores([1.0, 3.5, 2.0, 1.0], [0.9, 0.9, 0.96, 0.85]),
        "copy_last": scores([2.0, 6.0, 9.0, 9.0], [0.8, 0.8, 0.8, 0.8]),
        "black": scores([3.0, 4.0, 3.0, 3.0], [0.7, 0.7, 0.7, 0.7]),
        "train_mean": scores([3.0, 6.0, 3.0, 3.0], [0.1, 0.1, 0.95, 0.1]),
        "reconstruction": scores([0.1] * 4, [0.99] * 4),
        "diversity": {"mse": [0.5, 1.5, 1.0, 1.0]},
    }
    metrics = aggregate([clip, clip])
    # step 2 loses on MSE to black, step 3 on SSIM to the mean frame, step 4 on SSIM to copy-last
    assert metrics["beats_references"]["mse"] == [True, False, True, True]
    assert metrics["beats_references"]["ssim"] == [True, True, False, False]
    assert metrics["beats_references"]["steps"] == "1"
    # an estimate from the samples is judged the same way, on its own scores
    assert metrics["beats_references"]["model_median"]["steps"] == "1-4"
    assert "model_average" not in metrics["beats_references"]  # no scores, no verdict
    assert metrics["diversity"] == {"per_step": [0.5, 1.5, 1.0, 1.0], "mean": 1.0}
    assert metrics["per_step"]["black"]["mse"] == [3.0, 4.0, 3.0, 3.0]
    assert "model_best" not in metrics["per_step"]  # no clip has it
    words = describe(metrics, samples=8)
    assert words.startswith(
        "MSE per frame 2.2 (copy_last 6.5, black 3.2, train_mean 3.8; reconstruction bound 0.1)"
    )
    assert "sample 0 1,3-4 / 1-2, median of 8 1-4 / 1-4" in words


def test_step_ranges_name_runs_of_steps():
    assert step_ranges([1, 2, 3, 5, 7, 8]) == "1-3,5,7-8"
    assert step_ranges(np.array([4])) == "4"
    assert step_ranges([]) == "none"


def continuation(samples=3, prompt=2, steps=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (samples, prompt + steps, 1, size, size), dtype=torch.uint8, generator=g)
    frames[:, :prompt] = frames[:1, :prompt]  # the samples share their prompt
    truth = torch.randint(0, 256, (prompt + steps, 1, size, size), dtype=torch.uint8, generator=g)
    reconstruction = torch.randint(0, 256, (steps, 1, size, size), dtype=torch.uint8, generator=g)
    return Continuation(torch.zeros(samples, prompt + steps, 2, 2), frames, prompt, reconstruction), truth


def test_a_continuation_is_scored_beside_every_reference():
    run, truth = continuation()
    future, ahead = truth[2:], run.frames[:, 2:]
    mean_frame = torch.full((1, 8, 8), 0.5)
    scores = score_continuation(run, truth, mean_frame)
    # no identity score asked: the truth has its moving-region detail alone
    assert set(scores) == {*REFERENCES, "diversity"} and set(scores["truth"]) == {"detail"}
    assert all(len(values) == 3 for ref in scores for values in scores[ref].values())
    assert all("identity" not in values for values in scores.values())
    region = moving_region(truth[1:])
    assert torch.equal(scores["truth"]["detail"], moving_detail(future, region))
    assert torch.equal(scores["model"]["detail"], moving_detail(ahead[0], region))

    def same(ref, expected):
        return set(scores[ref]) - {"detail"} == set(expected) and all(
            torch.equal(scores[ref][m], expected[m]) for m in expected
        )

    per_sample = [frame_scores(sample, future) for sample in ahead]
    best = int(torch.stack([p["mse"].mean() for p in per_sample]).argmin())
    assert same("model", per_sample[0]) and same("model_best", per_sample[best])
    assert torch.allclose(scores["model_samples"]["mse"], sum(p["mse"] for p in per_sample) / 3)
    assert set(scores["model_samples"]) == set(METRICS) - {"identity"}
    assert same("model_median", frame_scores(ahead.median(0).values, future))
    assert same("model_average", frame_scores(ahead.float().mean(0) / 255, future))
    assert same("copy_last", frame_scores(truth[1:2].expand(3, -1, -1, -1), future))
    # what the model gets by copying the last prompt frame's codes: their decoding, held
    assert same("copy_last_latent", frame_scores(run.frames[0, 1:2].expand(3, -1, -1, -1), future))
    assert same("black", frame_scores(torch.zeros_like(future), future))
    assert same("train_mean", frame_scores(mean_frame.expand(3, -1, -1, -1), future))
    assert same("reconstruction", frame_scores(run.reconstruction, future))
    assert torch.equal(scores["diversity"]["mse"], sample_diversity(ahead))


def test_moving_detail_ranks_a_continuation_that_keeps_its_mover_above_one_that_fades_it():
    """A disc crosses a textured floor. Two continuations move it too slowly: one keeps it sharp,
    the other fades it into the floor, as a latent model that hedges does. MSE prefers the fade;
    the moving region's detail tells them apart, and the sharp one's is near the truth's."""
    rng = np.random.default_rng(0)
    floor = torch.from_numpy(rng.integers(90, 130, (1, 32, 32), dtype=np.uint8))
    ys, xs = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")

    def frames(centres, alpha=1.0):
        out = floor.expand(len(centres), 1, 32, 32).clone().float()
        for t, x in enumerate(centres):
            disc = ((xs - x) ** 2 + (ys - 16) ** 2 < 25)[None]
            out[t][disc] = (1 - alpha) * out[t][disc] + alpha * 250
        return out.round().to(torch.uint8)

    truth = frames([6, 9, 12, 15, 18, 21])  # the last prompt frame, then 5 steps
    sharp = frames([8, 10, 12, 14, 16])  # slower
    faded = frames([8, 10, 12, 14, 16], alpha=0.25)  # slower and faint
    region = moving_region(truth)
    assert 0 < region.float().mean() < 1  # the disc's path, not the floor
    truth_detail, sharp_detail = moving_detail(truth[1:], region), moving_detail(sharp, region)
    faded_detail = moving_detail(faded, region)
    assert (sharp_detail > faded_detail).all()
    assert ((sharp_detail / truth_detail - 1).abs() < 0.2).all()
    assert (faded_detail / truth_detail < 0.8).all()
    assert (frame_scores(faded, truth[1:])["mse"] < frame_scores(sharp, truth[1:])["mse"])[2:].all()


def test_only_steps_with_a_true_frame_are_scored():
    run, truth = continuation(samples=1)
    short = score_continuation(run, truth[:3])  # one true frame after the prompt
    assert "train_mean" not in short and "diversity" not in short  # no mean frame, one sample
    assert all(len(values) == 1 for ref in short for values in short[ref].values())
    assert score_continuation(run, truth[:2]) == {}


@pytest.mark.parametrize("samples", [1, 3])
def test_a_score_table_carries_exactly_the_scores(samples):
    run, truth = continuation(samples=samples)
    scores = score_continuation(run, truth[:4])  # 2 of 3 steps have a true frame
    table = score_table(scores, steps=3)
    assert table.shape == (len(REFERENCES) + 1, len(METRICS), 3) and table.dtype == np.float64
    assert table_scores(table) == {
        ref: {m: v.tolist() for m, v in values.items()} for ref, values in scores.items()
    }
    assert np.isnan(score_table({}, 3)).all() and table_scores(score_table({}, 3)) == {}


def test_preview_grid_adds_the_consensus_column():
    import numpy as np

    from pipeline.preview import continuation_grid

    frames, prompt, size, pad = 4, 2, 8, 2
    generated = [np.zeros((frames, 1, size, size), np.uint8)]
    truth = [np.full((frames, 1, size, size), 200, np.uint8)]
    consensus = [np.full((frames, 1, size, size), 100, np.uint8)]
    three = continuation_grid(generated, truth, prompt)
    four = continuation_grid(generated, truth, prompt, consensus)
    assert four.shape[:2] == three.shape[:2] and four.shape[2] == three.shape[2] + size + pad
    left = pad + 2 * (size + pad)  # the third cell: prompt, then the consensus frames
    assert tuple(four[0, pad + 4, left + 4]) == (0, 0, 0)  # a prompt frame
    assert tuple(four[-1, pad + 4, left + 4]) == (100, 100, 100)  # a generated step
    assert tuple(four[-1, pad + 4, left + size + pad + 4]) == (200, 200, 200)  # truth comes last


def test_markdown_tables_show_every_scored_row_and_step():
    from dynamics.evaluate import markdown_tables

    run, truth = continuation()
    metrics = aggregate([table_scores(score_table(score_continuation(run, truth), 3))])
    text = markdown_tables(metrics, samples=3)
    mse, ssim, detail = text.strip().split("\n\n")  # no identity scored: three tables
    assert mse.startswith("| MSE | 1 | 2 | 3 | mean |") and ssim.startswith("| SSIM | 1 | 2 | 3 | mean |")
    assert (
        detail.startswith("| moving-region detail |")
        and "| original frames (ceiling; for detail, the target) |" in detail
    )
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:] for line in mse.splitlines()[2:]}
    assert "median of 3 samples" in rows and "training-set mean frame" not in rows  # no mean frame given
    assert rows["copy-last"][0] == f"{metrics['per_step']['copy_last']['mse'][0]:.1f}"
    assert (
        rows["likeliest continuation (sample 0)"][-1].rstrip(" |") == f"{metrics['mean']['model']['mse']:.1f}"
    )


def test_the_report_says_what_made_it_and_its_units_and_repeats_no_row_for_one_sample():
    from dynamics.evaluate import markdown_tables
    from dynamics.report import STYLE, comparison_figures, report_html

    run, truth = continuation()
    metrics = aggregate([table_scores(score_table(score_continuation(run, truth), 3))])
    for ref in ("model", "model_median", "truth"):  # a share of digits named right, as Moving MNIST has
        metrics["per_step"][ref]["identity"] = [0.5, 0.75, 1.0]
        metrics["mean"][ref]["identity"] = 0.75
    # one sample: its median, average, mean and best are itself, in no table and no figure
    one = markdown_tables(metrics, samples=1)
    assert "likeliest continuation (sample 0)" in one and "of 1 sample" not in one and "mean over" not in one
    labels = [line.get_label() for line in comparison_figures(metrics, 1)["mse_by_step.png"].axes[0].lines]
    assert labels[0] == "likeliest continuation (sample 0)" and not any("of 1 sample" in x for x in labels)
    # a share is drawn in % as its table prints it; titles on two lines, whole; bound and ceiling apart
    identity = comparison_figures(metrics, 3)["identity_by_step.png"].axes[0]
    assert identity.get_ylabel() == "digits named right (%)"
    assert max(max(line.get_ydata()) for line in identity.lines) == 100
    assert identity.get_title() == "digits named right per generated frame\n(higher is better)"
    assert "| 75% |" in markdown_tables(metrics, samples=3)
    assert STYLE["reconstruction"] != STYLE["truth"]
    metrics.update(clips=1, prompt_frames=2, generate_frames=3)
    made_by = {"MLflow run": "0123abcd", "config": "tiny; generate's fingerprint 5e5e5e5e5e5e"}
    page = report_html(metrics, 1, b"GIF89a", "tiny: generations/default", {"": {}}, made_by)
    assert "<th>MLflow run</th><td>0123abcd</td>" in page and "5e5e5e5e5e5e" in page
    assert "summed over its" in page and "<li>ssim: scikit-image" in page


def test_the_preview_takes_its_clips_from_as_many_videos_as_it_shows():
    from pipeline.prompts import spread_over_videos

    # a split by time: runs of one video's clips, the longest first
    items = [{"clip": i, "name": f"{i:06d}", "key": "vtest"} for i in range(10)]
    items += [{"clip": 10 + i, "name": f"{10 + i:06d}", "key": key} for i, key in enumerate("aab")]
    assert spread_over_videos(items, 4) == [0, 10, 12, 1]  # vtest, a, b, then each one's second
    assert spread_over_videos(items, 1) == [0]
    brought = [{"clip": i, "name": f"video-{i}"} for i in range(3)]  # a brought video is its own
    assert spread_over_videos(brought, 6) == [0, 1, 2]
