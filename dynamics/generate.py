"""Continuing a clip: S rollouts from its first P codes, decoded into frames.

Plain torch, no Ray: the generate stage calls `continue_clip` once per clip (and
once more per further protocol), and so can a notebook. Sample 0 is the likeliest
continuation (temperature 0) when `greedy_first`; the others are drawn. Each group
gets its own generator, seeded by the clip, so a clip's samples never depend on how
clips are batched or spread over actors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch

from dynamics.model import STTransformer
from dynamics.rollout import rollout


@dataclass(frozen=True)
class GenerationSettings:
    prompt_frames: int = 10  # P
    generate_frames: int = 10  # K
    samples: int = 1  # S
    temperature: float = 0.0  # categorical and tied heads: 0 = argmax
    greedy_first: bool = True  # sample 0 at temperature 0, the rest at `temperature`
    top_k: int | None = None
    deterministic: bool = False  # Gaussian layers pass their means
    seed: int = 0
    decode: Literal["codes", "expected"] = "codes"  # frames from the nearest codes, or the expected vectors
    # generated frames = the true last prompt frame + (decoded frame - the decoded last prompt frame):
    # the tokenizer's error on what stays still cancels, and only what the model moves is drawn;
    # the tokenizer's flicker between two codings of the same thing adds changes of up to about
    # `anchor_threshold` grey levels to every change: each is shrunk by that much (a soft
    # threshold, the classic denoiser), so a smaller one is not drawn and a larger one loses its noise
    anchor: bool = False
    anchor_threshold: float = 0.0

    @classmethod
    def of(cls, section) -> GenerationSettings:
        """From any object with these fields as attributes (the config's `generate` section)."""
        return cls(**{field.name: getattr(section, field.name) for field in fields(cls)})


@dataclass(frozen=True)
class Continuation:
    """S continuations of one prompt, as codes and as decoded frames."""

    codes: torch.Tensor  # [S, P + K, h, w]: the prompt's codes, then each sample's generated ones
    frames: torch.Tensor  # uint8 [S, P + K, C, H, W], decoded
    prompt_frames: int  # P
    # the clip's own codes after the prompt (up to K frames) decoded: the tokenizer's bound on
    # any latent model; None when the clip has no frames after the prompt
    reconstruction: torch.Tensor | None = None

    @property
    def steps(self) -> int:
        return self.frames.shape[1] - self.prompt_frames

    @property
    def median(self) -> torch.Tensor:
        """The per-pixel median of the samples, uint8 [P + K, C, H, W]: the MAE-optimal estimate,
        a consensus that stays sharp (a pixel is lit where most samples light it)."""
        return self.frames.median(0).values

    @property
    def average(self) -> torch.Tensor:
        """The pixel average of the samples in [0, 1], [P + K, C, H, W]: the MSE-optimal estimate,
        which blurs where the samples disagree instead of committing to one guess."""
        return self.frames.float().mean(0) / 255.0


def sample_groups(settings: GenerationSettings) -> list[tuple[float, int, int]]:
    """(temperature, first sample, count) of each batched rollout: the likeliest continuation
    first when asked, then the drawn samples."""
    greedy = 1 if settings.greedy_first else 0
    groups = [(0.0, 0, greedy), (settings.temperature, greedy, settings.samples - greedy)]
    return [group for group in groups if group[2] > 0]


def continue_clip(
    model: STTransformer,
    tokenizer,
    codes: torch.Tensor,
    clip_id: int,
    settings: GenerationSettings,
    prompt_frames: int | None = None,
    steps: int | None = None,
    truth: torch.Tensor | None = None,
) -> Continuation:
    """S rollouts of `steps` frames (default K) from the first `prompt_frames` (default P) of a
    clip's codes [T, h, w], decoded with the tokenizer. The shared prompt is decoded once, and
    each generated frame once. With `settings.anchor`, the clip's true frames uint8 [T, C, H, W]
    (`truth`, at least the prompt) anchor the generated ones to the last prompt frame's pixels."""
    prompt_frames = settings.prompt_frames if prompt_frames is None else prompt_frames
    steps = settings.generate_frames if steps is None else steps
    samples, prompt = settings.samples, codes[None, :prompt_frames]
    generated, expected = [], []
    for temperature, first, count in sample_groups(settings):
        vectors: list[torch.Tensor] = []
        generated.append(
            rollout(
                model,
                prompt,
                steps,
                samples=count,
                temperature=temperature,
                top_k=settings.top_k,
                deterministic=settings.deterministic,
                generator=torch.Generator().manual_seed(settings.seed * 1_000_003 + clip_id * 101 + first),
                vectors=vectors,
            )
        )
        expected.append(torch.stack(vectors, 1))  # [count, K, h*w, code_dim]
    generated = torch.cat(generated)  # [S, P + K, h, w]
    if settings.decode == "expected":  # generated frames from the expected code vectors
        futures = tokenizer.decode_vectors(torch.cat(expected).flatten(0, 1).unflatten(1, model.grid))
    else:
        futures = tokenizer.decode(generated[:, prompt_frames:].flatten(0, 1))
    prompt_decoded = tokenizer.decode(codes[:prompt_frames]).cpu()
    futures = futures.cpu()
    if settings.anchor:
        if truth is None:
            raise ValueError("anchor: the true prompt frames are needed to anchor the generated ones")
        futures = anchored(futures, prompt_decoded[-1], truth[prompt_frames - 1], settings.anchor_threshold)
    frames = torch.cat(
        [prompt_decoded.expand(samples, -1, -1, -1, -1), futures.unflatten(0, (samples, -1))], dim=1
    )  # [S, P + K, C, H, W]
    true_future = codes[prompt_frames : prompt_frames + steps]
    reconstruction = tokenizer.decode(true_future).cpu() if len(true_future) else None
    return Continuation(generated, frames, prompt_frames, reconstruction)


def anchored(futures: torch.Tensor, decoded_last: torch.Tensor, true_last: torch.Tensor, threshold: float):
    """Generated frames uint8 [N, C, H, W] redrawn as the true last prompt frame plus the decoder's
    change from the decoded last prompt frame, each pixel's change soft-thresholded: shrunk by
    `threshold` grey levels (measured on its largest channel), and none below that."""
    change = futures.float() - decoded_last.float()
    size = change.abs().amax(-3, keepdim=True)
    kept = (size - threshold).clamp(min=0) / size.clamp(min=1e-6)
    return (true_last.float() + change * kept).round().clamp(0, 255).to(torch.uint8)
