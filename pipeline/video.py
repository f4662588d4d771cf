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
    """Encode uint8 frames [T, H, W] (grey) or [T, H, W, 3] (RGB) as an mp4.

    The moov atom goes first (faststart) so that a reader can seek without
    reading the whole file; that needs a seekable file, hence the temp file.
    """
    if frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)
    _, height, width, _ = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"frame size {width}x{height} must be even for yuv420p")
    options = {"g": str(keyframe_interval)}
    options.update({"crf": str(crf)} if codec == "libx264" else {"qscale": "2"})
    with tempfile.NamedTemporaryFile(suffix=".mp4") as handle:
        with av.open(handle.name, "w", format="mp4", options={"movflags": "faststart"}) as container:
            stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = options
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), "rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        return open(handle.name, "rb").read()
