"""Train the Spatial-Temporal Transformer with Accelerate on codes streamed from latents.zarr.

Read top to bottom: setup (codebook, store, model) and resume, the step, validation,
checkpoints; the loop around them is `common.training`'s. No pixels are ever decoded:
the data are codebook indices, and the model embeds them with the tokenizer's frozen
code vectors. Each rank reads its own shards through `LatentClips`; the DataLoader is
not handed to Accelerate, which would dispatch or re-shard it.

The same function runs in one process, under `accelerate launch` or torchrun, and
inside Ray Train workers (`TorchTrainer`), which set up the process group that
Accelerate then joins.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from common import training
from dynamics.checkpoint import load_codebook, save_dynamics
from dynamics.model import STTransformer
from dynamics.rollout import rollout
from dynamics.settings import DynamicsSettings
from pipeline.latents import LatentClips, clips_above, open_latents
from pipeline.splits import TRAIN, VAL


def train_dynamics(
    settings: DynamicsSettings,
    latents_uri: str,
    tokenizer_dir: str | Path,
    out: str | Path | training.Persistence,
    log_metrics: training.MetricsLogger | None = None,
) -> dict[str, float]:
    """`out`: the checkpoint folder, or where its checkpoints become durable (`Persistence`)."""
    out = training.persistence_of(out)
    out_dir = out.local
    accelerator = training.make_accelerator(settings.mixed_precision, settings.grad_accum, settings.device)
    device = accelerator.device

    # --- the tokenizer's codebook and the store it encoded (refused if another tokenizer's) ---
    codebook, code_levels, tokenizer_identity = load_codebook(tokenizer_dir)
    store, counts = checked_store(latents_uri, tokenizer_identity, settings)
    clip_frames, grid = int(store.attrs["clip_frames"]), tuple(store.attrs["grid"])

    # --- the model, its optimizer and schedule, then the state of a run that stopped ----------
    torch.manual_seed(settings.seed)
    model = STTransformer(settings.model, codebook, grid, code_levels)
    budget = training.Budget(settings.max_minutes)
    optimizer, schedule = training.adamw(
        model.parameters(),
        settings.lr,
        settings.betas,
        settings.weight_decay,
        settings.warmup_steps,
        settings.max_steps,
        budget,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    # every rank starts from the same weights (seeded above) but draws its own Gaussian-layer noise
    torch.manual_seed(settings.seed + accelerator.process_index)
    progress = training.resume_progress(accelerator, out, "train-dynamics", schedule, budget=budget)
    loader = clip_batches(settings, latents_uri, tokenizer_identity, accelerator, progress.step)
    plain = accelerator.unwrap_model(model)

    def train_step() -> training.StepResult | None:
        codes, lengths, inputs = step_batch(
            settings,
            plain,
            next(loader).to(device),
            progress.step,
            accelerator.process_index,
            accelerator.autocast,
        )
        with accelerator.accumulate(model):
            with accelerator.autocast():
                losses = model(codes, lengths, inputs=inputs)
            accelerator.backward(losses.loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), settings.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            return None
        schedule.step()
        tokens = codes.shape[0] * codes.shape[1] * grid[0] * grid[1]  # as fed, padding included
        return training.StepResult(tokens, lambda: {**losses.metrics(), "lr": schedule.get_last_lr()[0]})

    summary = training.run_loop(
        accelerator,
        progress,
        settings,
        out,
        name="train-dynamics",
        unit="tokens",
        step=train_step,
        evaluate=lambda: validate(plain, latents_uri, settings),
        write_checkpoint=lambda: save_dynamics(
            plain, out_dir, tokenizer_identity, {"clip_frames": clip_frames}
        ),
        log_metrics=log_metrics,
    )
    return {**summary, **counts}


def checked_store(latents_uri: str, tokenizer_identity: str, settings: DynamicsSettings):
    """The latent store (refused if another tokenizer encoded it) and its clip counts per split
    and motion, once it is known to hold what training needs: clips the model's window takes,
    validation clips and training clips that move. Every rank checks, so a missing split fails
    on all of them now, not on rank 0 at the first evaluation."""
    store = open_latents(latents_uri, tokenizer_identity=tokenizer_identity)
    clip_frames, max_frames = int(store.attrs["clip_frames"]), settings.model.max_frames
    if max_frames < clip_frames:
        raise ValueError(
            f"model.max_frames: given {max_frames}, expected at least clip_frames ({clip_frames})"
        )
    if not (store.group["split"][:] == VAL).any():
        raise RuntimeError("no validation clips: raise data.val_fraction or ingest more videos")
    counts = clips_above(store, settings.min_motion)  # what the motion threshold leaves, per split
    if counts["clips_train_moving"] == 0:
        raise ValueError(
            f"min_motion: given {settings.min_motion}; no training clip moves that much "
            f"(of {counts['clips_train']}): lower it"
        )
    return store, counts


def clip_batches(
    settings: DynamicsSettings,
    latents_uri: str,
    tokenizer_identity: str,
    accelerator: Accelerator,
    steps_done: int,
) -> Iterator[torch.Tensor]:
    """This rank's own reader of training clips, fast-forwarded past `steps_done` steps."""
    dataset = LatentClips(
        latents_uri,
        TRAIN,
        tokenizer_identity=tokenizer_identity,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        shuffle_buffer=settings.shuffle_buffer,
        seed=settings.seed,
        repeat=True,
        min_motion=settings.min_motion,
        skip_per_worker=training.skip_per_worker(
            steps_done * settings.grad_accum, settings.num_workers, settings.batch_size
        ),
        batch_size=settings.batch_size,  # stacked by the reader: the DataLoader's batches, faster
    )
    return training.batches(dataset, None, settings.num_workers, settings.seed)


def step_batch(
    settings: DynamicsSettings,
    model: STTransformer,
    codes: torch.Tensor,
    step: int,
    rank: int,
    autocast: Callable[[], AbstractContextManager] = nullcontext,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """What training step `step` feeds the model: the clips [B, T, h, w] with random lengths
    (`min_frames`: the original trained on 10 to 20 frames) and, on the steps that roll out, the
    free-running inputs. Frames past the longest length are out of the loss and, coming later,
    reach no earlier frame: the clips are cut there, the same loss for less work."""
    frames = codes.shape[1]
    prompt = rollout_prompt(settings, frames, step, rank)
    lengths = None
    if settings.min_frames:
        draw = torch.Generator().manual_seed(settings.seed * 1_000_003 + step)
        lengths = torch.randint(settings.min_frames, frames + 1, (len(codes),), generator=draw)
        codes, lengths = codes[:, : int(lengths.max())], lengths.to(codes.device)
    inputs = None
    if prompt is not None and prompt < codes.shape[1] - 1:  # else no free-running input is read
        with autocast():
            inputs = free_running_inputs(model, codes, prompt, settings.rollout_passes)
    return codes, lengths, inputs


def rollout_prompt(settings: DynamicsSettings, frames: int, step: int, rank: int) -> int | None:
    """How many true frames this step's free-running inputs start from; None: teacher forcing."""
    draw = torch.Generator().manual_seed(settings.seed * 7_919 + step * 31 + rank)
    if not settings.rollout_passes or float(torch.rand((), generator=draw)) >= settings.rollout_prob:
        return None
    return int(torch.randint(min(settings.rollout_prompt, frames - 1), frames, (), generator=draw))


@torch.no_grad()
def free_running_inputs(model: STTransformer, codes: torch.Tensor, prompt: int, passes: int) -> torch.Tensor:
    """Input frames from `prompt` on replaced by the model's own predictions (nearest codes,
    Gaussian layers sampled, as generation does). Each pass redoes every prediction from the
    previous pass's inputs, so after pass k the first k predicted frames are exactly what
    free running would feed, and the later ones carry errors of about k steps. Passes enough
    to make every frame exact are one cached rollout instead, which costs about one pass.
    The last frame is only ever a target, never an input: it keeps its true codes."""
    inputs = codes.clone()
    frames = codes.shape[1]
    if prompt >= frames - 1:
        return inputs
    if passes >= frames - 1 - prompt:
        inputs[:, prompt:-1] = rollout(model, codes[:, :prompt], frames - 1 - prompt)[:, prompt:]
        return inputs
    for _ in range(passes):
        out, _ = model.predict(inputs)
        inputs[:, prompt:] = model.to_codes(out[:, prompt:].flatten(0, 1)).view_as(inputs[:, prompt:])
    return inputs


@torch.no_grad()
def validate(model: STTransformer, latents_uri: str, settings: DynamicsSettings) -> dict[str, float]:
    """Mean loss terms over the validation clips, Gaussian layers at their means."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    totals: dict[str, float] = {}
    count = 0
    clips = LatentClips(latents_uri, VAL, shuffle_buffer=1, seed=0, batch_size=settings.batch_size)
    for index, codes in enumerate(DataLoader(clips, batch_size=None)):
        if index >= settings.eval_batches:
            break
        for key, value in model(codes.to(device), deterministic=True).metrics().items():
            totals[key] = totals.get(key, 0.0) + value * len(codes)
        count += len(codes)
    model.train(was_training)
    if not count:
        raise RuntimeError("no validation clips: raise data.val_fraction or ingest more videos")
    return {f"val_{key}": value / count for key, value in totals.items()}
