"""How each stage's cost grows with the number of videos: the pipeline on N small generated
videos (Moving MNIST, 8 frames of 32x32: the per-video overheads, not the pixels), N = 100, 1,000
and 10,000 on the embedded Ray, and on an S3 root (moto on 127.0.0.1) at 1,000.

Each stage runs through the CLI, as a user runs it, one process per stage. Per stage and N:
- seconds per video (per clip for generate, which continues a fixed number of clips: what must
  stay flat is its cost per clip as the dataset behind it grows), from the stage's manifest;
- the driver's peak RSS (the CLI process's high-water mark, recorded by the runner) and the
  largest Ray worker's (`VmHWM` of every `ray::` process under the driver, polled);
- objects written per 1,000 videos (files under the stage's output), and for ingest the raw
  manifest's bytes per video (and its part records', which hold the videos);
- the latent reader (`LatentClips` through a DataLoader, as training reads): time to its first
  batch, clips/s, and that rate over its limit (reading every codes file's bytes, in this run);
- `stvideo status` wall time (the CLI process, start to exit).

Then, per stage, the ratio of per-video cost at the largest N to the smallest, and the same ratio
of its tasks' own work per video (ingest: its tasks' seconds from their part records; encode: each
shard's decode and encode seconds from its progress record): the first includes fixed costs
(Ray's start, the actors' model load) that a larger N spreads thinner, the second does not, so a
stage whose cost per video grows with N shows there.

    .venv/bin/python bench/scale.py [--videos 100 1000 10000] [--s3-videos 1000]

The tokenizer and the dynamics model are untrained (the costs do not depend on the weights);
the dynamics checkpoint is trained for one step at the smallest N, and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.stages import REPO, STAGE_OUTPUT  # noqa: E402

GENERATE_CLIPS = 16


def settings(
    root: str, videos: int, tokenizer: Path, dynamics: str | None, ray_address: str | None
) -> list[str]:
    sets = {
        "root": root,
        "tracking.enabled": "false",
        "data.seed": 1,  # its keys give all three splits videos even at N=20 (seed 0's give val none)
        "data.moving_mnist.num_videos": videos,
        "data.moving_mnist.num_frames": 8,
        "data.moving_mnist.canvas_size": 32,
        "data.moving_mnist.digit_size": 14,
        "data.moving_mnist.digits_per_video": 1,
        "data.clip_frames": 8,
        "data.val_fraction": 0.2,
        "data.test_fraction": 0.2,
        "data.split_by": "video",
        "ingest.videos_per_shard": 100,
        "encode.tokenizer": str(tokenizer),
        "encode.clips_per_shard": 64,
        "encode.batch_size": 64,
        "dynamics.max_steps": 1,
        "dynamics.min_frames": 4,
        "dynamics.eval_every": 1,
        "dynamics.eval_batches": 1,
        "generate.prompt_frames": 4,
        "generate.generate_frames": 4,
        "generate.protocols": "[]",
        "generate.max_clips": GENERATE_CLIPS,
        "generate.preview_clips": 2,
    }
    if dynamics:
        sets["generate.dynamics"] = dynamics
    if ray_address:
        sets["ray.address"] = ray_address
    out = []
    for key, value in sets.items():
        out += ["--set", f"{key}={value}"]
    return out


class PeakWatcher:
    """The largest `VmHWM` (peak resident memory, from the kernel) of any Ray worker under a process."""

    def __init__(self, pid: int):
        self.pid, self.peak_kb, self._stop = pid, 0, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.pid).children(recursive=True):
                    # a worker may end between any two of these reads: it is then left for the next round
                    with contextlib.suppress(psutil.Error, OSError, ValueError, StopIteration):
                        if "".join(child.cmdline()[:1]).startswith("ray::"):
                            status = Path(f"/proc/{child.pid}/status").read_text()
                            line = next(x for x in status.splitlines() if x.startswith("VmHWM:"))
                            self.peak_kb = max(self.peak_kb, int(line.split()[1]))
            self._stop.wait(0.2)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_kb / 1024


def run(stage: str, sets: list[str], env: dict) -> tuple[float, float]:
    """One stage through the CLI; returns the largest Ray worker's peak RSS (MiB) and the wall time."""
    command = [sys.executable, "-m", "jobs.cli", stage, "--config", "configs/tiny.yaml", *sets]
    began = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    watcher = PeakWatcher(process.pid)
    out, err = process.communicate()
    worker_peak, wall = watcher.stop(), time.perf_counter() - began
    if process.returncode:
        sys.exit(f"{stage} failed:\n{out[-2000:]}\n{err[-3000:]}")
    return worker_peak, wall


def stage_row(root: str, stage: str, count: int, worker_peak: float) -> dict:
    """A finished stage's figures from its manifest, per video (per clip for generate)."""
    from pipeline import storage

    metrics = storage.read_json(storage.join(root, STAGE_OUTPUT[stage], "_stage.json"))["metrics"]
    return {
        "seconds": metrics["seconds"],
        "per_video": metrics["seconds"] / count,
        "driver_mb": metrics["driver_peak_rss_mb"],
        "worker_mb": worker_peak,
        "objects_per_1000": 1000 * count_objects(storage.join(root, STAGE_OUTPUT[stage])) / count,
    }


def records(folder: str, prefix: str = "") -> list[dict]:
    """The JSON records in a folder: ingest's part records, encode's progress records."""
    from pipeline import storage

    names = [
        name for name in storage.list_names(folder) if name.startswith(prefix) and name.endswith(".json")
    ]
    return [storage.read_json(storage.join(folder, name)) for name in names]


def count_objects(uri: str) -> int:
    from pipeline import storage

    fs, path = storage.filesystem(uri)
    return len(fs.find(path))


def read_latents(root: str) -> dict:
    """The latent reader as training uses it, and its limit: every codes file's bytes read."""
    from torch.utils.data import DataLoader

    from pipeline import storage
    from pipeline.latents import LatentClips, open_latents

    uri = storage.join(root, "latents.zarr")
    store = open_latents(uri)
    fs, path = storage.filesystem(storage.join(uri, "codes"))
    began = time.perf_counter()
    files = [name for name in fs.find(path) if not name.endswith("zarr.json")]
    for name in files:
        fs.cat_file(name)
    limit = store.num_clips / (time.perf_counter() - began)

    clips = LatentClips(uri, split=0, shuffle_buffer=256, seed=0, batch_size=16)  # as dynamics/train.py
    began, first, count = time.perf_counter(), None, 0
    for batch in DataLoader(clips, batch_size=None, num_workers=0):
        first = first if first is not None else time.perf_counter() - began
        count += len(batch)
    seconds = time.perf_counter() - began
    return {
        "first_batch_s": first,
        "clips_per_s": count / seconds,
        "limit_clips_per_s": limit,
        "clips": count,
    }


def make_tokenizer(folder: Path) -> Path:
    import torch

    from tokenizer.settings import VQGANConfig
    from tokenizer.tokenizer import Tokenizer

    if not (folder / "model.safetensors").exists():
        torch.manual_seed(0)
        config = VQGANConfig(
            frame_size=32, in_channels=1, base_channels=8, channel_mults=(1, 1, 2), codebook_size=64
        )
        Tokenizer(config).save_pretrained(folder)
    return folder


def measure(
    root: str, videos: int, tokenizer: Path, dynamics: str | None, env: dict, ray: str | None
) -> dict:
    sets = settings(root, videos, tokenizer, dynamics, ray)
    row: dict = {"videos": videos}
    for stage in ("ingest", "encode"):
        row[stage] = stage_row(root, stage, videos, run(stage, sets, env)[0])
    from pipeline import storage

    row["ingest"]["work_per_video"] = sum(r["seconds"] for r in records(f"{root}/raw/_parts")) / videos
    shards = records(f"{root}/latents.zarr/_progress", "shard-")
    clips = sum(r["clips"] for r in shards)
    row["encode"]["work_per_video"] = sum(r["decode_seconds"] + r["encode_seconds"] for r in shards) / clips
    row["ingest"]["manifest_bytes_per_video"] = len(storage.read_bytes(f"{root}/raw/manifest.json")) / videos
    parts = storage.join(root, "raw", "_parts")
    row["ingest"]["parts_bytes_per_video"] = (
        sum(len(storage.read_bytes(storage.join(parts, name))) for name in storage.list_names(parts)) / videos
    )
    row["reader"] = read_latents(root)
    if dynamics is None:  # trained once, at the first N: its cost is not what this measures
        run("train-dynamics", sets, env)
        dynamics = f"{root}/dynamics"
        sets = settings(root, videos, tokenizer, dynamics, ray)
    row["generate"] = stage_row(root, "generate", GENERATE_CLIPS, run("generate", sets, env)[0])
    row["status_s"] = run("status", sets, env)[1]
    return row, dynamics


def report(rows: list[dict], where: str) -> None:
    print(f"\n{where}")
    for row in rows:
        n = row["videos"]
        for stage in ("ingest", "encode", "generate"):
            s = row[stage]
            unit = "clip" if stage == "generate" else "video"
            extra = (
                f", manifest.json {s['manifest_bytes_per_video']:.0f} B/video "
                f"(part records {s['parts_bytes_per_video']:.0f} B/video)"
                if "manifest_bytes_per_video" in s
                else ""
            )
            work = (
                f" ({1000 * s['work_per_video']:.2f} ms of its tasks' own work)"
                if "work_per_video" in s
                else ""
            )
            print(
                f"  N={n:>6} {stage:<8} {s['seconds']:7.1f} s, {1000 * s['per_video']:7.2f} ms/{unit}{work}; "
                f"driver peak {s['driver_mb']:5.0f} MiB, largest worker "
                f"{f'{worker:5.0f} MiB' if (worker := s['worker_mb']) else 'not measured'}; "
                f"{s['objects_per_1000']:.0f} objects per 1,000 {unit}s{extra}"
            )
        r = row["reader"]
        print(
            f"  N={n:>6} reader   first batch {r['first_batch_s']:.2f} s, {r['clips_per_s']:.0f} clips/s "
            f"({r['clips']} clips), {100 * r['clips_per_s'] / r['limit_clips_per_s']:.1f}% of its limit "
            f"({r['limit_clips_per_s']:.0f} clips/s reading the files)"
        )
        print(f"  N={n:>6} status   {row['status_s']:.2f} s")


def ratios(rows: list[dict]) -> None:
    small, large = rows[0], rows[-1]
    print(f"\nratios, N={large['videos']} against N={small['videos']} (1 is flat)")
    for stage in ("ingest", "encode", "generate"):
        unit = "clip" if stage == "generate" else "video"
        line = f"  {stage:<8} per-{unit} cost {large[stage]['per_video'] / small[stage]['per_video']:.2f}x"
        if "work_per_video" in large[stage]:
            work = large[stage]["work_per_video"] / small[stage]["work_per_video"]
            line += f"; its tasks' own work per {unit} {work:.2f}x"
        line += f"; driver peak RSS {large[stage]['driver_mb'] / small[stage]['driver_mb']:.2f}x"
        if stage != "generate":  # what the driver holds per video: 0 when it holds nothing per video
            grown = (large[stage]["driver_mb"] - small[stage]["driver_mb"]) * 2**20
            line += f", {grown / (large['videos'] - small['videos']):.0f} B more per {unit}"
        print(line)
    reader = large["reader"]["clips_per_s"] / small["reader"]["clips_per_s"]
    print(f"  reader   clips/s {reader:.2f}x")
    print(f"  status   {large['status_s']:.2f} s against {small['status_s']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--s3-videos", type=int, default=1000, help="0: no S3 run")
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench-scale")
    parser.add_argument(
        "--ray-address",
        help="a running Ray head to use instead of an embedded Ray per stage (the smoke run's); "
        "its workers are not under the stage's process, so their peak RSS is not measured",
    )
    args = parser.parse_args()
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    tokenizer = make_tokenizer(args.work / "tokenizer")
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    rows, dynamics = [], None
    for videos in args.videos:
        row, dynamics = measure(
            str(args.work / f"n{videos}"), videos, tokenizer, dynamics, env, args.ray_address
        )
        rows.append(row)
        report([row], f"local root, N={videos}")
    if len(rows) > 1:
        ratios(rows)
    if args.s3_videos:
        from tests.conftest import moto_s3

        with moto_s3("scale") as s3_env:
            storage_env = {**env, **s3_env}
            os.environ.update(s3_env)
            local_dynamics = dynamics  # a local checkpoint: generate reads it from anywhere
            root = f"s3://scale/n{args.s3_videos}"
            row, _ = measure(root, args.s3_videos, tokenizer, local_dynamics, storage_env, args.ray_address)
            report([row], f"S3 root (moto on 127.0.0.1), N={args.s3_videos}")
            local = next((r for r in rows if r["videos"] == args.s3_videos), None)
            if local:
                print(f"  S3 against the local root at N={args.s3_videos}:")
                for stage in ("ingest", "encode", "generate"):
                    print(
                        f"    {stage:<8} {row[stage]['seconds'] / local[stage]['seconds']:.2f}x the seconds"
                    )


if __name__ == "__main__":
    main()
