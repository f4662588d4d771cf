import gzip
import struct

import numpy as np
import pytest

from pipeline.moving_mnist import load_glyphs, moving_mnist_sequence, read_idx, trajectory
from pipeline.sources import MovingMnistSource
from pipeline.video import read_frames


@pytest.fixture(scope="module")
def glyphs():
    return load_glyphs(None, 28)


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def test_bundled_glyphs_look_like_mnist(glyphs):
    images, labels = glyphs
    assert images.shape == (1797, 28, 28) and images.dtype == np.uint8
    assert set(labels.tolist()) == set(range(10))
    assert images.max() == 255
    # MNIST keeps a blank margin around a centred ~20 px glyph
    assert images[:, :3].max() == 0 and images[:, -3:].max() == 0
    assert images[:, :, :3].max() == 0 and images[:, :, -3:].max() == 0


def test_sequence_shape_dtype_and_labels(glyphs):
    video, labels, corners = moving_mnist_sequence(7, *glyphs, seed=3)
    assert video.shape == (20, 64, 64) and video.dtype == np.uint8
    assert len(labels) == 2 and all(0 <= label <= 9 for label in labels)
    assert video.max() > 200
    assert corners.shape == (2, 20, 2) and corners.min() >= 0 and corners.max() <= 64 - 28


def test_sequences_are_deterministic_per_seed_and_index(glyphs):
    a, _, _ = moving_mnist_sequence(5, *glyphs, seed=1)
    b, _, _ = moving_mnist_sequence(5, *glyphs, seed=1)
    c, _, _ = moving_mnist_sequence(6, *glyphs, seed=1)
    d, _, _ = moving_mnist_sequence(5, *glyphs, seed=2)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)


def test_a_digit_never_leaves_the_frame(glyphs):
    images, labels = glyphs
    for index in range(40):
        video, _, corners = moving_mnist_sequence(
            index, images, labels, seed=0, num_frames=60, digits_per_video=1
        )
        rng = np.random.default_rng([0, index])
        glyph = images[rng.integers(0, len(images), size=1)[0]]
        # with one digit and max compositing, every frame holds the whole glyph exactly once...
        assert (video.reshape(60, -1).sum(axis=1) == int(glyph.sum())).all()
        # ...where its corners say
        for frame, (top, left) in zip(video, corners[0], strict=True):
            assert np.array_equal(frame[top : top + 28, left : left + 28], glyph)


def test_trajectory_bounces_with_the_standard_step():
    rng = np.random.default_rng(0)
    corners = trajectory(rng, 400, free_range=36, step_length=0.1)
    assert corners.min() >= 0 and corners.max() <= 36
    steps = np.abs(np.diff(corners, axis=0))
    assert steps.max() <= 4  # 0.1 * 36 = 3.6 px per frame, plus rounding
    # it reaches both walls on both axes over 400 frames
    for axis in range(2):
        assert corners[:, axis].min() == 0 and corners[:, axis].max() == 36


@pytest.mark.parametrize("compress", [False, True])
def test_idx_glyph_file(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(12, 28, 28), dtype=np.uint8)
    suffix = ".gz" if compress else ""
    path = tmp_path / f"train-images-idx3-ubyte{suffix}"
    write_idx(path, images, compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{suffix}", np.arange(12) % 10, compress)
    assert np.array_equal(read_idx(path), images)
    loaded, labels = load_glyphs(str(path), 28)
    assert np.array_equal(loaded, images) and labels.tolist() == (np.arange(12) % 10).tolist()


def test_idx_rejects_garbage(tmp_path):
    path = tmp_path / "images.idx"
    path.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 20)
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path)
    write_idx(path, np.zeros((2, 28, 28)))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match="holds"):
        read_idx(path)


def test_fixed_test_set_is_read_sequence_by_sequence(tmp_path):
    rng = np.random.default_rng(1)
    fixed = np.zeros((20, 3, 64, 64), dtype=np.uint8)
    fixed[:, :, 20:40, 20:40] = rng.integers(100, 256, size=(20, 3, 1, 1), dtype=np.uint8)
    path = tmp_path / "mnist_test_seq.npy"
    np.save(path, fixed)
    source = MovingMnistSource(num_videos=999, fps=10, path=str(path))
    items = source.items()
    assert [item.key for item in items] == [f"mnist_test_seq-{i:06d}" for i in range(3)]
    frames = read_frames(source.fetch(items[2]).data)[..., 0].astype(int)
    assert frames.shape == (20, 64, 64)
    assert np.abs(frames - fixed[:, 2]).mean() < 3  # mp4 at crf 12 is close to lossless
