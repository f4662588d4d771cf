"""Autoregressive rollouts: the cached path against the original's full re-run."""

import pytest
import torch

from dynamics.model import STTransformer
from dynamics.rollout import rollout, rollout_uncached
from dynamics.settings import STTransformerConfig

GRID, CODES = (3, 3), 16


def model(head: str, max_frames: int = 10, residual: bool = False) -> STTransformer:
    torch.manual_seed(0)
    cfg = STTransformerConfig(
        d_model=32, n_layers=2, n_heads=4, head=head, max_frames=max_frames, residual=residual
    )
    return STTransformer(cfg, torch.randn(CODES, 8), GRID).eval()


def prompt(batch=2, frames=4):
    return torch.randint(0, CODES, (batch, frames, *GRID), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("head", ["regression", "categorical", "residual"])
@pytest.mark.parametrize("steps", [1, 5, 14])  # 14: past the 10 positions, the window slides
def test_cached_rollout_equals_the_full_rerun(head, steps):
    net = model("regression", residual=True) if head == "residual" else model(head)
    start = prompt()
    cached = rollout(net, start, steps, deterministic=True)
    full = rollout_uncached(net, start, steps, deterministic=True)
    assert cached.shape == (2, 4 + steps, *GRID)
    assert torch.equal(cached[:, :4], start)
    assert torch.equal(cached, full)


def test_sampling_is_reproducible_by_seed_and_varies_across_seeds():
    net, start = model("categorical"), prompt()

    def sample(seed):
        return rollout(net, start, 6, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(3), sample(3))
    assert not torch.equal(sample(3), sample(4))


def test_a_prompt_longer_than_the_context_is_refused():
    with pytest.raises(ValueError, match="needs 11 positions"):
        rollout(model("regression"), prompt(frames=10), 2)


def test_a_residual_head_adds_the_previous_frames_code_vectors():
    plain, residual = model("regression"), model("regression", residual=True)
    codes = prompt(frames=5)
    with torch.no_grad():
        out_plain, _ = plain.predict(codes, deterministic=True)
        out_residual, _ = residual.predict(codes, deterministic=True)
    # same weights (same seed): only the previous frame's code vectors differ; frame 0 has none
    assert torch.allclose(out_residual[:, 0], out_plain[:, 0])
    previous = residual.codebook[codes[:, :-1].flatten(2)]
    assert torch.allclose(out_residual[:, 1:], out_plain[:, 1:] + previous, atol=1e-6)
