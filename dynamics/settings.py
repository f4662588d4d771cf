"""Typed settings of the dynamics model and its training run (no torch here, so
the CLI's config can embed them cheaply; validated, so a bad value names its key)."""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from common.settings import STRICT, TrainingRun, problem


@dataclass(config=STRICT)
class STTransformerConfig:
    """Architecture; `config.json` holds it with the grid and codebook it was built for."""

    d_model: int = Field(128, ge=1, description="width of every token")
    n_layers: int = Field(
        4, ge=1, description="blocks of spatial attention, causal temporal attention and a Gaussian layer"
    )
    n_heads: int = Field(4, ge=1, description="attention heads; d_model must be a multiple")
    ff_mult: int = Field(4, ge=1, description="the feed-forward's width, in d_model")
    head: Literal["regression", "categorical", "tied", "factorized"] = Field(
        "regression",
        description="regression: the next code vectors, MSE (the original's); categorical: a softmax over "
        "codes; tied: code vectors scored against the frozen codebook by cosine, a softmax over those "
        "scores; factorized: for an FSQ tokenizer, a softmax per code dimension over its levels",
    )
    kl_weight: float = Field(
        1e-6, ge=0, description="weight of the Gaussian layers' KL term (the original's)"
    )
    gaussian_kernel: int = Field(
        3, ge=1, description="the Gaussian layer's convolution over the latent grid (an odd size)"
    )
    # the full layer on an 8x8 grid at d_model 64 is about half of a step's FLOPs
    gaussian_conv: Literal["full", "separable"] = Field(
        "full",
        description="full: one k x k convolution from d_model to mean and log-variance (the original's); "
        "separable: a depthwise k x k, then a 1x1 (about a tenth of the FLOPs, the same field of view)",
    )
    logvar_min: float = Field(
        -10.0, description="the Gaussian layer's log-variance is clamped to at least this"
    )
    logvar_max: float = Field(2.0, description="the Gaussian layer's log-variance is clamped to at most this")
    # checkpoints written before rotary have learned positions, and their rollouts rebuild the
    # cache once the window is full
    temporal_positions: Literal["rotary", "learned"] = Field(
        "rotary",
        description="rotary: temporal attention sees how far back a frame is, so generation runs any "
        "length at a flat cost per frame; learned: one embedding per position (the original's)",
    )
    max_frames: int = Field(
        32,
        ge=2,
        description="the temporal window, start frame included: learned positions' count; with rotary, "
        "how many frames a frame attends to and the size of generation's key/value ring",
    )
    residual: bool = Field(
        False,
        description="predict the change from the previous frame (an untrained model copies the last "
        "frame): regression and tied heads add its code vectors, factorized a logit to its levels",
    )
    patch: int = Field(
        1,
        ge=1,
        description="latent pixels per token along each side (DiT's patch size on latents): p^2 fewer "
        "tokens for attention and the feed-forward; the head still names every code",
    )

    @model_validator(mode="after")
    def _consistent(self) -> STTransformerConfig:
        if self.d_model % self.n_heads:
            raise problem("d_model", self.d_model, f"a multiple of n_heads ({self.n_heads})")
        if self.temporal_positions == "rotary" and (self.d_model // self.n_heads) % 2:
            raise problem(
                "d_model", self.d_model, "an even width per head (d_model / n_heads) for rotary positions"
            )
        if self.gaussian_kernel % 2 == 0:
            raise problem("gaussian_kernel", self.gaussian_kernel, "an odd size")
        return self


@dataclass(config=STRICT)
class DynamicsSettings(TrainingRun):
    """One `train-dynamics` run."""

    model: STTransformerConfig = field(default_factory=STTransformerConfig)
    max_steps: int = Field(1000, ge=1, description="optimizer steps; the result is set by steps")
    batch_size: int = Field(8, ge=1, description="clips per batch on each rank")
    min_frames: int | None = Field(
        None,
        ge=1,
        description="train on random lengths min_frames..clip_frames (a padding mask); None: whole clips",
    )
    lr: float = Field(5e-4, gt=0, description="peak learning rate (cosine decay after warmup)")
    weight_decay: float = Field(0.01, ge=0, description="AdamW's weight decay")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW's betas")
    num_workers: int = Field(
        0, ge=0, description="DataLoader workers reading latent shards; 0: in the training process"
    )
    shuffle_buffer: int = Field(256, ge=1, description="clips shuffled together as the shards stream")
    min_motion: float | None = Field(
        None,
        ge=0,
        description="train only on clips that move: train-split clips whose motion score (mean grey change "
        "between frames, 0-255, from encode) is below this are skipped; other splits keep every clip",
    )
    eval_batches: int = Field(8, ge=1, description="validation batches scored at each validation")
    # Pass k makes the k-th predicted frame exactly what free running would feed; passes as many
    # as the frames after the prompt make all of them exact, by one cached rollout that costs
    # about one pass.
    rollout_passes: int = Field(
        0,
        ge=0,
        description="train as it generates: passes, without gradients, that replace the frames after a "
        "random prompt with the model's own predictions before a step; 0: off",
    )
    rollout_prompt: int = Field(
        5, ge=1, description="the shortest prompt a rollout keeps (up to clip_frames - 1 frames)"
    )
    rollout_prob: float = Field(1.0, ge=0, le=1, description="share of steps that roll out")

    @model_validator(mode="after")
    def _min_frames_fit(self) -> DynamicsSettings:
        if self.min_frames is not None and self.min_frames > self.model.max_frames:
            raise problem(
                "min_frames", self.min_frames, f"at most model.max_frames ({self.model.max_frames})"
            )
        return self
