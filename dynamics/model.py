"""The Spatial-Temporal Transformer over VQGAN codes.

Codes [B, T, h, w] are embedded with the tokenizer's frozen codebook vectors.
Each layer attends spatially (all latent pixels of one frame), then temporally
and causally (one latent pixel across at most the last `max_frames` frames, with
rotary positions: relative, so generation keeps a fixed ring of keys and values
and runs any length; or the original's learned absolute ones, which checkpoints
written before rotary have), then a feed-forward block, then
a Gaussian layer: a convolution over the latent grid gives a mean and a
log-variance, a reparameterised sample goes on to the next layer, and the
layer's KL to a standard normal is added to the loss. The model predicts a
whole next frame per step; a start frame precedes the sequence so frame 0 is
predicted too.

The head is one of four kinds (`HEADS`, chosen once from `config.head`): regression
(the next code vectors, MSE), categorical (a softmax over the codebook), tied (code
vectors scored against the codebook, a softmax over those scores), or factorized (for an
FSQ tokenizer: one softmax per code dimension over its levels, so a codebook of 64,000
codes costs 6 small softmaxes, not one over 64,000).

Padding: a clip shorter than the batch's longest has its tail masked out of
the loss. Causality already keeps the padded frames from reaching any real
frame's output (they come later), and the spatial attention and the Gaussian
convolution work within one frame, so no other mask is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from dynamics.settings import STTransformerConfig


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), summed over the last dimension."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v over [..., L, head_dim]; `mask` [L, L]: True where a query may
    attend. On a GPU, PyTorch's fused kernel. On a CPU, two batched matmuls with the softmax in
    fp32: for this model's short sequences (64 pixels, at most `max_frames` frames) the fused
    kernel's tiling costs more than it saves (a training step 1.2x faster without it), and its
    backward is slow in bf16, which these matmuls run in under autocast."""
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-1, -2)).float() * q.shape[-1] ** -0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1).to(v.dtype) @ v


class SpatialAttention(nn.Module):
    """Self-attention over the h*w latent pixels of each frame, frames independent."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, pixels, width = x.shape
        q, k, v = self.qkv(x).view(batch * frames, pixels, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, frames, pixels, width))


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of x [..., T, head_dim] by the angles' cos and sin [T, head_dim/2]:
    each pair of channels (i, i + head_dim/2) turned by position * frequency_i, so a query-key
    product depends only on how far apart the two frames are."""
    first, second = x.float().chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1).to(x.dtype)


def window_mask(frames: int, window: int, device: torch.device) -> torch.Tensor:
    """[T, T] True where frame i may attend to frame j: j <= i and i - j < window."""
    distance = torch.arange(frames, device=device)[:, None] - torch.arange(frames, device=device)
    return (distance >= 0) & (distance < window)


class TemporalAttention(nn.Module):
    """Causal self-attention over frames, for each latent pixel on its own, over at most the
    last `window` frames. With `rotary` the queries and keys carry rotary positions; else the
    model adds learned positions to its input."""

    def __init__(self, d_model: int, n_heads: int, window: int, rotary: bool):
        super().__init__()
        self.n_heads, self.window = n_heads, window
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.rotary = rotary
        if rotary:
            head_dim = d_model // n_heads
            frequencies = 10_000.0 ** (-torch.arange(0, head_dim, 2).float() / head_dim)
            self.register_buffer("inverse_frequencies", frequencies, persistent=False)
            self._angles: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin [positions, hd/2]

    def _rotation(self, first: int, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of positions first..first + frames - 1, from a table that doubles as a
        rollout outgrows it (one frame at a time, recomputing them would cost more than the rest)."""
        device = self.inverse_frequencies.device
        if (
            self._angles is None
            or self._angles[0].shape[0] < first + frames
            or self._angles[0].device != device
        ):
            size = max(64, 2 * (first + frames))
            positions = torch.arange(size, device=device, dtype=torch.float64)
            angles = (positions[:, None] * self.inverse_frequencies.double()).float()
            self._angles = (angles.cos(), angles.sin())
        cos, sin = self._angles
        return cos[first : first + frames], sin[first : first + frames]

    def _heads(self, x: torch.Tensor, first_position: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, frames, pixels, _ = x.shape
        qkv = self.qkv(x).permute(0, 2, 1, 3).reshape(batch * pixels, frames, 3, self.n_heads, -1)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # [3, B*N, heads, T, head_dim]
        if self.rotary:  # queries and keys turned together
            cos, sin = self._rotation(first_position, frames)
            q, k = rotate(qkv[:2], cos, sin)
            return q, k, qkv[2]
        return qkv[0], qkv[1], qkv[2]

    def _merge(self, out: torch.Tensor, batch: int, pixels: int) -> torch.Tensor:
        frames = out.shape[2]
        out = out.transpose(1, 2).reshape(batch, pixels, frames, -1).permute(0, 2, 1, 3)
        return self.proj(out)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        """All frames x [B, T, N, d] at once; `cache`, if given, keeps their keys and values."""
        frames = x.shape[1]
        q, k, v = self._heads(x, 0)
        if cache is not None:
            cache.write(k, v, 0)
        # causal, and over at most the last `window` frames (only rotary positions get past the
        # window: learned ones stop there)
        out = attention(q, k, v, window_mask(frames, self.window, x.device))
        return self._merge(out, x.shape[0], x.shape[2])

    def last(self, x: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """All frames x [B, T, N, d] from position 0 into the cache, and the attention output of
        the last frame alone [B, 1, N, d]: what a prefill's last layer needs."""
        q, k, v = self._heads(x, 0)
        cache.write(k, v, 0)
        recent = slice(max(0, k.shape[2] - self.window), None)  # the last query sees its window
        out = attention(q[:, :, -1:], k[:, :, recent], v[:, :, recent])
        return self._merge(out, x.shape[0], x.shape[2])

    def step(self, x: torch.Tensor, cache: LayerCache, position: int) -> torch.Tensor:
        """One new frame x [B, 1, N, d] at `position`, attending to itself and the cached
        frames still in the window."""
        q, k, v = self._heads(x, position)
        cache.write(k, v, position)
        # one query: two matmuls beat the CPU's fused attention kernel here (half the time at batch
        # 8); over the whole ring, its empty slots masked: a slice of it is strided, and slower
        scores = q @ cache.keys.transpose(-1, -2) * q.shape[-1] ** -0.5
        filled = min(position + 1, self.window)
        if filled < self.window:
            scores[..., filled:] = float("-inf")
        return self._merge(scores.softmax(-1) @ cache.values, x.shape[0], x.shape[2])


class GaussianLayer(nn.Module):
    """Mean and log-variance from a convolution over the latent grid; a sample goes on."""

    def __init__(self, cfg: STTransformerConfig, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.limits = (cfg.logvar_min, cfg.logvar_max)
        d, kernel = cfg.d_model, cfg.gaussian_kernel
        if cfg.gaussian_conv == "separable":
            spatial = nn.Conv2d(d, d, kernel, padding=kernel // 2, groups=d)
            nn.init.dirac_(spatial.weight, groups=d)  # starts passing each channel through
            nn.init.zeros_(spatial.bias)
            self.conv = nn.Sequential(spatial, nn.Conv2d(d, 2 * d, 1))
        else:
            self.conv = nn.Conv2d(d, 2 * d, kernel, padding=kernel // 2)
        # start as a near-identity with little noise: mean = x, std = e^-3
        output = self.conv[-1] if isinstance(self.conv, nn.Sequential) else self.conv
        nn.init.zeros_(output.weight)
        nn.init.zeros_(output.bias)
        with torch.no_grad():
            output.bias[d:] = -6.0

    def forward(
        self,
        x: torch.Tensor,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        with_kl: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch, frames, pixels, width = x.shape
        height, grid_width = self.grid
        maps = x.reshape(batch * frames, height, grid_width, width).permute(0, 3, 1, 2)
        delta, logvar = (
            self.conv(maps).permute(0, 2, 3, 1).reshape(batch, frames, pixels, 2 * width).chunk(2, -1)
        )
        mean = x + delta  # the mean is a correction of the input: a residual, easy to train
        logvar = logvar.clamp(*self.limits)
        # [B, T]: per latent pixel, averaged over the frame; generating needs none (nor its ops)
        kl = gaussian_kl(mean, logvar).mean(-1) if with_kl else None
        if deterministic:
            return mean, kl
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return mean + (0.5 * logvar).exp() * noise, kl


class Block(nn.Module):
    def __init__(self, cfg: STTransformerConfig, grid: tuple[int, int]):
        super().__init__()
        d = cfg.d_model
        self.norm_spatial, self.spatial = nn.LayerNorm(d), SpatialAttention(d, cfg.n_heads)
        self.norm_temporal = nn.LayerNorm(d)
        self.temporal = TemporalAttention(
            d, cfg.n_heads, cfg.max_frames, rotary=cfg.temporal_positions == "rotary"
        )
        self.norm_ff = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, cfg.ff_mult * d), nn.GELU(), nn.Linear(cfg.ff_mult * d, d))
        self.gaussian = GaussianLayer(cfg, grid)

    def forward(
        self, x, deterministic=False, generator=None, cache: LayerCache | None = None, last_only=False
    ):
        """`cache`: a prefill, which keeps the temporal keys and values and needs no KL;
        `last_only` (a prefill's last layer): every frame's keys and values go to the cache, but
        only the last frame goes on (its feed-forward and Gaussian layer: most of a layer's work)."""
        x = x + self.spatial(self.norm_spatial(x))
        if last_only:
            x = x[:, -1:] + self.temporal.last(self.norm_temporal(x), cache)
        else:
            x = x + self.temporal(self.norm_temporal(x), cache)
        x = x + self.ff(self.norm_ff(x))
        return self.gaussian(x, deterministic, generator, with_kl=cache is None)

    def step(self, x, cache: LayerCache, position: int, deterministic=False, generator=None):
        x = x + self.spatial(self.norm_spatial(x))
        x = x + self.temporal.step(self.norm_temporal(x), cache, position)
        x = x + self.ff(self.norm_ff(x))
        return self.gaussian(x, deterministic, generator, with_kl=False)


@dataclass
class LayerCache:
    """One layer's temporal keys and values [B*N, heads, window, head_dim], a ring: the frame at
    position p sits in slot p % window, so the newest frame overwrites the one that has just left
    the window (attention does not care about the order of its keys)."""

    window: int
    keys: torch.Tensor | None = None
    values: torch.Tensor | None = None

    def write(self, keys: torch.Tensor, values: torch.Tensor, first_position: int) -> None:
        """Keep the keys and values [B*N, heads, t, head_dim] of positions first_position.. on."""
        if self.keys is None:
            shape = (*keys.shape[:2], self.window, keys.shape[-1])
            self.keys, self.values = keys.new_zeros(shape), values.new_zeros(shape)
        count = keys.shape[2]
        kept = min(count, self.window)  # of a long prefill only the last `window` frames matter
        first = first_position + count - kept
        slot = first % self.window
        head = min(kept, self.window - slot)  # up to the ring's end, then the rest from its start
        for target, source in (
            (slice(slot, slot + head), slice(count - kept, count - kept + head)),
            (slice(0, kept - head), slice(count - kept + head, count)),
        ):
            if target.stop > target.start:
                self.keys[:, :, target] = keys[:, :, source]
                self.values[:, :, target] = values[:, :, source]

    def repeat_batch(self, times: int, pixels: int) -> None:
        """Each clip's entries `times` times over, side by side (keys are per clip and pixel)."""
        for name in ("keys", "values"):
            cached = getattr(self, name)
            if cached is not None:
                clips = cached.view(-1, pixels, *cached.shape[1:])
                setattr(self, name, clips.repeat_interleave(times, dim=0).flatten(0, 1))


@dataclass
class KVCache:
    """Temporal keys and values of the frames seen so far (of the last `window` of them), one
    ring per layer; `length` counts every frame fed, start frame included."""

    layers: list[LayerCache] = field(default_factory=list)
    length: int = 0
    pixels: int = 1  # latent pixels per frame: a layer's keys hold one row per clip and pixel

    def repeat_batch(self, times: int) -> None:
        """Continue each clip `times` times: its cached frames shared by all (copied side by side)."""
        for layer in self.layers:
            layer.repeat_batch(times, self.pixels)


@dataclass(frozen=True)
class DynamicsLosses:
    """The training objective of one batch: `loss` (minimised) is `main` + kl_weight * `kl`."""

    loss: torch.Tensor
    main: torch.Tensor  # next-frame error, detached: MSE to the code vectors or cross-entropy
    kl: torch.Tensor  # the Gaussian layers' KL, detached
    metric: str  # the name `main` is logged under: "mse" or "ce"

    def metrics(self) -> dict[str, float]:
        """The terms as floats under their logged names: loss, mse or ce, kl."""
        return {"loss": float(self.loss.detach()), self.metric: float(self.main), "kl": float(self.kl)}


class Head:
    """One kind of output head: what the last linear layer predicts, how that is scored,
    and how it is read back as codes.

    A head kind holds no tensors: the linear layer (`head`), the tied head's `logit_scale`
    and the codebook stay on the model, under the names checkpoints have, and each method
    is handed the model."""

    metric: str  # the name the main loss term is logged under
    residual: bool  # whether the output may be a change from the previous frame's codes

    def width(self, codebook_size: int, code_dim: int, levels: list[int] | None) -> int:
        """The linear layer's output size."""
        raise NotImplementedError

    def check(self, levels: list[int] | None) -> None:
        """Refuse a tokenizer this head cannot model (its `fsq_levels`, None for VQ)."""
        if levels is not None:
            raise ValueError(
                f"head: {type(self).__name__} scores a VQ codebook; an FSQ tokenizer's codes need "
                "head: factorized"
            )

    def new_parameters(self, residual: bool) -> dict[str, nn.Parameter]:
        """Parameters besides the linear layer, registered on the model under these names."""
        return {}

    def previous(self, model: STTransformer, codes: torch.Tensor) -> torch.Tensor:
        """What a residual head adds to its output for the previous frame's codes [..., N]: their
        code vectors, so that an output of zero says "nothing moved"."""
        return model.codebook[codes]

    def logits(self, model: STTransformer, out: torch.Tensor) -> torch.Tensor:
        """Head output [..., *] -> scores over the codebook [..., codebook_size]."""
        raise NotImplementedError

    def loss_per_frame(self, model: STTransformer, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Head output [B, T, N, *] and target codes [B, T, N] -> the error of each frame [B, T]."""
        raise NotImplementedError

    def expected_vectors(self, model: STTransformer, out: torch.Tensor) -> torch.Tensor:
        """Head output [..., *] -> the code vector the model expects [..., code_dim]."""
        raise NotImplementedError

    def to_codes(
        self,
        model: STTransformer,
        out: torch.Tensor,
        temperature: float,
        top_k: int | None,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Head output [B, N, *] -> codes [B, N]."""
        raise NotImplementedError


class RegressionHead(Head):
    """The next frame's code vectors, trained by MSE to them (the original's); read as the
    nearest code, whatever the temperature."""

    metric, residual = "mse", True

    def width(self, codebook_size: int, code_dim: int, levels: list[int] | None) -> int:
        return code_dim

    def logits(self, model: STTransformer, out: torch.Tensor) -> torch.Tensor:
        return out  # no scores over the codebook: the output as it is

    def loss_per_frame(self, model: STTransformer, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (out.float() - model.codebook[targets]).pow(2).mean(-1).mean(-1)

    def expected_vectors(self, model: STTransformer, out: torch.Tensor) -> torch.Tensor:
        return out.float()

    def to_codes(self, model, out, temperature, top_k, generator) -> torch.Tensor:
        return nearest_codes(model.codebook, out)


class CategoricalHead(Head):
    """Scores over the codebook, a softmax over them, cross-entropy; read by argmax, or
    drawn at a temperature."""

    metric, residual = "ce", False

    def width(self, codebook_size: int, code_dim: int, levels: list[int] | None) -> int:
        return codebook_size

    def logits(self, model: STTransformer, out: torch.Tensor) -> torch.Tensor:
        return out

    def loss_per_frame(self, model: STTransformer, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.logits(model, out.float())
        per_code = F.cross_entropy(logits.flatten(0, 2), targets.flatten(), reduction="none")
        return per_code.view(targets.shape).mean(-1)

    def expected_vectors(self, model: STTransformer, out: torch.Tensor) -> torch.Tensor:
        return self.logits(model, out).float().softmax(-1) @ model.codebook

    def to_codes(self, model, out, temperature, top_k, generator) -> torch.Tensor:
        if temperature <= 0:
            return out.argmax(-1)
        return sample_codes(self.logits(model, out), temperature, top_k, generator)


class TiedHead(CategoricalHead):
    """Code vectors scored against the frozen codebook by cosine, scaled by a learned
    `logit_scale`: a categorical head whose output weights are the codebook. Its argmax
    is the nearest code."""

    metric, residual = "ce", True

    def width(self, codebook_size: int, code_dim: int, levels: list[int] | None) -> int:
        return code_dim

    def new_parameters(self, residual: bool) -> dict[str, nn.Parameter]:
        # cosine scores lie in [-1, 1]: a learned scale makes them logits
        return {"logit_scale": nn.Parameter(torch.tensor(2.5))}

    def logits(self, model: STTransformer, out: torch.Tensor) -> torch.Tensor:
        return F.normalize(out.float(), dim=-1) @ model.codebook.T * model.logit_scale.exp()

    def to_codes(self, model, out, temperature, top_k, generator) -> torch.Tensor:
        if temperature <= 0:
            return nearest_codes(model.codebook, out)
        return super().to_codes(model, out, temperature, top_k, generator)


class FactorizedHead(Head):
    """For an FSQ tokenizer, whose code is one level per dimension: a softmax per dimension over
    its levels, cross-entropy summed over the dimensions (the code's log-likelihood when the
    dimensions are taken as independent given the context); read by argmax per dimension, or
    drawn per dimension at a temperature. The output is the dimensions' logits side by side.
    Residual, a learned `copy_logit` is added to the logit of each dimension's previous level:
    with the head at zero it starts at "nothing moved", as most latent pixels of footage do."""

    metric, residual = "ce", True

    def new_parameters(self, residual: bool) -> dict[str, nn.Parameter]:
        # e^3 against 7 other levels of 8: three in four on the previous level at the start
        return {"copy_logit": nn.Parameter(torch.tensor(3.0))} if residual else {}

    def previous(self, model: STTransformer, codes: torch.Tensor) -> torch.Tensor:
        digits = model.digits(codes)
        one_hot = [F.one_hot(digits[..., d], levels) for d, levels in enumerate(model.levels)]
        return model.copy_logit * torch.cat(one_hot, -1)

    def width(self, codebook_size: int, code_dim: int, levels: list[int] | None) -> int:
        return sum(levels or ())

    def check(self, levels: list[int] | None) -> None:
        if levels is None:
            raise ValueError("head: factorized needs an FSQ tokenizer (tokenizer.model.quantizer: fsq)")

    def _per_dimension(self, model: STTransformer, out: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return out.float().split(model.levels, dim=-1)

    def logits(self, model: STTransformer, out: torch.Tensor) -> torch.Tensor:
        return out  # each dimension's logits over its levels, side by side

    def loss_per_frame(self, model: STTransformer, out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        digits = model.digits(targets)  # [B, T, N, D]
        per_code = sum(
            F.cross_entropy(logits.flatten(0, 2), digits[..., d].flatten(), reduction="none")
            for d, logits in enumerate(self._per_dimension(model, out))
        )
        return per_code.view(targets.shape).mean(-1)

    def expected_vectors(self, model: STTransformer, out: torch.Tensor) -> torch.Tensor:
        return torch.stack(
            [
                logits.softmax(-1) @ model.level_values(d)
                for d, logits in enumerate(self._per_dimension(model, out))
            ],
            dim=-1,
        )

    def to_codes(self, model, out, temperature, top_k, generator) -> torch.Tensor:
        digits = []
        for logits in self._per_dimension(model, out):
            if temperature <= 0:
                digits.append(logits.argmax(-1))
            else:
                digits.append(sample_codes(logits, temperature, top_k, generator))
        return (torch.stack(digits, -1) * model.level_basis).sum(-1)


HEADS: dict[str, Head] = {
    "regression": RegressionHead(),
    "categorical": CategoricalHead(),
    "tied": TiedHead(),
    "factorized": FactorizedHead(),
}


def nearest_codes(codebook: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Vectors [..., code_dim] -> the code of highest cosine similarity [...]."""
    return (F.normalize(vectors.float(), dim=-1) @ codebook.T).argmax(-1)


def sample_codes(
    logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator | None
) -> torch.Tensor:
    """Logits [B, N, K] -> codes [B, N] drawn at `temperature`, from the `top_k` likeliest if set."""
    logits = logits.float() / temperature
    if top_k:
        threshold = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = logits.softmax(-1).flatten(0, 1)
    return torch.multinomial(probs, 1, generator=generator).view(logits.shape[:2])


class STTransformer(nn.Module):
    def __init__(
        self,
        cfg: STTransformerConfig,
        codebook: torch.Tensor,
        grid: tuple[int, int],
        levels: list[int] | None = None,
    ):
        """`codebook`: the tokenizer's code vectors [K, D], as its decoder receives them (a VQ
        codebook's l2-normalised, so cosine is their dot product); `levels`: its code levels per
        dimension (FSQ), None for a learned codebook."""
        super().__init__()
        self.config, self.grid = cfg, tuple(grid)
        patch = cfg.patch
        if grid[0] % patch or grid[1] % patch:
            raise ValueError(f"model.patch: given {patch}, expected a divisor of the latent grid {grid}")
        self.token_grid = (grid[0] // patch, grid[1] // patch)  # what attention and the Gaussian layers see
        tokens = self.token_grid[0] * self.token_grid[1]
        codebook_size, code_dim = codebook.shape
        self.levels = None if levels is None else [int(level) for level in levels]
        if self.levels is not None:
            sizes = torch.tensor(self.levels)
            self.register_buffer("level_sizes", sizes, persistent=False)
            self.register_buffer(
                "level_basis", torch.cumprod(torch.cat([sizes.new_ones(1), sizes[:-1]]), 0), persistent=False
            )
        self.register_buffer("codebook", codebook.float())  # frozen
        self.embed = nn.Linear(code_dim * patch * patch, cfg.d_model)
        self.spatial_position = nn.Parameter(torch.randn(tokens, cfg.d_model) * 0.02)
        if not self.rotary:
            self.temporal_position = nn.Parameter(torch.randn(cfg.max_frames, cfg.d_model) * 0.02)
        self.start_frame = nn.Parameter(torch.randn(tokens, cfg.d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(cfg, self.token_grid) for _ in range(cfg.n_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head_kind = HEADS[cfg.head]  # the one place the configured name is read
        self.head_kind.check(levels)
        width = self.head_kind.width(codebook_size, code_dim, levels)
        self.head = nn.Linear(cfg.d_model, width * patch * patch)
        for name, parameter in self.head_kind.new_parameters(self.residual).items():
            self.register_parameter(name, parameter)
        if self.residual:  # start from "nothing moved": the first prediction copies the last frame
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def rotary(self) -> bool:
        """Whether temporal positions are relative (rotary), so a rollout can run past the window."""
        return self.config.temporal_positions == "rotary"

    @property
    def codebook_size(self) -> int:
        return self.codebook.shape[0]

    def digits(self, codes: torch.Tensor) -> torch.Tensor:
        """FSQ codes [...] -> their level per dimension [..., D]."""
        return (codes[..., None] // self.level_basis) % self.level_sizes

    def level_values(self, dimension: int) -> torch.Tensor:
        """The code-vector values of one dimension's levels (as the tokenizer's grid holds them)."""
        levels = self.levels[dimension]
        return (torch.arange(levels, device=self.codebook.device) - levels // 2).float() / (levels // 2)

    def _embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [B, T, h, w] -> tokens [B, T, h*w / patch^2, d]."""
        batch, frames = codes.shape[:2]
        patch, (rows, columns) = self.config.patch, self.token_grid
        code_dim = self.codebook.shape[1]
        vectors = self.codebook[codes].view(batch, frames, rows, patch, columns, patch, code_dim)
        return self.embed(vectors.transpose(3, 4).reshape(batch, frames, rows * columns, patch**2 * code_dim))

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens [B, T, h*w / patch^2, d] -> the head's output per latent pixel [B, T, h*w, *]."""
        out = self.head(self.norm(x))
        batch, frames = out.shape[:2]
        patch, (rows, columns) = self.config.patch, self.token_grid
        out = out.view(batch, frames, rows, columns, patch, patch, out.shape[-1] // patch**2).transpose(3, 4)
        return out.reshape(batch, frames, rows * patch * columns * patch, out.shape[-1])

    @property
    def residual(self) -> bool:
        return self.config.residual and self.head_kind.residual

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """Scores over the codebook for head output `out` (the categorical head's are its own)."""
        return self.head_kind.logits(self, out)

    def predict(
        self, codes: torch.Tensor, deterministic: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions for every frame of codes [B, T, h, w] from the frames before it.

        Returns the head's output [B, T, h*w, code_dim or codebook_size] and the
        summed KL of the Gaussian layers [B, T]. The last frame of `codes` is never
        read, so it may be a placeholder.
        """
        out, kl = self._run(codes[:, :-1], deterministic, generator)
        if self.residual:  # frame 0 follows the start frame, which has no codes to add
            previous = self.head_kind.previous(self, codes[:, :-1].flatten(2)).to(out.dtype)
            out = torch.cat([out[:, :1], out[:, 1:] + previous], dim=1)
        return out, kl

    def _run(
        self,
        inputs: torch.Tensor,
        deterministic: bool,
        generator: torch.Generator | None,
        cache: KVCache | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The start frame and input codes [B, T-1, h, w] through every layer at once: the head's
        output [B, T, h*w, *] (before any residual) and the summed KL [B, T]. With a `cache` (a
        prefill) it keeps each layer's temporal keys and values, the output is the last frame's
        alone and the KL stays zero (generating needs none)."""
        batch, frames = inputs.shape[0], inputs.shape[1] + 1
        if not self.rotary and frames > self.config.max_frames:
            raise ValueError(
                f"{frames} frames, but the model has {self.config.max_frames} temporal positions"
            )
        start = self.start_frame.expand(batch, 1, -1, -1)
        x = torch.cat([start, self._embed(inputs)], dim=1) + self.spatial_position
        if not self.rotary:
            x = x + self.temporal_position[:frames, None]
        kl = torch.zeros(batch, frames, device=inputs.device)
        layer_caches = cache.layers if cache is not None else [None] * len(self.blocks)
        for index, (block, layer_cache) in enumerate(zip(self.blocks, layer_caches, strict=True)):
            # a prefill wants the last frame's prediction alone: its last layer carries only that frame
            last_only = cache is not None and index == len(self.blocks) - 1
            x, layer_kl = block(x, deterministic, generator, layer_cache, last_only)
            if layer_kl is not None:
                kl = kl + layer_kl
        if cache is not None:
            cache.length = frames
        return self._head(x), kl

    def forward(
        self,
        codes: torch.Tensor,
        lengths: torch.Tensor | None = None,
        deterministic: bool = False,
        inputs: torch.Tensor | None = None,
    ) -> DynamicsLosses:
        """The training objective: next-frame error (MSE to code vectors, or cross-entropy)
        plus the weighted KL, both over the real (unpadded) frames only. It is `forward`
        so that DistributedDataParallel sees it and synchronises the gradients.

        `inputs` (default: `codes`) are the frames the predictions are made from, e.g. with
        some replaced by the model's own earlier predictions; `codes` stay the targets."""
        out, kl = self.predict(codes if inputs is None else inputs, deterministic)
        frames = codes.shape[1]
        valid = torch.ones(codes.shape[:2], dtype=torch.bool, device=codes.device)
        if lengths is not None:
            valid = torch.arange(frames, device=codes.device)[None] < lengths[:, None]
        per_frame = self.head_kind.loss_per_frame(self, out, codes.flatten(2))
        weight = valid.float()
        main = (per_frame * weight).sum() / weight.sum()
        kl_mean = (kl * weight).sum() / weight.sum()
        return DynamicsLosses(
            main + self.config.kl_weight * kl_mean, main.detach(), kl_mean.detach(), self.head_kind.metric
        )

    def new_cache(self) -> KVCache:
        return KVCache(
            [LayerCache(self.config.max_frames) for _ in self.blocks],
            pixels=self.token_grid[0] * self.token_grid[1],
        )

    def prefill(
        self,
        codes: torch.Tensor,
        cache: KVCache,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Feed the start frame and codes [B, P, h, w] in one pass, filling an empty `cache`, and
        get the prediction of frame P [B, h*w, *]: what P + 1 calls of `step` give, at once."""
        out, _ = self._run(codes, deterministic, generator, cache)
        out = out[:, -1]
        if self.residual and codes.shape[1]:
            out = out + self.head_kind.previous(self, codes[:, -1].flatten(1)).to(out.dtype)
        return out

    def step(
        self,
        frame_codes: torch.Tensor | None,
        cache: KVCache,
        batch: int | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Feed one frame (None: the start frame) and get the prediction of the next.

        The i-th call (from 0) sees input position i, as the full forward does:
        step(None) predicts frame 0, step(frame 0) predicts frame 1, and so on. With rotary
        positions it goes on past the window, as the full forward does over a longer clip.
        Returns [B, h*w, code_dim or codebook_size].
        """
        position = cache.length
        if not self.rotary and position >= self.config.max_frames:
            raise ValueError(f"the cache is full ({self.config.max_frames} temporal positions)")
        if frame_codes is None:
            x = self.start_frame.expand(batch or 1, 1, -1, -1)
        else:
            x = self._embed(frame_codes[:, None])
        x = x + self.spatial_position
        if not self.rotary:
            x = x + self.temporal_position[position]
        for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
            x, _ = block.step(x, layer_cache, position, deterministic, generator)
        cache.length += 1
        out = self._head(x)[:, 0]
        if self.residual and frame_codes is not None:
            out = out + self.head_kind.previous(self, frame_codes.flatten(1)).to(out.dtype)
        return out

    def expected_vectors(self, out: torch.Tensor) -> torch.Tensor:
        """Head output [..., *] -> the code vector the model expects [..., code_dim]: its
        regression output, or the codebook weighted by its probabilities. Decoded, it is the
        model's hedge where it is unsure (a nearest code commits to one guess)."""
        return self.head_kind.expected_vectors(self, out)

    def to_codes(
        self,
        out: torch.Tensor,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Head output [B, h*w, *] -> codes [B, h, w]: nearest code (regression), or
        argmax / temperature sampling with optional top-k (categorical, tied)."""
        codes = self.head_kind.to_codes(self, out, temperature, top_k, generator)
        return codes.view(out.shape[0], *self.grid)
