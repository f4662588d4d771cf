"""Typed settings of the dynamics model and its training run (no torch here, so
the CLI's config can embed them cheaply)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class STTransformerConfig:
    """Architecture; `config.json` holds it with the grid and codebook it was built for."""

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ff_mult: int = 4
    # regression: the next code vectors, MSE (the original's); categorical: a softmax over codes;
    # tied: code vectors scored against the frozen codebook by cosine, a softmax over those
    # scores (a categorical head whose output weights are the codebook)
    head: Literal["regression", "categorical", "tied"] = "regression"
    kl_weight: float = 1e-6  # the original's weight on the Gaussian layers' KL
    gaussian_kernel: int = 3  # the Gaussian layer's convolution over the latent grid
    logvar_min: float = -10.0
    logvar_max: float = 2.0
    max_frames: int = 32  # temporal positions, start frame included
    # regression and tied heads: predict the change from the previous frame's code vectors (a bias
    # towards "nothing moved", which most latent pixels of a frame obey)
    residual: bool = False

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model: given {self.d_model}, expected a multiple of n_heads ({self.n_heads})"
            )
        if self.gaussian_kernel % 2 == 0:
            raise ValueError(f"gaussian_kernel: given {self.gaussian_kernel}, expected an odd size")


@dataclass
class DynamicsSettings:
    """One `train-dynamics` run."""

    model: STTransformerConfig = field(default_factory=STTransformerConfig)
    max_steps: int = 1000
    batch_size: int = 8  # clips per batch on each rank
    min_frames: int | None = None  # train on random lengths min_frames..clip_frames (padding mask)
    lr: float = 5e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 50
    grad_accum: int = 1
    grad_clip: float = 1.0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    num_workers: int = 0
    shuffle_buffer: int = 256
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 8
    checkpoint_every: int = 200
    seed: int = 0
    # Train as it generates: before a step, `rollout_passes` gradient-free passes replace the
    # input frames after a random prompt (rollout_prompt..clip_frames - 1 frames) with the
    # model's own predictions, so it learns to go on from its errors rather than compound them
    # into a fade. Pass k makes the k-th predicted frame exactly what free running would feed.
    rollout_passes: int = 0
    rollout_prompt: int = 5
    rollout_prob: float = 1.0  # share of steps that do it

    def __post_init__(self) -> None:
        if not 0 <= self.rollout_prob <= 1:
            raise ValueError(f"rollout_prob: given {self.rollout_prob}, expected 0..1")
        if self.rollout_passes < 0:
            raise ValueError(f"rollout_passes: given {self.rollout_passes}, expected at least 0")
        if self.rollout_prompt < 1:
            raise ValueError(f"rollout_prompt: given {self.rollout_prompt}, expected at least 1")
