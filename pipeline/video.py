"""Video bytes in and out: a decoder (`pipeline.decoders`: decord or PyAV) to validate and
read, PyAV to write."""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from pipeline.decoders import PyAVDecoder, VideoDecoder, open_decoder


class RejectedVideo(Exception):
    """An input that cannot become a training sample; the message is the reason."""


@dataclass(frozen=True)
class VideoInfo:
    fps: float
    num_frames: int
    width: int
    height: int


_DECORD_PREFIX = re.compile(r"^\[[\d:]+\] \S+\.cc:\d+: ")


def _reason(err: Exception) -> str:
    """A decoder's message without decord's timestamp and C++ source location."""
    if "cannot find video stream" in str(err):  # decord: "Check failed: st_nb >= 0 ..."
        return "no video stream (an audio-only file?)"
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    line = lines[0] if lines else type(err).__name__
    while _DECORD_PREFIX.match(line):
        line = _DECORD_PREFIX.sub("", line)
    return line[:200]


def open_video(data: bytes, in_order: bool = False) -> VideoDecoder:
    """`data` opened for reading; RejectedVideo with the reason when it has no frame to read.
    `in_order`: read by PyAV, which counts frames by decoding them, where decord trusts the
    container's index (some real files' is wrong: opencv's tree.avi lists 68 of its 444 frames,
    and an Ogg/Theora file none), for a file read once from start to end."""
    if len(data) == 0:
        raise RejectedVideo("empty file (0 bytes)")
    try:
        decoder = PyAVDecoder(data) if in_order else open_decoder(data)
    except Exception as err:  # decord: RuntimeError or DECORDError; PyAV: its FFmpegError family
        raise RejectedVideo(f"not a readable video: {_reason(err)}") from None
    if decoder.num_frames == 0:
        raise RejectedVideo("no video frames")
    return decoder


def probe_video(data: bytes, min_frames: int = 1) -> VideoInfo:
    """Open `data`, decode every frame, and describe it.

    Every frame is decoded because a truncated or damaged stream often opens
    fine and only fails part-way; finding that here keeps it out of the shards.
    """
    decoder = open_video(data)
    try:
        decoder.decode_all()
    except Exception as err:
        raise RejectedVideo(f"decoding failed: {_reason(err)}") from None
    if decoder.num_frames < min_frames:
        raise RejectedVideo(f"only {decoder.num_frames} frames, fewer than one clip ({min_frames} frames)")
    return VideoInfo(
        fps=decoder.fps, num_frames=decoder.num_frames, width=decoder.width, height=decoder.height
    )


def read_frames(
    data: bytes,
    max_side: int | None = None,
    size: int | None = None,
    indices: list[int] | None = None,
) -> np.ndarray:
    """Frames as uint8 [T, H, W, 3], resized while decoding.

    `size` makes square frames of that side; `max_side` scales down to fit and
    keeps the aspect; `indices` decodes only those frames (default: all).
    """
    decoder = open_decoder(data)
    width = height = None
    if size:
        width = height = size
    elif max_side and max(decoder.height, decoder.width) > max_side:
        scale = max_side / max(decoder.height, decoder.width)
        width, height = max(2, round(decoder.width * scale)), max(2, round(decoder.height * scale))
    return decoder.frames(
        list(range(decoder.num_frames)) if indices is None else list(indices), width, height
    )


def to_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    """RGB frames uint8 [..., 3] -> [..., channels]: unchanged for 3, their rounded mean (grey) for 1.

    The one grey conversion: clips, training frames, true frames and the mean frame all use it."""
    if channels == 1:
        # round((r + g + b) / 3) in integers: a third is never a half, so +1 // 3 rounds it exactly,
        # at a tenth of the float mean's cost (which was a third of decoding a clip)
        total = frames[..., 0].astype(np.uint16) + frames[..., 1] + frames[..., 2]
        return ((total + 1) // 3).astype(np.uint8)[..., None]
    return frames


def encode_mp4(
    frames: np.ndarray, fps: float, codec: str = "libx264", crf: int = 12, keyframe_interval: int = 10
) -> bytes:
    """Encode uint8 frames [T, H, W] (grey) or [T, H, W, 3] (RGB) as an mp4."""
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(f"frame size {frames.shape[2]}x{frames.shape[1]} must be even for yuv420p")
    with Mp4Writer(fps, codec, crf, keyframe_interval) as writer:
        for frame in frames:
            writer.write(frame)
    return writer.data


class Mp4Writer:
    """An mp4 written a frame at a time, so that whoever makes the frames never holds them all;
    `data` holds the file's bytes once the writer is closed.

    The moov atom goes first (faststart) so that a reader can seek without reading the whole
    file; that needs a seekable file, hence the temp file.
    """

    def __init__(self, fps: float, codec: str = "libx264", crf: int = 12, keyframe_interval: int = 10):
        self.fps, self.codec, self.crf, self.keyframe_interval = fps, codec, crf, keyframe_interval
        self._file = tempfile.NamedTemporaryFile(suffix=".mp4")
        self._container = self._stream = None
        self.data = b""

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(finish=kind is None)

    def write(self, frame: np.ndarray) -> None:
        """One uint8 frame, [H, W] (grey) or [H, W, 3] (RGB); every frame the size of the first."""
        if frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=-1)
        if self._stream is None:
            self._open(*frame.shape[:2])
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24")
        for packet in self._stream.encode(picture):
            self._container.mux(packet)

    def _open(self, height: int, width: int) -> None:
        if height % 2 or width % 2:
            raise ValueError(f"frame size {width}x{height} must be even for yuv420p")
        options = {"g": str(self.keyframe_interval)}
        options.update({"crf": str(self.crf)} if self.codec == "libx264" else {"qscale": "2"})
        self._container = av.open(self._file.name, "w", format="mp4", options={"movflags": "faststart"})
        self._stream = self._container.add_stream(self.codec, rate=Fraction(self.fps).limit_denominator(1001))
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        self._stream.options = options

    def close(self, finish: bool = True) -> None:
        """Flush the encoder and keep the file's bytes (`finish`), or drop it all."""
        try:
            if self._container is not None:
                if finish:
                    for packet in self._stream.encode():
                        self._container.mux(packet)
                self._container.close()
                self._container = None
                if finish:
                    with open(self._file.name, "rb") as written:
                        self.data = written.read()
        finally:
            self._file.close()
