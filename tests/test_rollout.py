"""Autoregressive rollouts: the cached path against the original's full re-run."""

from dataclasses import replace

import pytest
import torch

from dynamics.generate import GenerationSettings, continue_clip
from dynamics.model import STTransformer
from dynamics.rollout import rollout, rollout_uncached
from dynamics.settings import STTransformerConfig

GRID, CODES = (3, 3), 16


def vq_codebook() -> torch.Tensor:
    """A learned codebook's vectors as a tokenizer checkpoint gives them: l2-normalised."""
    return torch.nn.functional.normalize(torch.randn(CODES, 8), dim=-1)


def model(head: str, max_frames: int = 10, residual: bool = False, positions="rotary") -> STTransformer:
    torch.manual_seed(0)
    cfg = STTransformerConfig(
        d_model=32,
        n_layers=2,
        n_heads=4,
        head=head,
        max_frames=max_frames,
        residual=residual,
        temporal_positions=positions,
    )
    return STTransformer(cfg, vq_codebook(), GRID).eval()


def prompt(batch=2, frames=4):
    return torch.randint(0, CODES, (batch, frames, *GRID), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("head", ["regression", "categorical", "tied", "residual"])
@pytest.mark.parametrize("steps", [1, 5, 14, 40])  # past the 10 positions, the window slides
def test_cached_rollout_equals_the_full_rerun(head, steps):
    """Rotary: the ring against re-running the whole history (same window); learned positions:
    the rebuilt cache against the original's re-run of the last frames."""
    for positions in ("rotary", "learned"):
        net = (
            model("regression", residual=True, positions=positions)
            if head == "residual"
            else model(head, positions=positions)
        )
        start = prompt()
        cached = rollout(net, start, steps, deterministic=True)
        full = rollout_uncached(net, start, steps, deterministic=True, whole_history=positions == "rotary")
        assert cached.shape == (2, 4 + steps, *GRID)
        assert torch.equal(cached[:, :4], start)
        assert torch.equal(cached, full), positions


def test_a_rotary_rollout_runs_any_length_and_forgets_what_left_the_window():
    net = model("categorical")
    start = prompt()
    long = rollout(net, start, 100, deterministic=True)
    assert long.shape == (2, 104, *GRID)
    # a prompt frame long out of the window changes nothing of the last frames
    changed = start.clone()
    changed[:, 0] = (start[:, 0] + 1) % CODES
    assert torch.equal(rollout(net, changed, 100, deterministic=True)[:, -20:], long[:, -20:])
    with pytest.raises(ValueError, match="whole_history needs rotary"):
        rollout_uncached(model("categorical", positions="learned"), start, 2, whole_history=True)


@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_samples_of_a_prompt_share_its_cache_and_go_their_own_ways(positions):
    net, start = model("categorical", positions=positions), prompt(batch=2)
    # deterministic and greedy: each clip's samples are the clip's one continuation, in clip order
    shared = rollout(net, start, 12, deterministic=True, samples=3)
    alone = rollout(net, start, 12, deterministic=True)
    assert torch.equal(shared, alone.repeat_interleave(3, dim=0))
    # drawn: the samples of a clip start from the same prompt and differ after it
    drawn = rollout(net, start, 12, temperature=1.0, generator=torch.Generator().manual_seed(0), samples=3)
    assert drawn.shape == (6, 16, *GRID) and torch.equal(drawn[:, :4], start.repeat_interleave(3, dim=0))
    assert not torch.equal(drawn[0, 4:], drawn[1, 4:])


def test_sampling_is_reproducible_by_seed_and_varies_across_seeds():
    net, start = model("categorical"), prompt()

    def sample(seed):
        return rollout(net, start, 6, temperature=1.0, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(sample(3), sample(3))
    assert not torch.equal(sample(3), sample(4))


def test_a_prompt_longer_than_learned_positions_is_refused_and_rotary_takes_it():
    with pytest.raises(ValueError, match="needs 11 positions"):
        rollout(model("regression", positions="learned"), prompt(frames=10), 2)
    net = model("regression")
    long_prompt = prompt(frames=25)
    assert torch.equal(
        rollout(net, long_prompt, 3, deterministic=True),
        rollout_uncached(net, long_prompt, 3, deterministic=True, whole_history=True),
    )


def test_a_residual_head_adds_the_previous_frames_code_vectors():
    plain, residual = model("regression"), model("regression", residual=True)
    residual.load_state_dict(plain.state_dict())  # a residual head starts at zero: give it the same weights
    codes = prompt(frames=5)
    with torch.no_grad():
        out_plain, _ = plain.predict(codes, deterministic=True)
        out_residual, _ = residual.predict(codes, deterministic=True)
    # same weights: only the previous frame's code vectors differ; frame 0 has none
    assert torch.allclose(out_residual[:, 0], out_plain[:, 0])
    previous = residual.codebook[codes[:, :-1].flatten(2)]
    assert torch.allclose(out_residual[:, 1:], out_plain[:, 1:] + previous, atol=1e-6)


class PixelTokenizer:
    """A stand-in decoder: each code becomes its latent pixel's grey level (frames [B, 1, h, w])."""

    def __init__(self):
        self.decoded = 0  # frames decoded so far

    def decode(self, codes):
        self.decoded += len(codes)
        return (codes * 16).to(torch.uint8)[:, None]

    def decode_vectors(self, vectors):
        self.decoded += len(vectors)
        return (vectors.mean(-1) * 100).clamp(0, 255).to(torch.uint8)[:, None]


def test_a_clip_continues_with_the_likeliest_sample_first_and_seeded_by_the_clip():
    net, clip = model("categorical"), prompt(batch=1, frames=6)[0]
    settings = GenerationSettings(prompt_frames=4, generate_frames=3, samples=3, temperature=1.0, seed=2)
    tokenizer = PixelTokenizer()
    run = continue_clip(net, tokenizer, clip, 7, settings)
    assert run.codes.shape == (3, 7, *GRID) and run.frames.shape == (3, 7, 1, *GRID)
    # sample 0 at temperature 0, then the drawn ones; each group has a generator seeded by the clip
    likeliest = torch.Generator().manual_seed(2 * 1_000_003 + 7 * 101 + 0)
    assert torch.equal(run.codes[:1], rollout(net, clip[None, :4], 3, generator=likeliest))
    drawn = torch.Generator().manual_seed(2 * 1_000_003 + 7 * 101 + 1)
    expected = rollout(net, clip[None, :4], 3, temperature=1.0, generator=drawn, samples=2)
    assert torch.equal(run.codes[1:], expected)
    assert torch.equal(run.frames, tokenizer.decode(run.codes.flatten(0, 1)).unflatten(0, (3, 7)))
    # the shared prompt decoded once, each generated frame once, and the true future (2 frames)
    assert tokenizer.decoded == 4 + 3 * 3 + 2 + 3 * 7
    assert torch.equal(run.reconstruction, tokenizer.decode(clip[4:]))
    assert torch.equal(run.median, run.frames.median(0).values)
    # a clip's samples depend on its id and the seed, not on the other clips
    assert torch.equal(continue_clip(net, tokenizer, clip, 7, settings).codes, run.codes)
    assert not torch.equal(continue_clip(net, tokenizer, clip, 8, settings).codes[1:], run.codes[1:])
    # another protocol: fewer prompt frames, no true future past the clip
    other = continue_clip(net, tokenizer, clip, 7, settings, prompt_frames=2, steps=5)
    assert other.codes.shape == (3, 7, *GRID) and other.steps == 5 and len(other.reconstruction) == 4


def test_expected_decoding_draws_the_generated_frames_from_the_expected_vectors():
    net, clip = model("categorical"), prompt(batch=1, frames=6)[0]
    settings = GenerationSettings(
        prompt_frames=4, generate_frames=2, samples=2, deterministic=True, decode="expected"
    )
    run = continue_clip(net, PixelTokenizer(), clip, 0, settings)
    vectors: list = []
    rollout(net, clip[None, :4], 2, deterministic=True, vectors=vectors)
    expected = PixelTokenizer().decode_vectors(torch.stack(vectors, 1)[0].unflatten(1, GRID))
    assert torch.equal(run.frames[0, 4:], expected)
    assert torch.equal(run.frames[:, :4], PixelTokenizer().decode(clip[:4]).expand(2, -1, -1, -1, -1))


def test_anchoring_draws_only_the_predicted_change_on_the_true_last_prompt_frame():
    net, clip = model("categorical"), prompt(batch=1, frames=6)[0]
    settings = GenerationSettings(prompt_frames=4, generate_frames=2, samples=2, temperature=1.0, anchor=True)
    truth = torch.randint(0, 256, (6, 1, *GRID), dtype=torch.uint8)
    run = continue_clip(net, PixelTokenizer(), clip, 0, settings, truth=truth)
    plain = continue_clip(net, PixelTokenizer(), clip, 0, replace(settings, anchor=False))
    assert torch.equal(run.codes, plain.codes)  # the same rollouts, drawn differently
    change = plain.frames[:, 4:].short() - plain.frames[:, 3:4].short()
    assert torch.equal(run.frames[:, 4:], (truth[3].short() + change).clamp(0, 255).to(torch.uint8))
    # where a sample's codes did not move, it shows the true pixels, not their reconstruction
    still = run.codes[:, 4:] == run.codes[:, 3:4]
    assert still.any() and torch.equal(run.frames[:, 4:, 0][still], truth[3, 0].expand(2, 2, *GRID)[still])
    assert torch.equal(run.frames[:, :4], plain.frames[:, :4])  # the prompt as the tokenizer holds it
    with pytest.raises(ValueError, match="anchor"):
        continue_clip(net, PixelTokenizer(), clip, 0, settings)
    # a threshold drops changes smaller than the tokenizer's flicker (here: one code, 16 levels)
    # and shrinks the larger ones by as much (one channel here: sign(change) * (|change| - 17))
    quiet = continue_clip(net, PixelTokenizer(), clip, 0, replace(settings, anchor_threshold=17), truth=truth)
    small = change.abs() < 17
    assert (small & (change != 0)).any() and (~small).any()
    shrunk = change.sign() * (change.abs() - 17).clamp(min=0)
    expected = (truth[3].short() + shrunk).clamp(0, 255).to(torch.uint8)
    assert torch.equal(quiet.frames[:, 4:], expected)


@pytest.mark.parametrize("head", ["categorical", "residual"])
def test_patches_of_latent_pixels_as_tokens_keep_every_code_and_the_cache_exact(head):
    """patch 2: a 2x2 square of codes is one token (4x fewer for attention), and the head still
    names every latent pixel's code; the cached rollout equals the re-run, as with patch 1."""
    torch.manual_seed(0)
    cfg = STTransformerConfig(
        d_model=32,
        n_layers=2,
        n_heads=4,
        head="regression" if head == "residual" else head,
        patch=2,
        residual=head == "residual",
        max_frames=10,
    )
    net = STTransformer(cfg, vq_codebook(), (4, 6)).eval()
    assert net.token_grid == (2, 3) and net.spatial_position.shape == (6, 32)
    start = torch.randint(0, CODES, (2, 4, 4, 6), generator=torch.Generator().manual_seed(1))
    out, _ = net.predict(start, deterministic=True)
    assert out.shape[:3] == (2, 4, 24)  # one prediction per latent pixel
    # a change to one code moves the predictions of the next frame, not of its own or earlier ones
    changed = start.clone()
    changed[:, 1, 3, 5] = (changed[:, 1, 3, 5] + 1) % CODES
    moved, _ = net.predict(changed, deterministic=True)
    assert torch.equal(moved[:, :2], out[:, :2]) and not torch.equal(moved[:, 2], out[:, 2])
    cached = rollout(net, start, 12, deterministic=True)
    assert torch.equal(cached, rollout_uncached(net, start, 12, deterministic=True, whole_history=True))
    with pytest.raises(
        ValueError, match="model.patch: given 4, expected a divisor of the latent grid \\(4, 6\\)"
    ):
        STTransformer(STTransformerConfig(d_model=32, n_heads=4, patch=4), vq_codebook(), (4, 6))
