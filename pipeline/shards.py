"""Raw webdataset shards: `<root>/raw/shard-%06d.tar`, one sample per source video.

Each shard is built by one worker from a fixed list of inputs. The shard's tar
is moved into place whole, then a small part record (`raw/_parts/…json`) is
written; the part record is the commit: a shard without one is unfinished and
is rebuilt, a shard with one is never rebuilt for the same inputs.
"""

from __future__ import annotations

import json
import os
import resource
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass, field

from pipeline import storage
from pipeline.footage import Preparation, prepare
from pipeline.preview import gif_bytes, tile_videos
from pipeline.sources import SourceItem
from pipeline.splits import video_segments
from pipeline.video import RejectedVideo, probe_video, read_frames

MANIFEST_SCHEMA = 1
CONTAINER_FIELD = {"mov": "mp4", "m4v": "mp4", "mpeg": "mpg"}
PREVIEW_FRAMES = 20
PARTS_DIR = "_parts"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def part_uri(raw_uri: str, index: int) -> str:
    return storage.join(raw_uri, PARTS_DIR, f"shard-{index:06d}.json")


@dataclass
class ShardTask:
    index: int
    items: list[SourceItem]
    raw_uri: str
    fingerprint: str  # of the config and input list that this shard belongs to
    min_frames: int  # a clip's frames: a video needs a shot this long
    preparation: Preparation | None = None  # brought footage re-encoded; None keeps the files
    # mode, val, test, gap frames; None stores no segments (readers then split by a hash of the
    # key with the fractions they are given, as for raw stores written before segments)
    splitting: tuple[str, float, float, int] | None = None


@dataclass
class ShardReport:
    index: int
    name: str
    fingerprint: str
    keys: list[str] = field(default_factory=list)
    # key, num_frames, fps, shots, segments: what encode plans its clips by
    videos: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    # the building process's peak resident memory (its high-water mark, from the kernel): what one
    # video's length and resolution cost; a reused Ray worker's earlier tasks count too
    peak_rss_mb: float = 0.0

    @property
    def samples(self) -> int:
        return len(self.keys)


def build_shard(task: ShardTask, source) -> ShardReport:
    """Fetch, validate and pack the task's videos; a bad video is a reject, not a failure."""
    import webdataset as wds  # here, not above: it imports torch, which readers of shards need not

    started = time.perf_counter()
    report = ShardReport(index=task.index, name=shard_name(task.index), fingerprint=task.fingerprint)
    handle, local_tar = tempfile.mkstemp(suffix=".tar")
    os.close(handle)
    try:
        with open(local_tar, "wb") as stream:
            writer = wds.TarWriter(stream, encoder=False)
            for item in task.items:
                try:
                    video = source.fetch(item)
                    data, extension, meta = _stored_form(video, item, task)
                except RejectedVideo as reason:
                    report.rejects.append({"path": item.ref, "key": item.key, "reason": str(reason)})
                    continue
                except Exception as err:  # one odd input must not fail the shard, and every resume
                    reason = f"unexpected {type(err).__name__}: {err}"[:300]
                    report.rejects.append({"path": item.ref, "key": item.key, "reason": reason})
                    continue
                # DESIGN names mp4/webm/avi/mkv; QuickTime .mov is the same ISO media family as mp4
                field = CONTAINER_FIELD.get(extension, extension)
                writer.write({"__key__": item.key, field: data, "json": json.dumps(meta).encode()})
                report.keys.append(item.key)
                report.videos.append(
                    {
                        "key": item.key,
                        **{k: meta[k] for k in ("num_frames", "fps", "shots", "segments") if k in meta},
                    }
                )
            writer.close()
        report.bytes = os.path.getsize(local_tar)
        storage.put_file_atomic(local_tar, storage.join(task.raw_uri, report.name))
    finally:
        os.unlink(local_tar)
    report.seconds = time.perf_counter() - started
    report.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    storage.write_json(part_uri(task.raw_uri, task.index), asdict(report))
    return report


def _stored_form(video, item: SourceItem, task: ShardTask) -> tuple[bytes, str, dict]:
    """The bytes a shard stores for one video, their container and the sample's metadata;
    raises RejectedVideo with the reason a video cannot make a clip."""
    meta: dict = {"source": item.ref}
    if task.preparation is not None:
        with video.open() as stream:
            prepared = prepare(stream, item.key, item.ref, task.preparation)
        data, extension, shots = prepared.data, "mp4", prepared.shots
        meta["original"] = prepared.original
    else:  # kept as it came: the shard stores the file itself
        data, extension, shots = video.read(), video.extension, None
    info = probe_video(data, min_frames=task.min_frames)
    shots = shots or [(0, info.num_frames)]
    longest = max(end - start for start, end in shots)
    if longest < task.min_frames:
        raise RejectedVideo(
            f"no shot of {task.min_frames} frames (one clip): {len(shots)} shots, the longest "
            f"{longest} frames between cuts"
        )
    meta.update(asdict(info))
    meta["shots"] = [list(shot) for shot in shots]
    if task.splitting is not None:
        segments = video_segments(item.key, info.num_frames, *task.splitting)
        meta["segments"] = [list(segment) for segment in segments]
    if video.label is not None:
        meta["label"] = video.label
    if video.digits is not None:
        meta["digits"] = video.digits
    return data, extension, meta


def read_part(raw_uri: str, index: int) -> ShardReport | None:
    """The finished shard's record, or None when the shard is unfinished (or its tar is gone)."""
    uri = part_uri(raw_uri, index)
    if not storage.exists(uri):
        return None
    report = ShardReport(**storage.read_json(uri))
    if report.keys and len(report.videos) != len(report.keys):
        return None  # written before records carried per-video frame counts: rebuild it
    return report if storage.exists(storage.join(raw_uri, report.name)) else None


def plan_shards(items: list[SourceItem], per_shard: int) -> list[list[SourceItem]]:
    return [items[start : start + per_shard] for start in range(0, len(items), per_shard)]


def iter_samples(shard_uri: str, keys: set[str] | None = None):
    """Samples of one shard as {"__key__": key, ext: bytes, ...}, streamed from any fsspec URI;
    only those of `keys` when given (the others' bytes are passed over, never kept).

    webdataset's own reader wants URLs it can open itself; this streams
    whatever fsspec opens, grouping members by key as webdataset does.
    """
    fs, path = storage.filesystem(shard_uri)
    sample: dict = {}
    with fs.open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
        for member in archive:
            if not member.isfile():
                continue
            key, _, extension = member.name.partition(".")
            if keys is not None and key not in keys:
                continue
            if sample and sample["__key__"] != key:
                yield sample
                sample = {}
            sample["__key__"] = key
            sample[extension] = archive.extractfile(member).read()
    if sample:
        yield sample


def preview_gif(raw_uri: str, shard: str, count: int = 8, max_side: int = 96) -> bytes | None:
    """A tiled GIF of the first `count` videos of one shard, each scaled to fit `max_side`."""
    videos, fps = [], 10.0
    for sample in iter_samples(storage.join(raw_uri, shard)):
        data = next(value for key, value in sample.items() if key not in ("__key__", "json"))
        num_frames = json.loads(sample["json"])["num_frames"]
        videos.append(
            read_frames(data, max_side=max_side, indices=list(range(min(PREVIEW_FRAMES, num_frames))))
        )
        fps = json.loads(sample["json"]).get("fps") or fps
        if len(videos) == count:
            break
    return gif_bytes(tile_videos(videos), fps, scale=2) if videos else None


def write_manifest(raw_uri: str, reports: list[ShardReport], fingerprint: str, description: dict) -> dict:
    """`manifest.json` (shards, counts) and `rejects.jsonl` (path + reason), from the part records."""
    reports = sorted(reports, key=lambda report: report.index)
    rejects = [reject for report in reports for reject in report.rejects]
    manifest = {
        "schema_version": MANIFEST_SCHEMA,
        "fingerprint": fingerprint,
        "source": description,
        "shards": [
            {"name": r.name, "samples": r.samples, "bytes": r.bytes, "videos": r.videos} for r in reports
        ],
        "num_samples": sum(r.samples for r in reports),
        "num_rejected": len(rejects),
        "rejects": "rejects.jsonl",
    }
    lines = "".join(json.dumps({"path": r["path"], "reason": r["reason"]}) + "\n" for r in rejects)
    storage.write_bytes_atomic(storage.join(raw_uri, "rejects.jsonl"), lines.encode())
    storage.write_json(storage.join(raw_uri, "manifest.json"), manifest)
    return manifest
