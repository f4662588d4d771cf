"""Typed settings of the tokenizer: the architecture (stored in config.json) and
the training run. Validated dataclasses without torch, so the CLI's config embeds
them without importing the model, and a bad value names its dotted key."""

from __future__ import annotations

import math
from dataclasses import asdict, field
from typing import Literal

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from common.settings import STRICT, problem

MAX_CODEBOOK = 65536  # codes are stored as uint16


@dataclass(config=STRICT)
class VQGANConfig:
    """Architecture of the per-frame VQGAN; what `config.json` holds."""

    in_channels: int = 1  # 1 grey, 3 RGB
    frame_size: int = 64
    base_channels: int = Field(32, ge=1)
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one level each; len - 1 halvings
    num_res_blocks: int = Field(1, ge=0)  # residual blocks per level...
    full_res_blocks: bool = False  # ...except at full resolution, where they cost most on a CPU
    attention: bool = True  # self-attention at the lowest resolution
    # vq: a learned codebook, nearest code by cosine (l2-normalised); fsq: finite scalar
    # quantization (Mentzer et al. 2023): each of code_dim = len(fsq_levels) dimensions is bounded
    # and rounded to one of its levels, the codes are every combination (codebook_size = their
    # product), nothing is learned in the quantizer and no code can die
    quantizer: Literal["vq", "fsq"] = "vq"
    fsq_levels: tuple[int, ...] | None = None
    codebook_size: int = 512
    code_dim: int = Field(16, ge=1)  # low-dimensional, l2-normalised lookup
    commitment_weight: float = Field(0.25, ge=0)
    usage_decay: float = Field(0.99, ge=0, lt=1)  # EMA of how often each code is used
    dead_code_fraction: float = Field(0.03, ge=0)  # dead: used less than this share of a uniform code's rate
    disc_channels: int = Field(32, ge=1)
    # One consistent token for empty background: a patch whose pixels all lie at or below this
    # level (in [0, 1]) takes code 0, in training and encoding alike. Left to the nearest code,
    # blank patches scatter over hundreds of codes by encoder noise, which a dynamics model
    # cannot predict. None: off.
    blank_threshold: float | None = None

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
class TokenizerSettings:
    """One `train-tokenizer` run."""

    model: VQGANConfig = field(default_factory=VQGANConfig)
    max_steps: int = Field(600, ge=1)
    # a wall-clock budget besides the steps: the run stops (evaluating and saving) at whichever
    # comes first, and the LR decays over it; a resumed run spends only what is left
    max_minutes: float | None = Field(None, gt=0)
    batch_videos: int = Field(8, ge=1)  # videos per batch on each rank
    frames_per_video: int = Field(4, ge=1)  # frames drawn from each video: a batch holds batch_videos x this
    lr: float = Field(4e-4, gt=0)
    disc_lr: float = Field(4e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.9)
    warmup_steps: int = Field(50, ge=0)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float = Field(1.0, gt=0)
    recon_loss: Literal["l1", "l2"] = "l1"
    disc_start: int = Field(400, ge=0)  # the discriminator joins at this step
    disc_weight: float = Field(0.1, ge=0)
    perceptual_weight: float = Field(0.0, ge=0)
    perceptual_weights: str | None = None  # local safetensors of VGG16 features; never downloaded
    restart_every: int = Field(25, ge=1)  # dead-code restart period, in steps
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto", description="where it trains; auto: CUDA, then MPS (Apple silicon), then the CPU"
    )
    num_workers: int = Field(1, ge=0)
    # decoded frames each reader (DataLoader worker) keeps of videos of at most 64 frames, so the
    # epochs after the first decode nothing; 0: decode every time
    frame_cache_mb: float = Field(1024.0, ge=0)
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(200, ge=1)
    eval_videos: int = Field(32, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _weights_given(self) -> TokenizerSettings:
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise problem("perceptual_weights", None, "a local safetensors file when perceptual_weight > 0")
        return self
