"""Typed settings of the tokenizer: the architecture (stored in config.json) and
the training run. Validated dataclasses without torch, so the CLI's config embeds
them without importing the model, and a bad value names its dotted key."""

from __future__ import annotations

import math
from dataclasses import asdict, field
from typing import Literal

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from common.settings import STRICT, TrainingRun, problem

MAX_CODEBOOK = 65536  # codes are stored as uint16


@dataclass(config=STRICT)
class VQGANConfig:
    """Architecture of the per-frame VQGAN; what `config.json` holds."""

    in_channels: int = Field(1, description="colour channels of a frame: 1 grey, 3 RGB")
    frame_size: int = Field(64, description="side of the square frames it encodes, in pixels")
    base_channels: int = Field(
        32, ge=1, description="width of the first level; level i has base_channels x channel_mults[i]"
    )
    channel_mults: tuple[int, ...] = Field(
        (1, 2, 2), description="one width multiplier per level; len - 1 halvings (3 levels: x4 down, 4: x8)"
    )
    num_res_blocks: int = Field(1, ge=0, description="residual blocks per level (see full_res_blocks)")
    full_res_blocks: bool = Field(
        False, description="residual blocks at full resolution too, where they cost most on a CPU"
    )
    attention: bool = Field(True, description="self-attention at the lowest resolution")
    # fsq: finite scalar quantization (Mentzer et al. 2023): each of code_dim = len(fsq_levels)
    # dimensions is bounded and rounded to one of its levels, the codes are every combination
    # (codebook_size = their product), nothing is learned in the quantizer and no code can die
    quantizer: Literal["vq", "fsq"] = Field(
        "vq",
        description="vq: a learned codebook (nearest code by cosine); "
        "fsq: each dimension rounded to its levels",
    )
    fsq_levels: tuple[int, ...] | None = Field(
        None, description="fsq: the levels of each code dimension, e.g. [8, 8, 8, 5, 5, 5]"
    )
    codebook_size: int = Field(
        512, description="codes; fsq: the product of fsq_levels (at most 65,536: codes are stored as uint16)"
    )
    code_dim: int = Field(16, ge=1, description="dimensions of a code vector; fsq: len(fsq_levels)")
    commitment_weight: float = Field(0.25, ge=0, description="vq: weight of the commitment loss")
    usage_decay: float = Field(0.99, ge=0, lt=1, description="vq: EMA decay of how often each code is used")
    dead_code_fraction: float = Field(
        0.03, ge=0, description="vq: a code used less than this share of a uniform code's rate is restarted"
    )
    disc_channels: int = Field(32, ge=1, description="width of the patch discriminator")
    # Left to the nearest code, blank patches scatter over hundreds of codes by encoder noise,
    # which a dynamics model cannot predict.
    blank_threshold: float | None = Field(
        None,
        description="a patch whose pixels all lie at or below this level (in [0, 1]) takes code 0, "
        "in training and encoding alike: one token for empty background; None: off",
    )

    @model_validator(mode="after")
    def _consistent(self) -> VQGANConfig:
        if self.in_channels not in (1, 3):
            raise problem("in_channels", self.in_channels, "1 (grey) or 3 (RGB)")
        if self.downsample not in (4, 8, 16):
            raise problem(
                "channel_mults",
                f"{len(self.channel_mults)} levels (x{self.downsample})",
                "3, 4 or 5 levels (downsampling x4, x8 or x16)",
            )
        if self.frame_size < 16:
            raise problem("frame_size", self.frame_size, "at least 16 (the patch discriminator)")
        if self.frame_size % self.downsample:
            raise problem("frame_size", self.frame_size, f"a multiple of {self.downsample}")
        if self.blank_threshold is not None and not 0 <= self.blank_threshold < 1:
            raise problem("blank_threshold", self.blank_threshold, "0 <= value < 1")
        if not 2 <= self.codebook_size <= MAX_CODEBOOK:
            raise problem("codebook_size", self.codebook_size, f"2..{MAX_CODEBOOK}")
        if self.quantizer == "fsq":
            levels = self.fsq_levels
            # 3 at least: the bound that keeps rounding on the levels leaves no room for 2
            if not levels or any(not 3 <= level <= 64 for level in levels):
                raise problem(
                    "fsq_levels", levels, "levels of 3..64 per code dimension, e.g. [8, 8, 8, 5, 5, 5]"
                )
            if self.code_dim != len(levels):
                raise problem("code_dim", self.code_dim, f"{len(levels)}: one dimension per fsq_levels entry")
            if self.codebook_size != math.prod(levels):
                raise problem(
                    "codebook_size", self.codebook_size, f"{math.prod(levels)}: the product of fsq_levels"
                )
        return self

    @property
    def res_blocks_per_level(self) -> list[int]:
        first = self.num_res_blocks if self.full_res_blocks else 0
        return [first] + [self.num_res_blocks] * (len(self.channel_mults) - 1)

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.channel_mults) - 1)

    @property
    def grid(self) -> int:
        return self.frame_size // self.downsample

    def to_dict(self) -> dict:
        levels = None if self.fsq_levels is None else list(self.fsq_levels)
        return {**asdict(self), "channel_mults": list(self.channel_mults), "fsq_levels": levels}


@dataclass(config=STRICT)
class TokenizerSettings(TrainingRun):
    """One `train-tokenizer` run."""

    model: VQGANConfig = field(default_factory=VQGANConfig)
    max_steps: int = Field(600, ge=1, description="optimizer steps; the result is set by steps")
    batch_videos: int = Field(8, ge=1, description="videos per batch on each rank")
    frames_per_video: int = Field(
        4, ge=1, description="frames drawn from each video: a batch holds batch_videos x this"
    )
    lr: float = Field(
        4e-4, gt=0, description="peak learning rate of the autoencoder (cosine decay after warmup)"
    )
    disc_lr: float = Field(4e-4, gt=0, description="learning rate of the discriminator")
    betas: tuple[float, float] = Field((0.5, 0.9), description="Adam's betas")
    recon_loss: Literal["l1", "l2"] = Field("l1", description="pixel reconstruction loss")
    disc_start: int = Field(400, ge=0, description="the step at which the discriminator joins")
    disc_weight: float = Field(0.1, ge=0, description="weight of the adversarial loss once it joins")
    perceptual_weight: float = Field(0.0, ge=0, description="weight of the VGG16 perceptual loss; 0: off")
    perceptual_weights: str | None = Field(
        None,
        description="local safetensors of VGG16 features (never downloaded); "
        "needed when perceptual_weight > 0",
    )
    restart_every: int = Field(25, ge=1, description="vq: steps between dead-code restarts")
    num_workers: int = Field(
        1, ge=0, description="DataLoader workers decoding frames; 0: in the training process"
    )
    frame_cache_mb: float = Field(
        1024.0,
        ge=0,
        description="decoded frames each reader keeps of videos of at most 64 frames, so the epochs "
        "after the first decode nothing; 0: decode every time",
    )
    eval_videos: int = Field(32, ge=1, description="validation videos scored at each validation")

    @model_validator(mode="after")
    def _weights_given(self) -> TokenizerSettings:
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise problem("perceptual_weights", None, "a local safetensors file when perceptual_weight > 0")
        return self
