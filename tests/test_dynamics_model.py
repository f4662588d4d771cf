"""The Spatial-Temporal Transformer's structure: causality, what mixes where, the
Gaussian layer, and the cached step path."""

import math

import pytest
import torch

from dynamics.model import (
    HEADS,
    CategoricalHead,
    DynamicsLosses,
    GaussianLayer,
    RegressionHead,
    STTransformer,
    TiedHead,
    gaussian_kl,
)
from dynamics.rollout import rollout, rollout_uncached
from dynamics.settings import STTransformerConfig

GRID, CODES = (3, 4), 16


def vq_codebook() -> torch.Tensor:
    """A learned codebook's vectors as a tokenizer checkpoint gives them: l2-normalised."""
    return torch.nn.functional.normalize(torch.randn(CODES, 8), dim=-1)


def model(head="regression", **changes) -> STTransformer:
    torch.manual_seed(0)
    cfg = STTransformerConfig(
        **{"d_model": 32, "n_layers": 2, "n_heads": 4, "head": head, "max_frames": 12, **changes}
    )
    return STTransformer(cfg, vq_codebook(), GRID).eval()


def codes(batch=2, frames=6, seed=0):
    return torch.randint(0, CODES, (batch, frames, *GRID), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("head", ["regression", "categorical", "tied"])
def test_changing_later_frames_never_changes_earlier_outputs(head):
    net = model(head)
    a = codes()
    for t in range(a.shape[1]):
        b = a.clone()
        b[:, t:] = codes(seed=t + 1)[:, t:]
        out_a, _ = net.predict(a, deterministic=True)
        out_b, _ = net.predict(b, deterministic=True)
        # output t predicts frame t from frames < t: it may not see frame t or later
        assert torch.allclose(out_a[:, : t + 1], out_b[:, : t + 1], atol=1e-5), t
        if t + 1 < a.shape[1]:
            assert not torch.allclose(out_a[:, t + 1 :], out_b[:, t + 1 :], atol=1e-5)


def test_spatial_attention_mixes_only_within_a_frame():
    net = model()
    block = net.blocks[0]
    x = torch.randn(2, 5, 12, 32)
    y = x.clone()
    y[:, 2, 7] += 1.0  # one latent pixel of frame 2
    changed = (block.spatial(x) - block.spatial(y)).abs().sum(-1) > 1e-6
    assert changed[:, 2].all()  # every pixel of frame 2 sees it
    assert not changed[:, [0, 1, 3, 4]].any()  # no other frame does


def test_temporal_attention_mixes_only_within_a_latent_pixel_and_only_forward():
    net = model()
    block = net.blocks[0]
    x = torch.randn(2, 5, 12, 32)
    y = x.clone()
    y[:, 2, 7] += 1.0  # latent pixel 7 at frame 2
    changed = (block.temporal(x) - block.temporal(y)).abs().sum(-1) > 1e-6
    assert changed[:, 2:, 7].all()  # the same pixel, from frame 2 on
    assert not changed[:, :2].any()  # causal: never earlier frames
    others = torch.ones(12, dtype=torch.bool)
    others[7] = False
    assert not changed[:, :, others].any()  # never another pixel


@pytest.mark.parametrize("conv", ["full", "separable"])
def test_gaussian_layer_kl_and_sampling(conv):
    assert torch.equal(gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)), torch.zeros(3))
    assert (gaussian_kl(torch.ones(3, 5), torch.zeros(3, 5)) > 0).all()
    layer = GaussianLayer(STTransformerConfig(d_model=8, n_heads=2, gaussian_conv=conv), GRID)
    x = torch.randn(2, 3, 12, 8)
    a, kl_a = layer(x, generator=torch.Generator().manual_seed(1))
    b, _ = layer(x, generator=torch.Generator().manual_seed(2))
    c, _ = layer(x, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, b) and torch.equal(a, c)  # stochastic, and reproducible by seed
    d1, kl_d = layer(x, deterministic=True)
    d2, _ = layer(x, deterministic=True)
    assert torch.equal(d1, d2) and torch.equal(d1, x)  # starts as identity on the mean path
    assert kl_a.shape == (2, 3) and torch.equal(kl_a, kl_d)


@pytest.mark.parametrize("conv", ["full", "separable"])
def test_gaussian_layer_sees_a_latent_pixels_3x3_neighbours_and_no_further(conv):
    layer = GaussianLayer(STTransformerConfig(d_model=8, n_heads=2, gaussian_conv=conv), (5, 5))
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.normal_()
    x = torch.randn(1, 1, 25, 8)
    moved = x.clone()
    moved[0, 0, 12] += 1.0  # the centre pixel of the 5x5 grid
    changed = (layer(moved, deterministic=True)[0] != layer(x, deterministic=True)[0]).any(-1)
    neighbours = torch.zeros(5, 5, dtype=torch.bool)
    neighbours[1:4, 1:4] = True
    assert torch.equal(changed.view(5, 5), neighbours)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
@pytest.mark.parametrize("head", ["regression", "categorical", "tied"])
def test_cached_steps_and_the_prefill_equal_the_full_forward(head, positions):
    net = model(head, temporal_positions=positions)
    clip = codes(batch=3, frames=7)
    full, _ = net.predict(clip, deterministic=True)
    cache = net.new_cache()
    steps = [net.step(None, cache, batch=3, deterministic=True)]
    for t in range(clip.shape[1] - 1):
        steps.append(net.step(clip[:, t], cache, deterministic=True))
    assert torch.allclose(torch.stack(steps, dim=1), full, atol=1e-5)
    assert cache.length == 7
    prefilled = net.new_cache()
    last = net.prefill(clip[:, :-1], prefilled, deterministic=True)
    assert torch.allclose(last, full[:, -1], atol=1e-5) and prefilled.length == 7
    # the prefilled cache goes on as the stepped one does
    after_prefill = net.step(clip[:, -1], prefilled, deterministic=True)
    assert torch.allclose(after_prefill, net.step(clip[:, -1], cache, deterministic=True), atol=1e-5)


@pytest.mark.parametrize("prefill", [1, 5, 20])
def test_rotary_steps_past_the_window_equal_the_windowed_full_forward(prefill):
    """A ring of the last `max_frames` keys and values gives what the full forward gives over a
    clip three times the window, where each frame attends to the last `max_frames` frames."""
    net = model("categorical", max_frames=6)
    clip = codes(batch=2, frames=18)
    full, _ = net.predict(clip, deterministic=True)
    cache = net.new_cache()
    steps = [net.prefill(clip[:, : prefill - 1], cache, deterministic=True)]
    for t in range(prefill - 1, clip.shape[1] - 1):
        steps.append(net.step(clip[:, t], cache, deterministic=True))
    assert torch.allclose(torch.stack(steps, dim=1), full[:, prefill - 1 :], atol=1e-5)
    # the window binds: frame 17 does not see frame 0 (a change there changes nothing), frame 5 does
    changed = clip.clone()
    changed[:, 0] = (clip[:, 0] + 1) % CODES
    other, _ = net.predict(changed, deterministic=True)
    assert torch.allclose(other[:, 17], full[:, 17], atol=1e-6)
    assert not torch.allclose(other[:, 5], full[:, 5], atol=1e-4)


def test_learned_positions_stop_at_the_window_and_rotary_ones_go_on():
    learned = model(temporal_positions="learned", max_frames=6)
    with pytest.raises(ValueError, match="6 temporal positions"):
        learned.predict(codes(frames=7))
    assert "temporal_position" in learned.state_dict()
    rotary = model(max_frames=6)
    assert rotary.predict(codes(frames=7))[0].shape[1] == 7
    assert "temporal_position" not in rotary.state_dict()
    with pytest.raises(ValueError, match="even width per head"):
        STTransformerConfig(d_model=12, n_heads=4)
    STTransformerConfig(d_model=12, n_heads=4, temporal_positions="learned")


def test_padding_masks_the_loss_and_lengths_change_nothing_before_them():
    net = model()
    clip = codes(batch=2, frames=6)
    lengths = torch.tensor([6, 3])
    padded = clip.clone()
    padded[1, 3:] = codes(seed=9)[1, 3:]  # garbage after the real 3 frames
    a = net(clip, lengths, deterministic=True)
    b = net(padded, lengths, deterministic=True)
    assert torch.allclose(a.loss, b.loss, atol=1e-6)
    assert not torch.allclose(net(clip, deterministic=True).loss, net(padded, deterministic=True).loss)


@pytest.mark.parametrize(
    ("head", "kind", "width", "metric", "residual"),
    [
        ("regression", RegressionHead, 8, "mse", True),
        ("categorical", CategoricalHead, CODES, "ce", False),
        ("tied", TiedHead, 8, "ce", True),
    ],
)
def test_each_head_kind_sizes_scores_and_reads_its_output(head, kind, width, metric, residual):
    net = model(head, residual=True)
    assert isinstance(HEADS[head], kind) and isinstance(net.head_kind, kind)
    assert net.head.out_features == width and net.residual == residual
    assert ("logit_scale" in net.state_dict()) == (head == "tied")  # the checkpoint's keys
    clip = codes(batch=2, frames=5)
    out, kl = net.predict(clip, deterministic=True)
    assert out.shape == (2, 5, 12, width) and kl.shape == (2, 5)
    assert net.head_kind.loss_per_frame(net, out, clip.flatten(2)).shape == (2, 5)
    assert net.logits(out).shape[-1] == (width if head == "regression" else CODES)
    assert net.expected_vectors(out[:, 0]).shape == (2, 12, 8)
    for temperature, top_k in ((0.0, None), (1.0, None), (0.7, 3)):
        sampled = net.to_codes(out[:, 0], temperature, top_k, torch.Generator().manual_seed(0))
        assert sampled.shape == (2, *GRID) and sampled.dtype == torch.int64
        assert 0 <= int(sampled.min()) and int(sampled.max()) < CODES
    losses = net(clip, deterministic=True)
    assert isinstance(losses, DynamicsLosses) and losses.metric == metric
    assert list(losses.metrics()) == ["loss", metric, "kl"]
    assert losses.metrics()["loss"] == pytest.approx(float(losses.main + net.config.kl_weight * losses.kl))
    assert not losses.main.requires_grad and not losses.kl.requires_grad


@pytest.mark.parametrize("head", ["regression", "tied"])
def test_an_untrained_residual_model_copies_the_last_frame(head):
    clip = codes(batch=2, frames=5)
    residual, plain = model(head, residual=True), model(head)
    out, _ = residual.predict(clip, deterministic=True)
    copied = torch.stack([residual.to_codes(out[:, t]) for t in range(1, 5)], 1)
    assert torch.equal(copied, clip[:, :-1])  # "nothing moved" until training says otherwise
    out, _ = plain.predict(clip, deterministic=True)
    assert not torch.equal(torch.stack([plain.to_codes(out[:, t]) for t in range(1, 5)], 1), clip[:, :-1])


def test_an_unknown_head_is_refused():
    with pytest.raises((KeyError, ValueError)):
        model("mixture")


def test_sampling_helpers():
    regression, categorical = model("regression"), model("categorical")
    out = regression.codebook[torch.tensor([[3, 5, 7] * 4])] * 2.5  # scaled code vectors
    assert regression.to_codes(out).flatten().tolist() == [3, 5, 7] * 4
    logits = torch.full((1, 12, CODES), -10.0)
    logits[..., 4] = 10.0
    assert (categorical.to_codes(logits) == 4).all()
    assert (categorical.to_codes(logits, temperature=1.0, top_k=1) == 4).all()
    flat = torch.zeros(1, 12, CODES)
    draws = {
        tuple(categorical.to_codes(flat, 1.0, generator=torch.Generator().manual_seed(s)).flatten().tolist())
        for s in range(3)
    }
    assert len(draws) == 3
    # the tied head scores code vectors against the codebook: its argmax is the nearest code
    tied = model("tied")
    assert tied.to_codes(out).flatten().tolist() == [3, 5, 7] * 4
    assert tied.logits(out).shape == (1, 12, CODES)
    assert (tied.logits(out).argmax(-1) == tied.to_codes(out).flatten(1)).all()
    # expected code vectors: the regression output itself; for the tied head, the codebook
    # weighted by probabilities, near the chosen code when sure and in between when not
    assert torch.equal(regression.expected_vectors(out), out)
    with torch.no_grad():
        tied.logit_scale.fill_(6.0)
        sure = tied.expected_vectors(out)
        tied.logit_scale.fill_(-20.0)
        unsure = tied.expected_vectors(out)
    assert torch.allclose(sure, tied.codebook[torch.tensor([[3, 5, 7] * 4])], atol=1e-3)
    assert torch.allclose(unsure, tied.codebook.mean(0).expand_as(unsure), atol=1e-4)


def test_loss_decreases_when_overfitting_a_few_clips():
    for head in ("regression", "categorical", "tied"):
        net = model(head).train()
        clip = codes(batch=4, frames=6)
        optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3)
        first = float(net(clip).loss.detach())
        for _ in range(100):
            loss = net(clip).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert float(net(clip, deterministic=True).loss.detach()) < 0.5 * first, head


def test_free_running_inputs_are_what_generation_feeds_after_the_prompt():
    from dynamics.rollout import rollout
    from dynamics.train import free_running_inputs

    net = model()
    for block in net.blocks:
        block.gaussian.limits = (-40.0, -40.0)  # noise std e^-20: the sampled path is the mean path
    clip = codes(frames=8)
    # as many passes as predicted frames: every replaced input is exactly the free-running one
    inputs = free_running_inputs(net, clip, prompt=3, passes=5)
    assert torch.equal(inputs[:, :3], clip[:, :3])
    assert torch.equal(inputs[:, :7], rollout(net, clip[:, :3], 4, deterministic=True))
    assert torch.equal(inputs[:, 7], clip[:, 7])  # the last frame is never an input: not generated
    # (that many passes take one cached rollout; three passes, redone in full, agree on three frames)
    assert torch.equal(free_running_inputs(net, clip, prompt=3, passes=3)[:, :6], inputs[:, :6])
    # one pass: the first predicted frame is free-running, later ones come from true inputs
    once = free_running_inputs(net, clip, prompt=3, passes=1)
    assert torch.equal(once[:, 3], inputs[:, 3])
    with torch.no_grad():
        teacher = net.to_codes(net.predict(clip, deterministic=True)[0][:, 5])
    assert torch.equal(once[:, 5], teacher)


def test_frames_past_the_longest_length_change_no_loss():
    net = model()
    clip, lengths = codes(frames=8), torch.tensor([5, 6])
    padded = net(clip, lengths, deterministic=True)
    cut = net(clip[:, :6], lengths, deterministic=True)  # what training feeds: up to the longest
    assert torch.allclose(padded.loss, cut.loss, rtol=1e-5) and torch.allclose(
        padded.main, cut.main, rtol=1e-5
    )
    assert not torch.allclose(padded.loss, net(clip, deterministic=True).loss)  # the lengths do matter

    from dynamics.settings import DynamicsSettings
    from dynamics.train import step_batch

    settings = DynamicsSettings(min_frames=2, rollout_passes=20, rollout_prompt=1)
    for step in range(20):
        fed, lengths, inputs = step_batch(settings, net, clip, step, rank=0)
        assert fed.shape[1] == int(lengths.max()) and torch.equal(fed, clip[:, : fed.shape[1]])
        if inputs is not None:  # the last frame fed is only a target: its input stays true
            assert inputs.shape == fed.shape and torch.equal(inputs[:, -1], fed[:, -1])


def test_rollout_prompts_follow_the_settings():
    from dynamics.settings import DynamicsSettings
    from dynamics.train import rollout_prompt

    never = DynamicsSettings(rollout_passes=0)
    assert all(rollout_prompt(never, 20, step, 0) is None for step in range(20))
    always = DynamicsSettings(rollout_passes=2, rollout_prompt=5)
    prompts = [rollout_prompt(always, 20, step, 0) for step in range(200)]
    assert all(5 <= p <= 19 for p in prompts) and len(set(prompts)) > 5
    assert prompts == [rollout_prompt(always, 20, step, 0) for step in range(200)]  # reproducible
    half = DynamicsSettings(rollout_passes=2, rollout_prob=0.5)
    skipped = sum(rollout_prompt(half, 20, step, 0) is None for step in range(400))
    assert 120 < skipped < 280


LEVELS = [4, 3, 5]  # 60 FSQ codes


def fsq_model(**changes) -> STTransformer:
    from tokenizer.model import FiniteScalarQuantizer
    from tokenizer.settings import VQGANConfig

    grid = FiniteScalarQuantizer(
        VQGANConfig(quantizer="fsq", fsq_levels=tuple(LEVELS), code_dim=3, codebook_size=60)
    ).codebook
    torch.manual_seed(0)
    cfg = STTransformerConfig(
        **{"d_model": 32, "n_layers": 2, "n_heads": 4, "head": "factorized", "max_frames": 12, **changes}
    )
    return STTransformer(cfg, grid, GRID, LEVELS).eval(), grid


def test_the_factorized_head_predicts_each_fsq_dimension_over_its_levels():
    net, grid = fsq_model()
    assert net.head.out_features == sum(LEVELS) and torch.equal(net.codebook, grid)  # not normalised
    # a code's digits, and the values of its levels, are the tokenizer's grid
    every = torch.arange(60)
    digits = net.digits(every)
    assert digits.shape == (60, 3) and (digits.max(0).values + 1).tolist() == LEVELS
    assert torch.equal(torch.stack([net.level_values(d)[digits[:, d]] for d in range(3)], -1), grid)
    clip = torch.randint(0, 60, (2, 5, *GRID), generator=torch.Generator().manual_seed(1))
    out, _ = net.predict(clip, deterministic=True)
    assert out.shape == (2, 5, 12, sum(LEVELS))
    # argmax per dimension, read back as a code; the cross-entropy sums the dimensions'
    chosen = net.to_codes(out[:, 0])
    per_dimension = out[:, 0].split(LEVELS, -1)
    expected_digits = torch.stack([logits.argmax(-1) for logits in per_dimension], -1)
    assert torch.equal(net.digits(chosen.flatten(1)), expected_digits)
    targets = clip.flatten(2)
    ce = sum(
        torch.nn.functional.cross_entropy(
            logits.flatten(0, 2), net.digits(targets)[..., d].flatten(), reduction="none"
        )
        for d, logits in enumerate(out.split(LEVELS, -1))
    ).view(targets.shape)
    assert torch.allclose(net.head_kind.loss_per_frame(net, out, targets), ce.mean(-1))
    # drawn codes are codes; the expected vector lies inside the grid's box
    drawn = net.to_codes(out[:, 0], 1.0, None, torch.Generator().manual_seed(0))
    assert drawn.shape == (2, *GRID) and 0 <= int(drawn.min()) and int(drawn.max()) < 60
    expected = net.expected_vectors(out[:, 0])
    assert expected.shape == (2, 12, 3) and expected.abs().max() <= 1
    # sure logits make the expected vector the chosen code's own
    sure = net.expected_vectors(out[:, 0] * 1000)
    assert torch.allclose(sure, grid[net.to_codes(out[:, 0] * 1000).flatten(1)], atol=1e-4)


def test_a_residual_factorized_model_starts_by_copying_each_level_and_learns_how_sure_to_be():
    net, _ = fsq_model(residual=True)
    plain, _ = fsq_model()
    assert "copy_logit" in net.state_dict() and "copy_logit" not in plain.state_dict()
    clip = torch.randint(0, 60, (2, 5, *GRID), generator=torch.Generator().manual_seed(1))
    out, _ = net.predict(clip, deterministic=True)
    copied = torch.stack([net.to_codes(out[:, t]) for t in range(1, 5)], 1)
    assert torch.equal(copied, clip[:, :-1])  # "nothing moved" until training says otherwise
    # the previous level holds e^3 against the others' e^0, in every dimension
    first = out[:, 1].split(LEVELS, -1)[0].softmax(-1)
    previous_level = net.digits(clip[:, 0].flatten(1))[..., 0]
    chance = math.exp(3) / (math.exp(3) + LEVELS[0] - 1)
    assert torch.allclose(first.gather(-1, previous_level[..., None]), torch.tensor(chance), atol=1e-5)
    # the cached steps add the same prior as the full forward
    start = clip[:, :3]
    assert torch.equal(
        rollout(net, start, 4, deterministic=True), rollout_uncached(net, start, 4, deterministic=True)
    )
    net(clip, deterministic=True).loss.backward()
    assert net.copy_logit.grad is not None


def test_a_head_refuses_a_tokenizer_it_cannot_model():
    with pytest.raises(ValueError, match="factorized needs an FSQ tokenizer"):
        model("factorized")
    with pytest.raises(ValueError, match="need head: factorized"):
        fsq_model(head="tied")


def test_a_factorized_model_saves_and_loads_with_its_levels(tmp_path):
    from dynamics.checkpoint import load_dynamics, save_dynamics

    net, grid = fsq_model()
    save_dynamics(net, tmp_path / "dynamics", tokenizer_identity="abc")
    loaded, config = load_dynamics(tmp_path / "dynamics")
    assert config["code_levels"] == LEVELS and torch.equal(loaded.codebook, grid)
    clip = torch.randint(0, 60, (1, 4, *GRID), generator=torch.Generator().manual_seed(2))
    assert torch.equal(loaded.predict(clip, deterministic=True)[0], net.predict(clip, deterministic=True)[0])


def test_a_checkpoint_from_before_rotary_positions_loads_with_its_learned_ones(tmp_path):
    import json

    from dynamics.checkpoint import load_dynamics, save_dynamics

    net = model("categorical", temporal_positions="learned")
    save_dynamics(net, tmp_path / "old", tokenizer_identity="abc")
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    del config["model"]["temporal_positions"]  # as those checkpoints were written
    config_path.write_text(json.dumps(config))
    loaded, _ = load_dynamics(tmp_path / "old")
    assert not loaded.rotary
    clip = codes()
    assert torch.equal(loaded.predict(clip, deterministic=True)[0], net.predict(clip, deterministic=True)[0])
    # a rotary one says so, and comes back rotary
    save_dynamics(model("categorical"), tmp_path / "new", tokenizer_identity="abc")
    assert load_dynamics(tmp_path / "new")[0].rotary
