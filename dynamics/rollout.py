"""Autoregressive rollouts: P prompt frames in, K generated frames out.

`rollout` runs one model step per new frame over its h*w latent pixels, with
the temporal keys and values of earlier frames cached. `rollout_uncached` is
the original's way, re-running the whole sequence for every new frame; it is
kept as the reference the cache must match and as the benchmark's baseline.

When prompt plus generated frames exceed the model's temporal positions, the
context slides: the cache is rebuilt from the latest frames, so K can exceed
the training length.
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
) -> torch.Tensor:
    """Prompt codes [B, P, h, w] -> [B, P + steps, h, w], with the key/value cache.

    Past the model's temporal positions the window slides: the cache is rebuilt from
    the last `max_frames - 1` frames. A list passed as `vectors` receives each generated
    frame's expected code vectors [B, h*w, code_dim] (see `STTransformer.expected_vectors`).
    """
    window = model.config.max_frames
    if prompt.shape[1] + 1 > window:
        raise ValueError(
            f"a prompt of {prompt.shape[1]} frames needs {prompt.shape[1] + 1} positions; "
            f"the model has {window}"
        )
    batch = prompt.shape[0]
    frames = list(prompt.unbind(1))
    cache = model.new_cache()
    out = model.step(None, cache, batch=batch, deterministic=deterministic, generator=generator)
    for frame in frames:
        out = model.step(frame, cache, deterministic=deterministic, generator=generator)
    for _ in range(steps):
        frames.append(_sample(model, out, temperature, top_k, generator))
        if vectors is not None:
            vectors.append(model.expected_vectors(out))
        if len(frames) == steps + prompt.shape[1]:
            break
        if cache.length >= window:  # slide: start frame + the last window - 1 frames
            cache = model.new_cache()
            model.step(None, cache, batch=batch, deterministic=deterministic, generator=generator)
            for frame in frames[-(window - 1) : -1]:
                model.step(frame, cache, deterministic=deterministic, generator=generator)
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
) -> torch.Tensor:
    """The same rollout, re-running the full sequence (up to the window) for each new frame."""
    window = model.config.max_frames
    sequence = prompt
    for _ in range(steps):
        # to predict frame t the model needs inputs [start, ..., frame t-1]: t positions
        visible = sequence[:, -(window - 1) :]
        padded = torch.cat([visible, visible[:, -1:]], dim=1)  # a placeholder for the frame to predict
        out, _ = model.predict(padded, deterministic=deterministic, generator=generator)
        codes = _sample(model, out[:, -1], temperature, top_k, generator)
        sequence = torch.cat([sequence, codes[:, None]], dim=1)
    return sequence
