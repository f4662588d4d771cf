"""Moving MNIST: digits bouncing inside a canvas (Srivastava et al., 2015).

The standard protocol: a 64x64 canvas, two 28x28 digits, each starting at a
uniform position with a uniform heading, moving 0.1 (in units of the free
range) per frame, reflecting off the walls, composited with a pixel-wise max.

Glyphs come from an MNIST-format IDX file when one is given (real MNIST or
Fashion-MNIST gives the standard data set); otherwise from scikit-learn's
bundled 8x8 digits, upscaled, because nothing may be downloaded here.
"""

from __future__ import annotations

import gzip
import struct
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

IDX_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (`train-images-idx3-ubyte`, optionally .gz) as a uint8 array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    dtype_code, ndim = data[2], data[3]
    if dtype_code != IDX_UBYTE:
        raise ValueError(f"{path}: IDX element type 0x{dtype_code:02x}, expected unsigned bytes (0x08)")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX header says {shape} but holds {body.size} bytes")
    return body.reshape(shape)


@lru_cache(maxsize=4)
def load_glyphs(path: str | None = None, digit_size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """Digit images uint8 [N, digit_size, digit_size] and their labels (-1 when unknown)."""
    if path:
        images = read_idx(path)
        if images.ndim != 3:
            raise ValueError(f"{path}: expected images [N, H, W], got shape {images.shape}")
        labels = _labels_beside(path, len(images))
        if images.shape[1:] != (digit_size, digit_size):
            images = np.stack([_resize(image, digit_size) for image in images])
        return images, labels
    from sklearn.datasets import load_digits

    digits = load_digits()
    # sklearn's digits are 8x8 with values 0..16. MNIST centres a ~20 px glyph in a
    # 28 px box; do the same so the motion and the blank margins match the standard.
    inner = max(2, round(digit_size * 20 / 28))
    pad = (digit_size - inner) // 2
    images = np.zeros((len(digits.images), digit_size, digit_size), dtype=np.uint8)
    for index, image in enumerate(digits.images):
        glyph = _resize((image * (255.0 / 16.0)).astype(np.uint8), inner)
        images[index, pad : pad + inner, pad : pad + inner] = glyph
    return images, digits.target.astype(np.int64)


def _labels_beside(path: str, count: int) -> np.ndarray:
    """`train-labels-idx1-ubyte[.gz]` next to `train-images-idx3-ubyte[.gz]`, when present."""
    candidate = Path(str(path).replace("images-idx3", "labels-idx1"))
    if candidate != Path(path) and candidate.exists():
        labels = read_idx(candidate)
        if labels.shape == (count,):
            return labels.astype(np.int64)
    return np.full(count, -1, dtype=np.int64)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BILINEAR))


def trajectory(rng: np.random.Generator, num_frames: int, free_range: int, step_length: float) -> np.ndarray:
    """Top-left corners [num_frames, 2] (y, x) in pixels, bouncing inside [0, free_range]."""
    position = rng.random(2)
    heading = rng.random() * 2 * np.pi
    velocity = np.array([np.sin(heading), np.cos(heading)])
    corners = np.empty((num_frames, 2))
    for frame in range(num_frames):
        position = position + velocity * step_length
        for axis in range(2):
            if position[axis] <= 0.0:
                position[axis], velocity[axis] = 0.0, -velocity[axis]
            elif position[axis] >= 1.0:
                position[axis], velocity[axis] = 1.0, -velocity[axis]
        corners[frame] = position
    return (corners * free_range).astype(np.int64)


def moving_mnist_sequence(
    index: int,
    glyphs: np.ndarray,
    labels: np.ndarray,
    seed: int = 0,
    num_frames: int = 20,
    canvas_size: int = 64,
    digits_per_video: int = 2,
    step_length: float = 0.1,
) -> tuple[np.ndarray, list[int], np.ndarray]:
    """Sequence `index` of the data set seeded by `seed`: uint8 [T, H, W], its digits' labels
    and their top-left corners int [digits, T, 2] (y, x) in every frame.

    Each sequence draws from its own generator, seeded by (seed, index), so any
    worker can make any sequence without the others.
    """
    rng = np.random.default_rng([seed, index])
    digit_size = glyphs.shape[1]
    free_range = canvas_size - digit_size
    video = np.zeros((num_frames, canvas_size, canvas_size), dtype=np.uint8)
    chosen = rng.integers(0, len(glyphs), size=digits_per_video)
    tracks = []
    for glyph_index in chosen:
        glyph = glyphs[glyph_index]
        corners = trajectory(rng, num_frames, free_range, step_length)
        for frame, (top, left) in enumerate(corners):
            window = video[frame, top : top + digit_size, left : left + digit_size]
            np.maximum(window, glyph, out=window)
        tracks.append(corners)
    return video, [int(labels[i]) for i in chosen], np.stack(tracks)


def load_fixed_sequences(path: str | Path) -> np.ndarray:
    """The fixed test set `mnist_test_seq.npy`, [T, N, 64, 64] uint8, memory-mapped."""
    sequences = np.load(path, mmap_mode="r")
    if sequences.ndim != 4 or sequences.dtype != np.uint8:
        raise ValueError(f"{path}: expected uint8 [T, N, H, W], got {sequences.dtype} {sequences.shape}")
    return sequences
