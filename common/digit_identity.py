"""Which digit a frame shows where a digit should be: a score that MSE cannot give.

MSE rewards blur: a grey smear where a "3" was scores better than a sharp "3" one pixel
off. `DigitIdentity` is a small classifier trained on the glyph images the data was drawn
from (scikit-learn's digits, or an MNIST IDX file), applied to the crop of a frame at each
digit's true position; a frame's score is the share of its digits the classifier names
right. Scored on the original frames it gives the ceiling (digits that overlap are harder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

MAX_GLYPHS = 5000  # enough for a linear model; an MNIST file's 60,000 would only slow it down


@dataclass(frozen=True)
class DigitTrack:
    """One digit of a clip: its label and its top-left corner (y, x) in every clip frame."""

    label: int
    corners: np.ndarray  # int [T, 2]


def _overlapped(glyphs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each glyph with another one composited (max) at a random offset, as in a frame where
    two digits cross."""
    size = glyphs.shape[1]
    out = glyphs.copy()
    others = glyphs[rng.integers(0, len(glyphs), size=len(glyphs))]
    offsets = rng.integers(-size + 4, size - 4, (len(glyphs), 2))
    for image, other, (dy, dx) in zip(out, others, offsets, strict=True):
        target = image[max(dy, 0) : size + min(dy, 0), max(dx, 0) : size + min(dx, 0)]
        source = other[max(-dy, 0) : size - max(dy, 0), max(-dx, 0) : size - max(dx, 0)]
        np.maximum(target, source, out=target)
    return out


class DigitIdentity:
    """A linear classifier of glyph crops uint8 [N, size, size]; deterministic for a seed."""

    def __init__(self, glyphs: np.ndarray, labels: np.ndarray, seed: int = 0):
        known = labels >= 0
        glyphs, labels = glyphs[known][:MAX_GLYPHS], labels[known][:MAX_GLYPHS]
        if len(set(labels.tolist())) < 2:
            raise ValueError("digit identity needs labelled glyphs of at least two classes")
        rng = np.random.default_rng(seed)
        # clean glyphs, and glyphs crossed by another: crops of real frames are often both
        images = np.concatenate([glyphs, _overlapped(glyphs, rng), _overlapped(glyphs, rng)])
        targets = np.concatenate([labels, labels, labels])
        self.size = glyphs.shape[1]
        self.model = LogisticRegression(C=0.05, max_iter=500).fit(self._features(images), targets)

    def _features(self, crops: np.ndarray) -> np.ndarray:
        return crops.reshape(len(crops), -1).astype(np.float32) / 255.0

    def predict(self, crops: np.ndarray) -> np.ndarray:
        return self.model.predict(self._features(crops))

    def score(self, frames: torch.Tensor, tracks: list[DigitTrack]) -> torch.Tensor:
        """Frames uint8 [T, C, H, W] (channels averaged) whose digits follow `tracks` -> the
        share of digits named right in each frame, [T]."""
        grey = frames.float().mean(1).round().clamp(0, 255).to(torch.uint8).numpy()
        size, right = self.size, np.zeros(len(grey))
        for track in tracks:
            crops = np.stack(
                [frame[y : y + size, x : x + size] for frame, (y, x) in zip(grey, track.corners, strict=True)]
            )
            right += self.predict(crops) == track.label
        return torch.from_numpy(right / max(1, len(tracks))).float()
