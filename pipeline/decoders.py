"""Two video decoders behind one interface: decord (fast random access; wheels for x86-64
only) and PyAV (ffmpeg's own wheels, on every platform). `data.decoder: auto` takes decord
where it is installed, else PyAV; `decord` or `pyav` forces one. The choice travels to the
processes a stage starts (Ray tasks and actors) in STVIDEO_DECODER.

Both give the same frames within codec tolerance (both are ffmpeg underneath; they differ in
the scaler's rounding when they resize). Tests force each and compare.
"""

from __future__ import annotations

import importlib.util
import io
import os
from typing import Protocol

import av
import numpy as np
from PIL import Image

DECODER_ENV = "STVIDEO_DECODER"
DECODERS = ("auto", "decord", "pyav")
BATCH = 8  # frames per decord call: bounded memory for large frames


class VideoDecoder(Protocol):
    """An opened video: its length, rate and size, and its frames by index, optionally scaled."""

    name: str
    num_frames: int
    fps: float
    width: int
    height: int

    def frames(self, indices: list[int], width: int | None = None, height: int | None = None) -> np.ndarray:
        """uint8 [len(indices), H, W, 3] in the order of `indices`, scaled to width x height if given."""
        ...

    def decode_all(self) -> None:
        """Decode every frame and keep none: raises where the stream is damaged part-way."""
        ...


def decoder_name() -> str:
    """The decoder this process uses: STVIDEO_DECODER, else decord where it imports, else PyAV."""
    wanted = os.environ.get(DECODER_ENV, "auto")
    if wanted not in DECODERS:
        raise ValueError(f"{DECODER_ENV}: given {wanted!r}; expected one of {', '.join(DECODERS)}")
    if wanted == "auto":
        return "decord" if importlib.util.find_spec("decord") is not None else "pyav"
    return wanted


def use_decoder(name: str) -> None:
    """Make `name` (auto, decord, pyav) this process's decoder, and that of the processes it
    starts; a decoder that is not installed is refused here, not once per video."""
    if name == "decord" and importlib.util.find_spec("decord") is None:
        raise ValueError(
            "decoder: given decord; it is not installed here (it has wheels for x86-64 only): use auto"
        )
    os.environ[DECODER_ENV] = name


def open_decoder(data: bytes) -> VideoDecoder:
    """`data` opened with this process's decoder; whatever it raises means it cannot be read."""
    return DecordDecoder(data) if decoder_name() == "decord" else PyAVDecoder(data)


def _resized(frames: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BILINEAR)) for f in frames])


class DecordDecoder:
    name = "decord"

    def __init__(self, data: bytes):
        import decord
        import decord.logging

        # ffmpeg complains on stderr about every damaged packet; rejected videos are reported
        # with their reason, so that noise only hides the summary
        decord.logging.set_level(decord.logging.QUIET)
        self._decord, self._data = decord, data
        self._reader = decord.VideoReader(io.BytesIO(data), ctx=decord.cpu(0), num_threads=1)
        self.num_frames = len(self._reader)
        self.fps = float(self._reader.get_avg_fps()) if self.num_frames else 0.0
        self._size: tuple[int, int] | None = None if self.num_frames else (0, 0)  # (height, width)

    # decord tells a frame's size only by decoding one (a third of a short clip's decoding
    # time), so it is learnt from the first frames decoded anyway, or asked for
    @property
    def height(self) -> int:
        return self._frame_size()[0]

    @property
    def width(self) -> int:
        return self._frame_size()[1]

    def _frame_size(self) -> tuple[int, int]:
        if self._size is None:
            self._size = self._reader[0].shape[:2]
        return self._size

    def frames(self, indices: list[int], width: int | None = None, height: int | None = None) -> np.ndarray:
        if not width or not height or (height, width) == self._size:
            return self._batches(self._reader, indices)
        if self._size is None and indices:  # the common case, frames already at the size asked for
            first = self._reader.get_batch(list(indices[:BATCH])).asnumpy()
            self._size = first.shape[1:3]
            if self._size == (height, width):
                return np.concatenate([first, self._batches(self._reader, indices[BATCH:])])
        try:
            scaled = self._decord.VideoReader(
                io.BytesIO(self._data), ctx=self._decord.cpu(0), num_threads=1, width=width, height=height
            )
            return self._batches(scaled, indices)
        except self._decord.DECORDError:  # its scaler rejects some widths (16, 24, 48): scale after
            return self._batches(self._reader, indices, (width, height))

    def _batches(self, reader, indices: list[int], resize: tuple[int, int] | None = None) -> np.ndarray:
        batches = []
        for start in range(0, len(indices), BATCH):
            batch = reader.get_batch(list(indices[start : start + BATCH])).asnumpy()
            batches.append(_resized(batch, *resize) if resize else batch)
        if not batches:
            width, height = resize or (self.width, self.height)
            return np.zeros((0, height, width, 3), np.uint8)
        return np.concatenate(batches)

    def decode_all(self) -> None:
        for start in range(0, self.num_frames, BATCH):
            self._reader.get_batch(list(range(start, min(start + BATCH, self.num_frames))))


class PyAVDecoder:
    """Frames in decoding order, kept where asked for. PyAV has no frame index to seek by, so it
    decodes forward, resuming where the last call stopped: asking for a video's frames in
    increasing batches decodes it once; going back restarts from the first frame."""

    name = "pyav"

    def __init__(self, data: bytes):
        self._data, self._container, self._next = data, None, 0
        with av.open(io.BytesIO(data)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            self.fps = float(rate) if rate else 0.0
            self.num_frames, self.width, self.height = 0, 0, 0
            for frame in container.decode(stream):  # counted by decoding, as decord's index counts
                if not self.num_frames:
                    self.width, self.height = frame.width, frame.height
                self.num_frames += 1
        if not self.num_frames:  # e.g. cut before its first frame: ffmpeg opens it and finds none
            raise ValueError("no frame could be decoded")

    def decode_all(self) -> None:
        pass  # opening decoded every frame, to count them

    def _rewind(self) -> None:
        self.close()
        self._container = av.open(io.BytesIO(self._data))
        self._decoded = self._container.decode(self._container.streams.video[0])
        self._next = 0

    def frames(self, indices: list[int], width: int | None = None, height: int | None = None) -> np.ndarray:
        wanted: dict[int, list[int]] = {}
        for position, index in enumerate(indices):
            if not 0 <= index < self.num_frames:
                raise IndexError(f"frame {index} of a video of {self.num_frames} frames")
            wanted.setdefault(index, []).append(position)
        out = np.zeros((len(indices), height or self.height, width or self.width, 3), np.uint8)
        if not wanted:
            return out
        if self._container is None or min(wanted) < self._next:
            self._rewind()
        while self._next <= max(wanted):
            frame, index = next(self._decoded), self._next
            self._next += 1
            if index in wanted:
                picture = frame.to_ndarray(
                    format="rgb24", width=width, height=height, interpolation="BILINEAR"
                )
                for position in wanted[index]:
                    out[position] = picture
        return out

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __del__(self) -> None:
        self.close()
