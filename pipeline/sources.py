"""Where raw videos come from: a folder of files, or the Moving MNIST generator.

A source lists its items on the driver (cheap, deterministic, sorted) and
fetches one item inside a worker, so the bytes never pass through the driver; a brought
file is opened there and read as it is decoded, never whole.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import IO

import numpy as np
from fsspec.core import url_to_fs

from pipeline.moving_mnist import load_fixed_sequences, load_glyphs, moving_mnist_sequence
from pipeline.video import RejectedVideo, encode_mp4


@dataclass(frozen=True)
class SourceItem:
    key: str  # the webdataset __key__: unique, no dots
    ref: str  # what a person recognises: a path, or the generator and index
    stamp: str = ""  # size and modification time: a replaced file is a different input
    location: str = ""  # the path inside the source's filesystem, for fetching


@dataclass(frozen=True)
class FetchedVideo:
    """One input video: its bytes (generated ones), or how to open the file (brought ones: read
    as a decoder needs them, so a long 4K file is never held whole)."""

    extension: str
    data: bytes | None = None
    opener: Callable[[], IO[bytes]] | None = None
    label: object = None
    # generated Moving MNIST: where each digit is in every frame (`pipeline.truth.digit_tracks`)
    digits: dict | None = None

    def open(self) -> IO[bytes]:
        """The video as a binary stream; RejectedVideo with the reason if it cannot be read."""
        return io.BytesIO(self.data) if self.opener is None else self.opener()

    def read(self) -> bytes:
        """The whole file (what a shard stores when videos are kept as they came)."""
        if self.data is not None:
            return self.data
        with self.open() as stream:
            try:
                return stream.read()
            except OSError as err:
                raise RejectedVideo(f"cannot read: {err.strerror or err}") from None


def _info(fs, path: str) -> dict:
    try:
        return fs.info(path)
    except OSError:  # a dangling link: listed, then rejected with its reason when fetched
        return {}


def _open_file(fs, path: str) -> IO[bytes]:
    try:
        if fs.isdir(path):
            raise IsADirectoryError(21, "is a directory")
        return fs.open(path, "rb")
    except OSError as err:
        raise RejectedVideo(f"cannot read: {err.strerror or err}") from None


def safe_key(text: str) -> str:
    """A webdataset key: no dots (webdataset splits key from extension at the first dot)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "video"


@dataclass(frozen=True)
class FolderSource:
    """Video files under a directory, matching a glob, or one file; local or fsspec URI."""

    path: str
    extensions: tuple[str, ...]

    def items(self) -> list[SourceItem]:
        fs, path = url_to_fs(self.path)
        if fs.isdir(path):
            files, base = fs.find(path, detail=True), path.rstrip("/")
        elif fs.exists(path):  # checked before globbing: "clip [1080p].mp4" is a file, not a pattern
            files, base = {path: _info(fs, path)}, path.rsplit("/", 1)[0]
        elif any(char in path for char in "*?["):
            files, base = fs.glob(path, detail=True), path.split("*")[0].rsplit("/", 1)[0]
        else:
            raise FileNotFoundError(f"no such file or directory: {self.path}")
        wanted = {ext.lower().lstrip(".") for ext in self.extensions}
        videos = sorted(f for f in files if f.rsplit(".", 1)[-1].lower() in wanted)
        items, seen = [], set()
        for file in videos:
            relative = file[len(base) :].lstrip("/") if file.startswith(base) else file
            key = safe_key(relative.rsplit(".", 1)[0])
            if key in seen:  # a/b.mp4 and a_b.mp4, or clip.mp4 and clip.mkv
                key = safe_key(relative)
            while key in seen:
                key += "_"
            seen.add(key)
            info = files[file] or {}
            stamp = f"{info.get('size')}:{info.get('mtime') or info.get('LastModified') or info.get('ETag')}"
            ref = fs.unstrip_protocol(file) if "://" in self.path else file
            items.append(SourceItem(key=key, ref=ref, stamp=stamp, location=file))
        return items

    def fetch(self, item: SourceItem) -> FetchedVideo:
        # the listing's filesystem and raw path: a name with "::" or "[" is not re-parsed as a URL
        fs, _ = url_to_fs(self.path)
        path = item.location
        return FetchedVideo(extension=path.rsplit(".", 1)[-1].lower(), opener=partial(_open_file, fs, path))


@dataclass(frozen=True)
class MovingMnistSource:
    """Generated sequences, or the fixed `mnist_test_seq.npy` set when `path` ends in .npy."""

    num_videos: int
    fps: float
    seed: int = 0
    path: str | None = None
    num_frames: int = 20
    canvas_size: int = 64
    digits_per_video: int = 2
    digit_size: int = 28
    step_length: float = 0.1
    encoding: dict = field(default_factory=dict)  # codec, crf, keyframe_interval for encode_mp4

    @property
    def fixed(self) -> bool:
        return bool(self.path) and self.path.endswith(".npy")

    def items(self) -> list[SourceItem]:
        if self.fixed:
            count = load_fixed_sequences(self.path).shape[1]
            name = safe_key(self.path.rsplit("/", 1)[-1].rsplit(".", 1)[0])
            return [SourceItem(f"{name}-{i:06d}", f"{self.path}[{i}]") for i in range(count)]
        load_glyphs(self.path, self.digit_size)  # fail here, on the driver, for a bad glyph file
        return [
            SourceItem(f"mmnist-s{self.seed}-{i:07d}", f"moving-mnist(seed={self.seed}, index={i})")
            for i in range(self.num_videos)
        ]

    def fetch(self, item: SourceItem) -> FetchedVideo:
        index = int(item.key.rsplit("-", 1)[-1])
        if self.fixed:
            video = np.asarray(load_fixed_sequences(self.path)[:, index])
            return FetchedVideo(data=encode_mp4(video, self.fps, **self.encoding), extension="mp4")
        glyphs, glyph_labels = load_glyphs(self.path, self.digit_size)
        video, labels, corners = moving_mnist_sequence(
            index,
            glyphs,
            glyph_labels,
            seed=self.seed,
            num_frames=self.num_frames,
            canvas_size=self.canvas_size,
            digits_per_video=self.digits_per_video,
            step_length=self.step_length,
        )
        digits = {
            "canvas": self.canvas_size,
            "size": self.digit_size,
            "labels": labels,
            "corners": corners.tolist(),
        }
        return FetchedVideo(
            data=encode_mp4(video, self.fps, **self.encoding), extension="mp4", label=labels, digits=digits
        )
