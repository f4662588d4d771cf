"""Typed settings of the tokenizer: the architecture (stored in config.json) and
the training run. Plain dataclasses without torch, so the CLI's config can embed
them without importing the model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

MAX_CODEBOOK = 65536  # codes are stored as uint16


@dataclass
class VQGANConfig:
    """Architecture of the per-frame VQGAN; what `config.json` holds."""

    in_channels: int = 1  # 1 grey, 3 RGB
    frame_size: int = 64
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)  # one level each; len - 1 halvings
    num_res_blocks: int = 1  # residual blocks per level...
    full_res_blocks: bool = False  # ...except at full resolution, where they cost most on a CPU
    attention: bool = True  # self-attention at the lowest resolution
    codebook_size: int = 512
    code_dim: int = 16  # low-dimensional, l2-normalised lookup
    commitment_weight: float = 0.25
    usage_decay: float = 0.99  # EMA of how often each code is used
    dead_code_fraction: float = 0.03  # dead: used less than this share of a uniform code's rate
    disc_channels: int = 32
    # One consistent token for empty background: a patch whose pixels all lie at or below this
    # level (in [0, 1]) takes code 0, in training and encoding alike. Left to the nearest code,
    # blank patches scatter over hundreds of codes by encoder noise, which a dynamics model
    # cannot predict. None: off.
    blank_threshold: float | None = None

    def __post_init__(self) -> None:
        self.channel_mults = tuple(self.channel_mults)
        if self.in_channels not in (1, 3):
            raise ValueError(f"in_channels: given {self.in_channels}, expected 1 (grey) or 3 (RGB)")
        if self.downsample not in (4, 8, 16):
            raise ValueError(
                f"channel_mults: given {len(self.channel_mults)} levels (x{self.downsample}), "
                "expected 3, 4 or 5 levels (downsampling x4, x8 or x16)"
            )
        if self.frame_size < 16:
            raise ValueError(
                f"frame_size: given {self.frame_size}, expected at least 16 (the patch discriminator)"
            )
        if self.frame_size % self.downsample:
            raise ValueError(f"frame_size: given {self.frame_size}, expected a multiple of {self.downsample}")
        if self.blank_threshold is not None and not 0 <= self.blank_threshold < 1:
            raise ValueError(f"blank_threshold: given {self.blank_threshold}, expected 0 <= value < 1")
        if not 2 <= self.codebook_size <= MAX_CODEBOOK:
            raise ValueError(f"codebook_size: given {self.codebook_size}, expected 2..{MAX_CODEBOOK}")

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
        return {**asdict(self), "channel_mults": list(self.channel_mults)}


@dataclass
class TokenizerSettings:
    """One `train-tokenizer` run."""

    model: VQGANConfig = field(default_factory=VQGANConfig)
    max_steps: int = 600
    batch_videos: int = 8  # videos per batch on each rank
    frames_per_video: int = 4  # frames drawn from each video: a batch holds batch_videos x this
    lr: float = 4e-4
    disc_lr: float = 4e-4
    betas: tuple[float, float] = (0.5, 0.9)
    warmup_steps: int = 50
    grad_accum: int = 1
    grad_clip: float = 1.0
    recon_loss: Literal["l1", "l2"] = "l1"
    disc_start: int = 400  # the discriminator joins at this step
    disc_weight: float = 0.1
    perceptual_weight: float = 0.0
    perceptual_weights: str | None = None  # local safetensors of VGG16 features; never downloaded
    restart_every: int = 25  # dead-code restart period, in steps
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    num_workers: int = 1
    log_every: int = 10
    eval_every: int = 200
    eval_videos: int = 32
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        if self.perceptual_weight > 0 and not self.perceptual_weights:
            raise ValueError(
                "perceptual_weights: given None, expected a local safetensors file when perceptual_weight > 0"
            )
