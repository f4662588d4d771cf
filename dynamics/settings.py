"""Typed settings of the dynamics model and its training run (no torch here, so
the CLI's config can embed them cheaply; validated, so a bad value names its key)."""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from pydantic import Field, model_validator
from pydantic.dataclasses import dataclass

from common.settings import STRICT, problem


@dataclass(config=STRICT)
class STTransformerConfig:
    """Architecture; `config.json` holds it with the grid and codebook it was built for."""

    d_model: int = Field(128, ge=1)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    ff_mult: int = Field(4, ge=1)
    # regression: the next code vectors, MSE (the original's); categorical: a softmax over codes;
    # tied: code vectors scored against the frozen codebook by cosine, a softmax over those
    # scores (a categorical head whose output weights are the codebook); factorized: for an FSQ
    # tokenizer, a softmax per code dimension over its levels
    head: Literal["regression", "categorical", "tied", "factorized"] = "regression"
    kl_weight: float = Field(1e-6, ge=0)  # the original's weight on the Gaussian layers' KL
    gaussian_kernel: int = Field(3, ge=1)  # the Gaussian layer's convolution over the latent grid
    # full: one k x k convolution from d_model to mean and log-variance (the original's; on an 8x8
    # grid at d_model 64 it is about half of a step's FLOPs); separable: a depthwise k x k over each
    # channel, then a 1x1 to mean and log-variance (about a tenth of those FLOPs, the same field of view)
    gaussian_conv: Literal["full", "separable"] = "full"
    logvar_min: float = -10.0
    logvar_max: float = 2.0
    # rotary: temporal attention sees how far back a frame is, not where it sits, so generation
    # slides a fixed ring of the last `max_frames` frames and runs any length at a flat cost per
    # frame; learned: one learned embedding per position (the original's; checkpoints written
    # before rotary have these, and their rollouts rebuild the cache once the window is full)
    temporal_positions: Literal["rotary", "learned"] = "rotary"
    # the temporal window, start frame included: learned positions' count; with rotary, how many
    # frames a frame attends to (itself included) and the size of generation's key/value ring
    max_frames: int = Field(32, ge=2)
    # predict the change from the previous frame (a bias towards "nothing moved", which most latent
    # pixels of a frame obey): regression and tied heads add its code vectors, the factorized head a
    # learned logit to each dimension's previous level; the head starts at zero, so an untrained
    # model copies the last frame (categorical: no residual form)
    residual: bool = False
    # latent pixels per token along each side (DiT's patch size on latents): a p x p square of
    # codes is embedded as one token and predicted from one, so attention and the feed-forward
    # see p^2 fewer tokens; the head still names every code. 1: a token per latent pixel
    patch: int = Field(1, ge=1)

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
class DynamicsSettings:
    """One `train-dynamics` run."""

    model: STTransformerConfig = field(default_factory=STTransformerConfig)
    max_steps: int = Field(1000, ge=1)
    # a wall-clock budget besides the steps: the run stops (evaluating and saving) at whichever
    # comes first, and the LR decays over it; a resumed run spends only what is left
    max_minutes: float | None = Field(None, gt=0)
    batch_size: int = Field(8, ge=1)  # clips per batch on each rank
    min_frames: int | None = Field(
        None, ge=1
    )  # train on random lengths min_frames..clip_frames (padding mask)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(50, ge=0)
    grad_accum: int = Field(1, ge=1)
    grad_clip: float = Field(1.0, gt=0)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cuda", "mps", "cpu"] = Field(
        "auto", description="where it trains; auto: CUDA, then MPS (Apple silicon), then the CPU"
    )
    num_workers: int = Field(0, ge=0)
    shuffle_buffer: int = Field(256, ge=1)
    # train only on clips that move: train-split clips whose motion score (the mean grey change
    # between frames, 0-255, scored at encode) is below this are skipped; validation, test and
    # the store keep every clip
    min_motion: float | None = Field(None, ge=0)
    log_every: int = Field(10, ge=1)
    eval_every: int = Field(200, ge=1)
    eval_batches: int = Field(8, ge=1)
    checkpoint_every: int = Field(200, ge=1)
    seed: int = 0
    # Train as it generates: before a step, `rollout_passes` gradient-free passes replace the
    # input frames after a random prompt (rollout_prompt..clip_frames - 1 frames) with the
    # model's own predictions, so it learns to go on from its errors rather than compound them
    # into a fade. Pass k makes the k-th predicted frame exactly what free running would feed;
    # passes as many as the frames after the prompt (e.g. clip_frames) make all of them exact, by
    # one cached rollout that costs about one pass.
    rollout_passes: int = Field(0, ge=0)
    rollout_prompt: int = Field(5, ge=1)
    rollout_prob: float = Field(1.0, ge=0, le=1)  # share of steps that do it

    @model_validator(mode="after")
    def _min_frames_fit(self) -> DynamicsSettings:
        if self.min_frames is not None and self.min_frames > self.model.max_frames:
            raise problem(
                "min_frames", self.min_frames, f"at most model.max_frames ({self.model.max_frames})"
            )
        return self
