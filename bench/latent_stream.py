"""Latent streaming vs the pixel path, on the same clips, in one run.

- latent path: clips streamed from latents.zarr through `LatentClips` and a DataLoader;
- pixel path: the same clips decoded with decord from the raw shards, then
  encoded by the tokenizer (what training would pay without the cache).

Prints clips/s of both, their ratio, the reader's own limit (clips/s of reading the
`codes` shard files' bytes, nothing decoded) and the latent path's share of it, and bytes
per clip on disk (store, raw mp4) and in memory (uint8 pixels).

    .venv/bin/python bench/latent_stream.py [--root out/demo] [--clips 200] [--latent-clips 5000]

The root must hold raw/, tokenizer/ and latents.zarr (`make demo` makes out/demo);
without one, the tiny pipeline is run into out/bench first.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipeline.clips import ClipWindows, decode_clips, plan_clips, video_bytes
from pipeline.latents import LatentClips, open_latents
from pipeline.shards import RawManifest, iter_samples
from pipeline.splits import TRAIN
from tokenizer.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def ensure_root(root: Path) -> Path:
    if (root / "latents.zarr" / "zarr.json").exists():
        return root
    root = REPO / "out" / "bench"
    if not (root / "latents.zarr" / "zarr.json").exists():
        print(f"no latent store given: running the tiny pipeline into {root}")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "jobs.cli",
                "run",
                "--config",
                str(REPO / "configs" / "tiny.yaml"),
                "--stages",
                "ingest,train-tokenizer,encode",
                "--set",
                f"root={root}",
                "--set",
                "tracking.enabled=false",
            ],
            check=True,
            cwd=REPO,
            env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")},
        )
    return root


def latent_path(uri: str, clips: int, workers: int) -> tuple[float, int]:
    """Steady-state rate: epochs repeat, and the first batches (worker start-up) are not timed."""
    dataset = LatentClips(uri, TRAIN, shuffle_buffer=64, repeat=True, batch_size=16)  # as training reads
    batches = iter(DataLoader(dataset, batch_size=None, num_workers=workers))
    for _ in range(8):
        next(batches)
    started, seen = time.perf_counter(), 0
    while seen < clips:
        seen += len(next(batches))
    return seen / (time.perf_counter() - started), seen


def pixel_path(root: Path, tokenizer: Tokenizer, keys: set[str], clips: int) -> tuple[float, int]:
    manifest = RawManifest.read(str(root / "raw"))
    store = open_latents(str(root / "latents.zarr"))
    attrs = store.attrs
    plans = plan_clips(manifest, ClipWindows(attrs["clip_frames"], attrs["clip_stride"], attrs["fps"]))
    by_key = {plan.key: plan for plan in plans if plan.key in keys}
    started, seen = time.perf_counter(), 0
    for shard in manifest.shards:
        for sample in iter_samples(str(root / "raw" / shard["name"])):
            plan = by_key.get(sample["__key__"])
            if plan is None:
                continue
            frames = decode_clips(
                video_bytes(sample), plan, attrs["clip_frames"], attrs["frame_size"], attrs.get("channels", 1)
            )
            for clip in torch.from_numpy(frames):
                tokenizer.encode(clip)
                seen += 1
            if seen >= clips:
                return seen / (time.perf_counter() - started), seen
    return seen / (time.perf_counter() - started), seen


def shard_bytes_rate(uri: str, num_clips: int, repeats: int = 3) -> float:
    """The reader's own limit: clips/s of reading the `codes` shard files' bytes, nothing decoded
    (the fastest of `repeats` passes: the page cache warm, as for the latent path)."""
    files = [f for f in sorted((Path(uri) / "codes").rglob("*")) if f.is_file() and f.name != "zarr.json"]
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for file in files:
            file.read_bytes()
        best = min(best, time.perf_counter() - started)
    return num_clips / best


def main() -> None:
    parser = argparse.ArgumentParser(description="latent streaming vs decoding pixels")
    parser.add_argument("--root", type=Path, default=REPO / "out" / "demo")
    parser.add_argument("--clips", type=int, default=200, help="clips through the (slow) pixel path")
    parser.add_argument("--latent-clips", type=int, default=5000, help="clips through the latent path")
    args = parser.parse_args()
    torch.set_num_threads(2)

    root = ensure_root(args.root)
    uri = str(root / "latents.zarr")
    store = open_latents(uri)
    tokenizer = Tokenizer.from_pretrained(root / "tokenizer")
    split = store.group["split"][:]
    sources = store.sources()
    train_keys = {str(key) for key, s in zip(sources, split, strict=True) if s == TRAIN}
    clips = min(args.clips, int((split == TRAIN).sum()))

    pixel_rate, pixel_clips = pixel_path(root, tokenizer, train_keys, clips)
    latent_rate, latent_clips = latent_path(uri, max(clips, args.latent_clips), workers=0)
    latent_rate_workers, _ = latent_path(uri, max(clips, args.latent_clips), workers=2)
    best_latent = max(latent_rate, latent_rate_workers)

    num_clips = store.num_clips
    attrs = store.attrs
    pixels = attrs["clip_frames"] * attrs.get("channels", 1) * attrs["frame_size"] ** 2
    print(f"root {root}: {num_clips} clips of {attrs['clip_frames']} frames, grid {attrs['grid']}")
    print(
        f"pixel path  (decord decode + tokenizer encode): {pixel_rate:10.1f} clips/s  ({pixel_clips} clips)"
    )
    print(
        f"latent path (LatentClips, DataLoader, 0 workers): {latent_rate:8.1f} clips/s ({latent_clips} clips)"
    )
    print(f"latent path (LatentClips, DataLoader, 2 workers): {latent_rate_workers:8.1f} clips/s")
    limit = shard_bytes_rate(uri, store.num_clips)
    print(f"reader's limit (reading the shard files' bytes): {limit:8.1f} clips/s")
    print(
        f"ratio latent/pixel: {best_latent / pixel_rate:.0f}x; "
        f"latent path / reader's limit: {best_latent / limit:.3f}"
    )
    print("bytes per clip:")
    print(f"  latents.zarr : {folder_bytes(root / 'latents.zarr') / num_clips:10.0f}")
    print(f"  raw mp4      : {folder_bytes(root / 'raw') / num_clips:10.0f}")
    print(f"  uint8 pixels : {pixels:10.0f}")


if __name__ == "__main__":
    np.set_printoptions(precision=2)
    main()
