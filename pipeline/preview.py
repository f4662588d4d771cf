"""Pictures people look at instead of numbers: tiled video grids as GIFs."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def tile_videos(videos: list[np.ndarray], columns: int = 4, pad: int = 2) -> np.ndarray:
    """Videos uint8 [T, H, W, 3] (any T, H, W) tiled into one video [T_max, H', W', 3].

    Each cell is padded to the largest frame; a shorter video holds its last frame.
    """
    if not videos:
        raise ValueError("nothing to tile")
    length = max(len(video) for video in videos)
    height = max(video.shape[1] for video in videos)
    width = max(video.shape[2] for video in videos)
    columns = min(columns, len(videos))
    rows = -(-len(videos) // columns)
    canvas = np.zeros((length, rows * (height + pad) + pad, columns * (width + pad) + pad, 3), dtype=np.uint8)
    for index, video in enumerate(videos):
        top = pad + (index // columns) * (height + pad)
        left = pad + (index % columns) * (width + pad)
        held = np.concatenate([video, np.repeat(video[-1:], length - len(video), axis=0)])
        canvas[:, top : top + video.shape[1], left : left + video.shape[2]] = held
    return canvas


def gif_bytes(frames: np.ndarray, fps: float, scale: int = 1) -> bytes:
    """uint8 [T, H, W, 3] -> an endlessly looping GIF."""
    images = [Image.fromarray(frame) for frame in frames]
    if scale != 1:
        images = [
            image.resize((image.width * scale, image.height * scale), Image.NEAREST) for image in images
        ]
    buffer = io.BytesIO()
    duration = max(20, round(1000 / fps))
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return buffer.getvalue()


def to_rgb(frames: np.ndarray) -> np.ndarray:
    """uint8 [T, C, H, W] (C = 1 or 3) -> [T, H, W, 3]."""
    frames = frames.transpose(0, 2, 3, 1)
    return np.repeat(frames, 3, axis=-1) if frames.shape[-1] == 1 else frames


def mark(frames: np.ndarray, colour=(230, 40, 40), width: int = 2) -> np.ndarray:
    """A coloured border on frames [T, H, W, 3]: how the preview shows generated frames."""
    frames = frames.copy()
    frames[:, :width], frames[:, -width:] = colour, colour
    frames[:, :, :width], frames[:, :, -width:] = colour, colour
    return frames


def continuation_grid(
    generated: list[np.ndarray],
    truths: list[np.ndarray],
    prompt_frames: int,
    consensus: list[np.ndarray] | None = None,
) -> np.ndarray:
    """One row per clip: prompt (held) | prompt + generated (generated frames framed in red)
    [| prompt + the samples' consensus, framed in orange] | ground truth.

    `generated`, `truths` and `consensus` are uint8 [T, C, H, W] per clip; returns a video
    [T, H', W', 3].
    """
    cells = []
    for index, (produced, truth) in enumerate(zip(generated, truths, strict=True)):
        produced = to_rgb(produced)
        prompt = produced[:prompt_frames]
        held = np.concatenate([prompt, np.repeat(prompt[-1:], len(produced) - prompt_frames, axis=0)])
        cells += [held, np.concatenate([prompt, mark(produced[prompt_frames:])])]
        if consensus is not None:
            agreed = to_rgb(consensus[index])[prompt_frames:]
            cells.append(np.concatenate([prompt, mark(agreed, colour=(240, 160, 30))]))
        cells.append(to_rgb(truth))
    return tile_videos(cells, columns=3 if consensus is None else 4)
