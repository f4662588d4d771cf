"""Raw webdataset shards: `<root>/raw/shard-%06d.tar`, one sample per source video.

Each shard is built by one worker from a fixed list of inputs. The shard's tar
is moved into place whole, then a small part record (`raw/_parts/…json`) is
written; the part record is the commit: a shard without one is unfinished and
is rebuilt, a shard with one is never rebuilt for the same inputs.

The part records are also the per-shard manifests: each holds its shard's videos (key, frame
count, rate, shots, segments), and `manifest.json` only lists the shards and the counts. So no
reader or writer holds every video at once; `RawManifest` reads the videos a shard at a time
(and reads the schema-1 manifests written before, which held every video inline).
"""

from __future__ import annotations

import json
import os
import resource
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from pipeline import storage
from pipeline.footage import Preparation, prepare
from pipeline.preview import gif_bytes, tile_videos
from pipeline.sources import SourceItem
from pipeline.splits import video_segments
from pipeline.video import RejectedVideo, probe_video, read_frames

MANIFEST_SCHEMA = 2  # 1 held every video inline; 2 leaves them in the part records
PARTS_READ_TOGETHER = 64  # part records fetched in one call: concurrently on an object store
CONTAINER_FIELD = {"mov": "mp4", "m4v": "mp4", "mpeg": "mpg"}
PREVIEW_FRAMES = 20
PARTS_DIR = "_parts"


def shard_name(index: int) -> str:
    return f"shard-{index:06d}.tar"


def part_uri(raw_uri: str, name: str) -> str:
    """The part record of the shard named `name` (`shard-000012.tar`)."""
    return storage.join(raw_uri, PARTS_DIR, name.removesuffix(".tar") + ".json")


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
    storage.write_json(part_uri(task.raw_uri, report.name), asdict(report))
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
    uri = part_uri(raw_uri, shard_name(index))
    if not storage.exists(uri):
        return None
    report = ShardReport(**storage.read_json(uri))
    if report.keys and len(report.videos) != len(report.keys):
        return None  # written before records carried per-video frame counts: rebuild it
    return report if storage.exists(storage.join(raw_uri, report.name)) else None


def plan_shards(items: list[SourceItem], per_shard: int) -> list[list[SourceItem]]:
    return [items[start : start + per_shard] for start in range(0, len(items), per_shard)]


class RawShardError(Exception):
    """A raw shard that cannot be read to its end; the message names it and the last good sample."""


def iter_samples(shard_uri: str, keys: set[str] | None = None):
    """Samples of one shard as {"__key__": key, ext: bytes, ...}, streamed from any fsspec URI;
    only those of `keys` when given (the others' bytes are passed over, never kept).

    webdataset's own reader wants URLs it can open itself; this streams
    whatever fsspec opens, grouping members by key as webdataset does.
    """
    fs, path = storage.filesystem(shard_uri)
    sample: dict = {}
    last = None  # the last member read whole: where a truncated or damaged shard broke off
    try:
        with fs.open(path, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                key, _, extension = member.name.partition(".")
                if keys is not None and key not in keys:
                    last = member.name
                    continue
                if sample and sample["__key__"] != key:
                    yield sample
                    sample = {}
                sample["__key__"] = key
                sample[extension] = archive.extractfile(member).read()
                last = member.name
    except (tarfile.TarError, EOFError) as err:
        after = f"after {last}" if last else "at its start"
        raise RawShardError(
            f"{shard_uri}: raw shard unreadable {after} ({err}); ingest again with --force to rewrite it"
        ) from None
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


@dataclass
class ShardSummary:
    """What the manifest lists of one finished shard; its videos stay in its part record."""

    index: int
    name: str
    samples: int
    rejected: int
    bytes: int
    peak_rss_mb: float = 0.0

    @classmethod
    def of(cls, report: ShardReport) -> ShardSummary:
        return cls(
            report.index, report.name, report.samples, len(report.rejects), report.bytes, report.peak_rss_mb
        )


def write_manifest(raw_uri: str, summaries: list[ShardSummary], fingerprint: str, description: dict) -> dict:
    """`manifest.json` (shards, counts) and `rejects.jsonl` (path + reason, gathered from the part
    records of the shards that rejected any, one at a time)."""
    summaries = sorted(summaries, key=lambda summary: summary.index)
    manifest = {
        "schema_version": MANIFEST_SCHEMA,
        "fingerprint": fingerprint,
        "source": description,
        "shards": [{"name": s.name, "samples": s.samples, "bytes": s.bytes} for s in summaries],
        "num_samples": sum(s.samples for s in summaries),
        "num_rejected": sum(s.rejected for s in summaries),
        "rejects": "rejects.jsonl",
        "videos": PARTS_DIR,  # each shard's videos: its part record
    }
    handle, local = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(handle, "w") as lines:
            for summary in summaries:
                if summary.rejected:
                    for reject in storage.read_json(part_uri(raw_uri, summary.name))["rejects"]:
                        lines.write(json.dumps({"path": reject["path"], "reason": reject["reason"]}) + "\n")
        storage.put_file_atomic(local, storage.join(raw_uri, "rejects.jsonl"))
    finally:
        os.unlink(local)
    storage.write_json(storage.join(raw_uri, "manifest.json"), manifest)
    return manifest


class RawManifest:
    """A raw folder's `manifest.json`, with each shard's videos read when they are asked for."""

    def __init__(self, raw_uri: str, manifest: dict):
        self.raw_uri, self.manifest = raw_uri, manifest
        self.fingerprint: str = manifest["fingerprint"]
        self.shards: list[dict] = manifest["shards"]  # name, samples, bytes (and videos, schema 1)

    @classmethod
    def read(cls, raw_uri: str) -> RawManifest:
        """Raises FileNotFoundError when ingest has not completed there."""
        uri = storage.join(raw_uri, "manifest.json")
        if not storage.exists(uri):
            raise FileNotFoundError(f"{uri} not found: run `stvideo ingest` for this root first")
        return cls(raw_uri, storage.read_json(uri))

    def shard_uri(self, name: str) -> str:
        return storage.join(self.raw_uri, name)

    def shard_videos(self) -> Iterator[tuple[dict, list[dict]]]:
        """(shard entry, its videos) for every shard, in manifest order, a few part records at a
        time. Raises ValueError for a manifest written before per-video frame counts."""
        listed = [shard for shard in self.shards if shard["samples"]]
        for first in range(0, len(listed), PARTS_READ_TOGETHER):
            chunk = listed[first : first + PARTS_READ_TOGETHER]
            yield from zip(chunk, self.videos_of(chunk), strict=True)

    def videos_of(self, shards: list[dict]) -> list[list[dict]]:
        """The videos of these shard entries: inline in a schema-1 manifest, else each one's part
        record (fetched together)."""
        if all("videos" in shard for shard in shards):
            return [shard["videos"] for shard in shards]
        if self.manifest.get("schema_version", 1) < 2:
            raise ValueError(
                "raw/manifest.json predates clip planning (no per-video frame counts): rerun ingest"
            )
        return read_part_records(self.raw_uri, [shard["name"] for shard in shards]) if shards else []

    def videos(self) -> Iterator[tuple[dict, dict]]:
        """(shard entry, video) for every kept video, in manifest order."""
        for shard, videos in self.shard_videos():
            for video in videos:
                yield shard, video


def read_part_records(raw_uri: str, names: list[str]) -> list[list[dict]]:
    """The videos of the named shards' part records, fetched in one call (concurrently where the
    filesystem is asynchronous, as s3fs is)."""
    fs, _ = storage.filesystem(raw_uri)
    paths = [storage.filesystem(part_uri(raw_uri, name))[1] for name in names]
    contents = fs.cat(paths, on_error="raise") if len(paths) > 1 else {paths[0]: fs.cat_file(paths[0])}
    return [json.loads(contents.get(path) or fs.cat_file(path))["videos"] for path in paths]
