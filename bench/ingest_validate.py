"""Ingest's validation pass: decord full decode vs PyAV full decode, on the same videos.

Ingest decodes every frame of every input to catch damaged streams. This
measures that pass (frames/s and videos/s) against PyAV as the baseline, in
one run, on generated Moving MNIST mp4s, and the whole per-video ingest cost
(generate + encode + validate + pack) through `build_shard`.

    .venv/bin/python bench/ingest_validate.py [--videos 300]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import av

from pipeline.shards import ShardTask, build_shard
from pipeline.sources import MovingMnistSource
from pipeline.video import probe_video


def pyav_decode_all(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for frame in container.decode(video=0) if frame.to_ndarray(format="rgb24") is not None)


def best_of(runs: int, work) -> float:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=300)
    args = parser.parse_args()

    source = MovingMnistSource(num_videos=args.videos, fps=10)
    items = source.items()
    videos = [source.fetch(item).read() for item in items]
    frames = sum(probe_video(data).num_frames for data in videos)

    decord_s = best_of(3, lambda: [probe_video(data) for data in videos])
    pyav_s = best_of(3, lambda: [pyav_decode_all(data) for data in videos])
    with tempfile.TemporaryDirectory() as raw:
        shard_s = best_of(1, lambda: build_shard(ShardTask(0, items, raw, "bench", 20), source))

    print(f"{len(videos)} Moving MNIST videos, {frames} frames of 64x64, one core")
    print(f"decord validate : {frames / decord_s:8.0f} frames/s  {len(videos) / decord_s:7.1f} videos/s")
    print(
        f"PyAV decode     : {frames / pyav_s:8.0f} frames/s  {len(videos) / pyav_s:7.1f} videos/s  (baseline)"
    )
    print(f"ratio decord/PyAV: {pyav_s / decord_s:.2f}x")
    print(f"whole ingest (generate+encode+validate+pack): {len(videos) / shard_s:.1f} videos/s per core")


if __name__ == "__main__":
    main()
