"""Autoregressive rollouts: P prompt frames in, K generated frames out.

`rollout` feeds the prompt in one pass (filling the key/value cache), then runs one model
step per new frame over its h*w latent pixels. With rotary temporal positions the cache is
a ring of the last `max_frames` frames, so a rollout of any length costs the same per frame,
and it equals the full forward over the whole sequence with the same window.

`rollout_uncached` is the original's way, re-running the sequence (up to the window) for
every new frame; it is the benchmark's baseline and, re-running the whole history, the
reference the cache must match.

A model with learned temporal positions has no position past the window: its cache is
rebuilt from the latest frames once the window is full.
"""

from __future__ import annotations

import torch

from dynamics.model import STTransformer


def _sample(model: STTransformer, out, temperature, top_k, generator) -> torch.Tensor:
    return model.to_codes(out, temperature=temperature, top_k=top_k, generator=generator)


@torch.no_grad()
def rollout(
    model: STTransformer,
    prompt: torch.Tensor,
    steps: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    vectors: list | None = None,
    samples: int = 1,
) -> torch.Tensor:
    """Prompt codes [B, P, h, w] -> [B * samples, P + steps, h, w], with the key/value cache:
    each prompt continued `samples` times (its samples side by side). A prompt is fed once and
    its cache shared by its samples, so they share its Gaussian layers' draw and differ from the
    first generated frame on.

    A list passed as `vectors` receives each generated frame's expected code vectors
    [B * samples, h*w, code_dim] (see `STTransformer.expected_vectors`).
    """
    window = model.config.max_frames
    if not model.rotary and prompt.shape[1] + 1 > window:
        raise ValueError(
            f"a prompt of {prompt.shape[1]} frames needs {prompt.shape[1] + 1} positions; "
            f"the model has {window}"
        )
    cache = model.new_cache()
    out = model.prefill(prompt, cache, deterministic=deterministic, generator=generator)
    if samples > 1:
        out = out.repeat_interleave(samples, dim=0)
        cache.repeat_batch(samples)
        prompt = prompt.repeat_interleave(samples, dim=0)
    frames = list(prompt.unbind(1))
    for _ in range(steps):
        frames.append(_sample(model, out, temperature, top_k, generator))
        if vectors is not None:
            vectors.append(model.expected_vectors(out))
        if len(frames) == steps + prompt.shape[1]:
            break
        if not model.rotary and cache.length >= window:  # rebuild: start frame + the last window - 1
            cache = model.new_cache()
            recent = torch.stack(frames[-(window - 1) :], dim=1)
            out = model.prefill(recent, cache, deterministic=deterministic, generator=generator)
        else:
            out = model.step(frames[-1], cache, deterministic=deterministic, generator=generator)
    return torch.stack(frames, dim=1)


@torch.no_grad()
def rollout_uncached(
    model: STTransformer,
    prompt: torch.Tensor,
    steps: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    deterministic: bool = False,
    generator: torch.Generator | None = None,
    whole_history: bool = False,
) -> torch.Tensor:
    """The same rollout, re-running the last `max_frames - 1` frames for each new frame (the
    original's way), or with `whole_history` (rotary positions only) the whole sequence."""
    window = model.config.max_frames
    if whole_history and not model.rotary:
        raise ValueError("whole_history needs rotary temporal positions: learned ones stop at the window")
    sequence = prompt
    for _ in range(steps):
        # to predict frame t the model needs inputs [start, ..., frame t-1]: t positions
        visible = sequence if whole_history else sequence[:, -(window - 1) :]
        padded = torch.cat([visible, visible[:, -1:]], dim=1)  # a placeholder for the frame to predict
        out, _ = model.predict(padded, deterministic=deterministic, generator=generator)
        codes = _sample(model, out[:, -1], temperature, top_k, generator)
        sequence = torch.cat([sequence, codes[:, None]], dim=1)
    return sequence
