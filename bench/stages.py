"""The Ray stages against their own models, on the same clips, in one run.

- encode: the encode stage's clips/s (Ray Data reads the raw shards, decodes with decord in
  tasks, encodes in an actor pool, the driver writes Zarr shards) ÷ the bare encoder forward's
  (`Tokenizer.encode` on the same clips' frames, already in memory, at the stage's batch size
  and `encode.threads`, times its actors); and the stage's rate while its actors encode (from
  their first batch to their last) ÷ the same: the difference is Ray's start and the actors'
  model load, a fixed cost that a larger dataset spreads thinner.
- generate: the generate stage's frames/s (generated frames of every sample and protocol, over
  the stage's own seconds: the mean frame, Ray Data, decoding, scoring, writing) ÷ the bare
  rollouts' on the same clips (`rollout` with the stage's samples, prompt and protocols, one
  thread per actor, times its actors); and ÷ the rollouts with the frames decoded by the
  tokenizer as the stage decodes them (`continue_clip`): the rest is Ray Data, scoring, writing.

A ratio of 1 is a stage that costs no more than its model; the rest is what the stage adds.

    .venv/bin/python bench/stages.py [--root out/demo] [--config configs/demo.yaml] [--clips 64]

The root must hold raw/, tokenizer/, latents.zarr and dynamics/ (`make demo` makes out/demo);
the stages run into a temporary root that links to them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

from dynamics.checkpoint import load_dynamics
from dynamics.generate import GenerationSettings, continue_clip, sample_groups
from dynamics.rollout import rollout
from jobs.config import load_config
from pipeline.clips import ClipWindows, decode_clips, plan_clips, video_bytes
from pipeline.latents import open_latents
from pipeline.shards import RawManifest, iter_samples
from tokenizer.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
STAGE_OUTPUT = {  # where each stage writes under the root, its manifest `_stage.json` inside
    "ingest": "raw",
    "encode": "latents.zarr",
    "train-dynamics": "dynamics",
    "generate": "generations/default",
}


def run_stage(stage: str, config: Path, root: Path, *sets: str) -> dict:
    """Runs one stage through the CLI, as a user would, and returns its manifest's metrics."""
    command = [sys.executable, "-m", "jobs.cli", stage, "--config", str(config), "--set", f"root={root}"]
    for item in sets:
        command += ["--set", item]
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{stage} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads((root / STAGE_OUTPUT[stage] / "_stage.json").read_text())["metrics"]


def decoded_clips(root: Path, limit: int):
    """uint8 clips [n, T, C, H, W] of the root's raw videos, as encode cuts them, up to `limit`."""
    store = open_latents(str(root / "latents.zarr"))
    attrs = store.attrs
    manifest = RawManifest.read(str(root / "raw"))
    plans = plan_clips(manifest, ClipWindows(attrs["clip_frames"], attrs["clip_stride"], attrs["fps"]))
    by_key = {plan.key: plan for plan in plans}
    seen = 0
    for shard in manifest.shards:
        for sample in iter_samples(str(root / "raw" / shard["name"])):
            plan = by_key.get(sample["__key__"])
            if plan is None:
                continue
            size, channels = attrs["frame_size"], attrs.get("channels", 1)
            clips = decode_clips(video_bytes(sample), plan, attrs["clip_frames"], size, channels)
            yield clips
            seen += len(clips)
            if seen >= limit:
                return


def bench_encode(cfg, config: Path, source: Path, scratch: Path, sample: int) -> None:
    root = scratch / "encode"
    root.mkdir()
    for name in ("raw", "tokenizer"):
        (root / name).symlink_to((source / name).resolve())
    metrics = run_stage("encode", config, root)
    stage_rate = metrics["clips_per_s"]

    # the same clips' frames, decoded as the stage decodes them (not timed); the first `sample`
    frames = torch.from_numpy(np.concatenate(list(decoded_clips(root, sample))))
    tokenizer = Tokenizer.from_pretrained(root / "tokenizer")
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.encode.threads)
    batch = cfg.encode.batch_size
    tokenizer.encode(frames[:batch].flatten(0, 1))  # warm-up
    started = time.perf_counter()
    for first in range(0, len(frames), batch):
        tokenizer.encode(frames[first : first + batch].flatten(0, 1))
    bare_rate = len(frames) / (time.perf_counter() - started) * cfg.encode.num_actors
    torch.set_num_threads(threads)
    print(
        f"encode: stage {stage_rate:.1f} clips/s ({metrics['clips']} clips, {metrics['seconds']:.1f} s); "
        f"bare encoder {bare_rate:.1f} clips/s ({len(frames)} of them; "
        f"{cfg.encode.num_actors} actor x {cfg.encode.threads} threads); "
        f"stage / bare {stage_rate / bare_rate:.2f}; "
        f"while encoding {metrics['clips_per_s_encoding']:.1f} clips/s, "
        f"/ bare {metrics['clips_per_s_encoding'] / bare_rate:.2f} "
        f"(after {metrics['startup_seconds']:.1f} s starting Ray and the encoder)"
    )


def bench_generate(cfg, config: Path, source: Path, scratch: Path, clips: int) -> None:
    root = scratch / "generate"
    root.mkdir()
    for name in ("raw", "tokenizer", "latents.zarr", "dynamics"):
        (root / name).symlink_to((source / name).resolve())
    gen = cfg.generate
    metrics = run_stage("generate", config, root, f"generate.max_clips={clips}")
    protocols = [(gen.prompt_frames, gen.generate_frames)] + [tuple(p) for p in gen.protocols]
    frames = metrics["clips"] * gen.samples * sum(steps for _, steps in protocols)
    stage_rate = frames / metrics["seconds"]

    written = zarr.open_group(str(root / "generations" / "default" / "codes.zarr"), mode="r")
    store = open_latents(str(root / "latents.zarr"))
    ids = written["clip"][:]
    codes = torch.from_numpy(store.codes.get_orthogonal_selection((ids,)).astype(np.int64))
    model, _ = load_dynamics(root / "dynamics")
    tokenizer = Tokenizer.from_pretrained(root / "tokenizer")
    settings = GenerationSettings.of(gen)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    for clip in codes:
        for prompt_frames, steps in protocols:
            for temperature, _, count in sample_groups(settings):
                rollout(
                    model,
                    clip[None, :prompt_frames],
                    steps,
                    temperature=temperature,
                    deterministic=settings.deterministic,
                    samples=count,
                )
    rollouts = time.perf_counter() - started
    started = time.perf_counter()
    for index, clip in enumerate(codes):  # the same rollouts, and the frames decoded as the stage does
        for prompt_frames, steps in protocols:
            continue_clip(model, tokenizer, clip, int(ids[index]), settings, prompt_frames, steps)
    with_decoding = time.perf_counter() - started
    torch.set_num_threads(threads)
    actors = gen.num_actors
    bare, both = frames / rollouts * actors, frames / with_decoding * actors
    print(
        f"generate: stage {stage_rate:.1f} frames/s ({metrics['clips']} clips x {gen.samples} samples, "
        f"{metrics['seconds']:.1f} s, {actors} actors x 1 thread); bare rollouts {bare:.1f} frames/s, "
        f"stage / bare {stage_rate / bare:.2f}; rollouts and decoding {both:.1f} frames/s, "
        f"stage / both {stage_rate / both:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Ray stages against their bare models")
    parser.add_argument("--root", type=Path, default=REPO / "out" / "demo")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    parser.add_argument(
        "--clips", type=int, default=None, help="clips the generate stage continues (default: the config's)"
    )
    parser.add_argument("--encode-sample", type=int, default=400, help="clips the bare encoder is timed on")
    args = parser.parse_args()
    needed = ("raw", "tokenizer", "latents.zarr", "dynamics")
    if not all((args.root / name).exists() for name in needed):
        sys.exit(f"{args.root} needs {', '.join(needed)}: run `make demo` first")
    cfg = load_config(args.config)
    with tempfile.TemporaryDirectory(prefix="stvideo-bench-stages-") as scratch:
        bench_encode(cfg, args.config, args.root, Path(scratch), args.encode_sample)
        bench_generate(cfg, args.config, args.root, Path(scratch), args.clips or cfg.generate.max_clips)


if __name__ == "__main__":
    main()
