"""The per-frame VQGAN: encoder, l2-normalised quantizer with dead-code restart,
decoder, patch discriminator, and the losses that train them.

Frames enter as float [B, C, H, W] in [-1, 1]; codes are integer [B, h, w].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokenizer.settings import VQGANConfig


def group_norm(channels: int) -> nn.GroupNorm:
    # up to 32 groups of at least 4 channels, and always a divisor of the width
    return nn.GroupNorm(
        num_groups=math.gcd(channels, min(32, max(1, channels // 4))), num_channels=channels, eps=1e-6
    )


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Single-head attention over all positions of a feature map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (n c) h w -> n b 1 (h w) c", n=3)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b 1 (h w) c -> b c h w", h=height, w=width))


def level_blocks(in_channels: int, width: int, count: int) -> list[nn.Module]:
    """One resolution level: `count` residual blocks to `width` (a 1x1 conv when there are none)."""
    if count == 0:
        return [nn.Conv2d(in_channels, width, 1)] if in_channels != width else []
    return [ResBlock(in_channels if index == 0 else width, width) for index in range(count)]


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        widths = [cfg.base_channels * mult for mult in cfg.channel_mults]
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
        current = widths[0]
        blocks = cfg.res_blocks_per_level
        for level, width in enumerate(widths):
            layers += level_blocks(current, width, blocks[level])
            current = width
            if level < len(widths) - 1:
                layers.append(nn.Conv2d(current, current, 3, stride=2, padding=1))
        layers += [ResBlock(current, current)]
        layers += [SelfAttention(current)] if cfg.attention else []
        layers += [
            ResBlock(current, current),
            group_norm(current),
            nn.SiLU(),
            nn.Conv2d(current, cfg.code_dim, 1),
        ]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        widths = [cfg.base_channels * mult for mult in cfg.channel_mults][::-1]
        current = widths[0]
        layers: list[nn.Module] = [nn.Conv2d(cfg.code_dim, current, 3, padding=1), ResBlock(current, current)]
        layers += [SelfAttention(current)] if cfg.attention else []
        layers += [ResBlock(current, current)]
        blocks = cfg.res_blocks_per_level[::-1]
        for level, width in enumerate(widths):
            layers += level_blocks(current, width, blocks[level])
            current = width
            if level < len(widths) - 1:
                layers += [
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv2d(current, current, 3, padding=1),
                ]
        layers += [group_norm(current), nn.SiLU()]
        self.layers = nn.Sequential(*layers)
        self.conv_out = nn.Conv2d(
            current, cfg.in_channels, 3, padding=1
        )  # the adaptive GAN weight looks here

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.layers(z))


BLANK_CODE = 0  # the code background patches take when `blank_threshold` is set


class BaseQuantizer(nn.Module):
    """What every quantizer (`QUANTIZERS`) is: encoder outputs [B, D, h, w] to codes and back
    (`forward`, `lookup`, `embed`), its code vectors, and `usage`, an EMA of the share of
    assignments each code gets, which a learned codebook uses to restart its dead codes."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.codebook_size, self.usage_decay = cfg.codebook_size, cfg.usage_decay
        self.register_buffer("usage", torch.zeros(cfg.codebook_size))

    @property
    def codebook(self) -> torch.Tensor:
        """Every code's vector [codebook_size, code_dim], as the decoder receives it."""
        raise NotImplementedError

    @property
    def code_levels(self) -> list[int] | None:
        """The levels of each code dimension when a code is one level per dimension (FSQ), which
        the dynamics model's factorized head predicts one by one; None for a learned codebook."""
        return None

    def dead_codes(self) -> torch.Tensor:
        """[codebook_size] True for codes used too rarely to keep."""
        raise NotImplementedError

    def restart_dead_codes(self, candidates: torch.Tensor, generator: torch.Generator) -> int:
        """Move dead codes onto recent encoder outputs [N, D]; returns how many moved."""
        raise NotImplementedError

    @torch.no_grad()
    def update_usage(self, counts: torch.Tensor) -> None:
        """Fold one step's assignment counts (summed over every rank) into the usage EMA."""
        share = counts.float() / counts.sum().clamp(min=1)
        self.usage.mul_(self.usage_decay).add_(share, alpha=1 - self.usage_decay)


class Quantizer(BaseQuantizer):
    """Nearest code by cosine similarity, straight-through gradients.

    Both the encoder output and the codebook are l2-normalised, which keeps
    codes comparable and the codebook alive. `usage` is an EMA of the share of
    assignments each code gets; it starts at zero, so the first restart fills
    the whole codebook from real encoder outputs (data initialisation).
    """

    def __init__(self, cfg: VQGANConfig):
        super().__init__(cfg)
        self.commitment_weight = cfg.commitment_weight
        self.dead_threshold = cfg.dead_code_fraction / cfg.codebook_size
        self.embedding = nn.Embedding(cfg.codebook_size, cfg.code_dim)
        nn.init.normal_(self.embedding.weight)

    @property
    def codebook(self) -> torch.Tensor:
        return F.normalize(self.embedding.weight, dim=-1)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """Codes [B, h, w] for encoder outputs [B, D, h, w]."""
        flat = F.normalize(rearrange(z, "b d h w -> b h w d"), dim=-1)
        return torch.einsum("bhwd,kd->bhwk", flat, self.codebook.to(flat.dtype)).argmax(dim=-1)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Code vectors [B, D, h, w] for codes [B, h, w]."""
        return rearrange(F.embedding(codes, self.codebook), "b h w d -> b d h w")

    def forward(
        self, z: torch.Tensor, blank: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`blank` [B, h, w]: positions that take code 0 whatever their nearest code."""
        normalised = F.normalize(z.float(), dim=1)
        codes = self.lookup(normalised)
        if blank is not None:
            codes = codes.masked_fill(blank, BLANK_CODE)
        quantised = self.embed(codes)
        codebook_loss = F.mse_loss(quantised, normalised.detach())
        commitment_loss = F.mse_loss(normalised, quantised.detach())
        loss = codebook_loss + self.commitment_weight * commitment_loss
        straight_through = normalised + (quantised - normalised).detach()
        return straight_through, loss, codes

    def dead_codes(self) -> torch.Tensor:
        return self.usage < self.dead_threshold

    @torch.no_grad()
    def restart_dead_codes(self, candidates: torch.Tensor, generator: torch.Generator) -> int:
        """Move every dead code onto a random recent encoder output [N, D].

        Every rank must pass the same candidates and an identically seeded
        generator, so the codebook stays identical across ranks.
        """
        dead = self.dead_codes().nonzero().squeeze(1)
        if dead.numel() == 0 or candidates.numel() == 0:
            return 0
        picks = torch.randint(len(candidates), (dead.numel(),), generator=generator).to(candidates.device)
        chosen = F.normalize(candidates[picks].float(), dim=-1)
        noise = torch.randn(chosen.shape, generator=generator).to(chosen.device) * 1e-3
        self.embedding.weight[dead] = (chosen + noise).to(self.embedding.weight.dtype)
        self.usage[dead] = 1.0 / self.codebook_size
        return int(dead.numel())


class FiniteScalarQuantizer(BaseQuantizer):
    """FSQ: each dimension of the encoder output is bounded (tanh) and rounded to one of its
    levels, straight-through. A code is the levels' digits read as one mixed-radix number; its
    vector is the digits scaled to [-1, 1]. Nothing to learn and no code to die, so the usage
    bookkeeping of the VQ codebook is kept only as statistics."""

    def __init__(self, cfg: VQGANConfig):
        super().__init__(cfg)
        levels = torch.tensor(cfg.fsq_levels)
        self.register_buffer("levels", levels, persistent=False)
        self.register_buffer(
            "basis", torch.cumprod(torch.cat([levels.new_ones(1), levels[:-1]]), 0), persistent=False
        )
        # every code's vector [codebook_size, code_dim]: saved, so readers need not know FSQ
        self.register_buffer("grid", self._vectors(torch.arange(cfg.codebook_size)))

    def _vectors(self, codes: torch.Tensor) -> torch.Tensor:
        digits = (codes[..., None] // self.basis) % self.levels
        return (digits - self.levels // 2).float() / (self.levels // 2).float()

    @property
    def codebook(self) -> torch.Tensor:
        return self.grid

    @property
    def code_levels(self) -> list[int]:
        return [int(level) for level in self.levels]

    def _bounded(self, z: torch.Tensor) -> torch.Tensor:
        """[..., D] -> values whose rounding lands on the D dimensions' levels."""
        half = (self.levels - 1) * (1 - 1e-3) / 2
        offset = (self.levels % 2 == 0).float() * 0.5  # even levels: a grid shifted by half a step
        return torch.tanh(z + torch.atanh(offset / half)) * half - offset

    def _round(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder outputs [B, D, h, w] -> rounded values [B, h, w, D] (straight-through) and codes."""
        bounded = self._bounded(rearrange(z.float(), "b d h w -> b h w d"))
        rounded = bounded + (bounded.round() - bounded).detach()
        digits = rounded.detach().round().long() + self.levels // 2
        return rounded, (digits * self.basis).sum(-1)

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        return self._round(z)[1]

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        return rearrange(F.embedding(codes, self.grid), "b h w d -> b d h w")

    def forward(
        self, z: torch.Tensor, blank: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rounded, codes = self._round(z)
        quantised = rearrange(rounded / (self.levels // 2).float(), "b h w d -> b d h w")
        if blank is not None:
            codes = codes.masked_fill(blank, BLANK_CODE)
            quantised = torch.where(blank[:, None], self.embed(codes), quantised)
        return quantised, quantised.new_zeros(()), codes

    def dead_codes(self) -> torch.Tensor:
        return torch.zeros(self.codebook_size, dtype=torch.bool, device=self.usage.device)

    def restart_dead_codes(self, candidates: torch.Tensor, generator: torch.Generator) -> int:
        return 0


# the quantizers by their `tokenizer.model.quantizer` name: the one place that name is read
QUANTIZERS: dict[str, type[BaseQuantizer]] = {"vq": Quantizer, "fsq": FiniteScalarQuantizer}


def make_quantizer(cfg: VQGANConfig) -> BaseQuantizer:
    return QUANTIZERS[cfg.quantizer](cfg)


@dataclass(frozen=True)
class VQGANOutput:
    """One training forward of the VQGAN."""

    recon: torch.Tensor  # reconstructed frames [B, C, H, W]
    quant_loss: torch.Tensor  # codebook + weighted commitment loss
    codes: torch.Tensor  # [B, h, w]
    z: torch.Tensor  # encoder outputs [B, D, h, w], before normalising
    blank: torch.Tensor | None  # [B, h, w]: background patches given code 0 (None: option off)


class VQGAN(nn.Module):
    def __init__(self, cfg: VQGANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quantizer = make_quantizer(cfg)
        self.decoder = Decoder(cfg)

    def blank_patches(self, frames: torch.Tensor) -> torch.Tensor | None:
        """Frames [B, C, H, W] in [-1, 1] -> [B, h, w]: patches dark enough to be background."""
        if self.config.blank_threshold is None:
            return None
        brightest = F.max_pool2d((frames.float().amax(1, keepdim=True) + 1) / 2, self.config.downsample)
        return brightest[:, 0] <= self.config.blank_threshold

    def forward(self, frames: torch.Tensor) -> VQGANOutput:
        z = self.encoder(frames)
        blank = self.blank_patches(frames)
        quantised, quant_loss, codes = self.quantizer(z, blank)
        return VQGANOutput(self.decoder(quantised), quant_loss, codes, z, blank)

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        codes = self.quantizer.lookup(self.encoder(frames))
        blank = self.blank_patches(frames)
        return codes if blank is None else codes.masked_fill(blank, BLANK_CODE)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.quantizer.embed(codes))


class PatchDiscriminator(nn.Module):
    """PatchGAN: a real/fake score per overlapping patch, not per image."""

    def __init__(self, in_channels: int, channels: int = 32, layers: int = 3):
        super().__init__()
        blocks: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
        ]
        current = channels
        for index in range(1, layers):
            width = channels * min(2**index, 8)
            stride = 2 if index < layers - 1 else 1
            blocks += [
                nn.Conv2d(current, width, 4, stride=stride, padding=1),
                group_norm(width),
                nn.LeakyReLU(0.2),
            ]
            current = width
        blocks.append(nn.Conv2d(current, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*blocks)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return self.layers(frames)


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_gan_weight(nll: torch.Tensor, gan: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """Balance the GAN term against reconstruction at the decoder's last layer (Esser et al. 2021)."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    gan_grad = torch.autograd.grad(gan, last_layer, retain_graph=True)[0]
    return (nll_grad.norm() / (gan_grad.norm() + 1e-4)).clamp(0.0, 1e4).detach()


# VGG16's convolutional trunk, laid out as torchvision's `features` so that a
# state dict exported from it (keys features.N.weight / features.N.bias) loads.
VGG16_LAYOUT = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]
VGG16_TAPS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3


class PerceptualLoss(nn.Module):
    """LPIPS-style distance on frozen VGG16 features loaded from a local file."""

    def __init__(self, weights_path: str):
        super().__init__()
        from safetensors.torch import load_file

        layers: list[nn.Module] = []
        channels = 3
        for item in VGG16_LAYOUT:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)
        state = {k: v for k, v in load_file(weights_path).items() if k.startswith("features.")}
        missing, _ = self.features.load_state_dict(
            {k.removeprefix("features."): v for k, v in state.items()}, strict=False
        )
        if missing:
            raise ValueError(f"{weights_path}: not VGG16 features weights (missing {missing[:3]} ...)")
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def _taps(self, frames: torch.Tensor) -> list[torch.Tensor]:
        x = (frames.expand(-1, 3, -1, -1) + 1) / 2
        x = (x - self.mean) / self.std
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG16_TAPS:
                taps.append(x / (x.norm(dim=1, keepdim=True) + 1e-10))
        return taps

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(
            (a - b).pow(2).sum(1).mean() for a, b in zip(self._taps(recon), self._taps(target), strict=True)
        )
