"""Ingest's memory and time on long, large videos: one generated video per length, ingested
alone through the CLI with `configs/footage.yaml` (transcoded to the training rate and size).

For each length it prints the file's size, ingest's seconds (the stage's, from its manifest, with
Ray's start), the ingest task's seconds (reading, decoding, scaling, encoding, packing: from its
part record) and per second of video, and the task's peak resident memory: the Ray worker's
high-water mark from the kernel (`ru_maxrss`, recorded by the task in its part record), not an
estimate. Then the ratio of seconds per second of video at the longest length to the shortest:
1 is time linear in length.

    .venv/bin/python bench/video_memory.py [--seconds 15 30 60] [--width 3840 --height 2160]

The videos (a moving pattern under grain, 30 fps, x264 at a camera's bitrate) are generated once
into `out/bench-video-memory/` and reused; each run ingests into a fresh root.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.stages import REPO, run_stage  # noqa: E402

FPS = 30


def make_video(path: Path, seconds: float, width: int, height: int) -> None:
    """A pattern that pans under grain: every frame differs, as a camera's do, and the file is about
    as large as a camera's (grain is what costs bits)."""
    rng = np.random.default_rng(0)
    grain = rng.integers(0, 12, (height + 64, width + 64), dtype=np.uint8)
    rows, cols = np.mgrid[0:height:8, 0:width:8]
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(partial), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "23"}
        for index in range(int(seconds * FPS)):
            coarse = ((cols + 8 * index) % 256 ^ (rows + 3 * index) % 256).astype(np.uint8)
            grey = np.repeat(np.repeat(coarse, 8, 0), 8, 1)[:height, :width]
            shift = (index * 7) % 64
            grey = grey + grain[shift : shift + height, shift : shift + width]
            rgb = np.stack([grey, grey[::-1], 255 - grey], axis=-1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, "rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    partial.rename(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[15, 30, 60])
    parser.add_argument("--width", type=int, default=3840)
    parser.add_argument("--height", type=int, default=2160)
    parser.add_argument("--work", type=Path, default=REPO / "out" / "bench-video-memory")
    args = parser.parse_args()

    rows = []
    for seconds in args.seconds:
        videos = args.work / f"videos-{args.width}x{args.height}-{seconds:g}s"
        video = videos / "video.mp4"
        if not video.exists():
            videos.mkdir(parents=True, exist_ok=True)
            began = time.perf_counter()
            make_video(video, seconds, args.width, args.height)
            print(f"generated {video} in {time.perf_counter() - began:.0f} s", flush=True)
        root = args.work / f"root-{seconds:g}s"
        shutil.rmtree(root, ignore_errors=True)
        metrics = run_stage(
            "ingest",
            REPO / "configs" / "footage.yaml",
            root,
            f"data.path={videos}",
            "data.clip_frames=4",  # a single video split by time must give every split a clip
            "tracking.enabled=false",
        )
        part = json.loads(next((root / "raw" / "_parts").glob("*.json")).read_text())
        rows.append((seconds, part["seconds"], part["peak_rss_mb"]))
        shutil.rmtree(root)
        print(
            f"{args.width}x{args.height}, {seconds:g} s ({video.stat().st_size / 2**20:.0f} MiB): ingest "
            f"{metrics['seconds']:.1f} s, its task {part['seconds']:.1f} s "
            f"({part['seconds'] / seconds:.2f} s per second of video), "
            f"task peak RSS {part['peak_rss_mb']:.0f} MiB",
            flush=True,
        )
    (first, first_took, first_rss), (last, last_took, last_rss) = rows[0], rows[-1]
    print(
        f"the task's seconds per second of video, {last:g} s against {first:g} s: "
        f"{(last_took / last) / (first_took / first):.2f}x (1 is linear); "
        f"its peak RSS {last_rss:.0f} against {first_rss:.0f} MiB"
    )


if __name__ == "__main__":
    main()
