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
