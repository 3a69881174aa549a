"""One preprocessing pipeline for every stage, and the mask encodings the ControlNet sees.

Images: grayscale -> per-image min-max to [0, 1] -> centred zero pad to a square (the odd pixel goes
bottom/right) -> anti-aliased bilinear resize -> [-1, 1].
Masks: binarised (> 0) -> the same centred pad -> nearest-neighbour resize, so they stay binary.

The original used three pipelines (reference 5.3): stage 1 had no min-max and a PIL bicubic resize,
stage 2 min-max and an anti-aliased resize that also blurred masks into soft edges, and the nnU-Net
export cv2 bilinear. Here every stage uses the pipeline above; masks never get soft edges.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from skimage.transform import resize

# CHAOS organ order and the original's intensity codes (reference 4.5)
CHAOS_ORGANS = ("liver", "right kidney", "left kidney", "spleen")
CHAOS_WEIGHTS = (0.3, 0.5, 0.4, 0.6)


def min_max(image: np.ndarray) -> np.ndarray:
    """Per-image min-max to [0, 1] in float32; a constant image becomes zeros."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros_like(image)
    return (image - lo) / (hi - lo)


def signed_to_uint8(image: np.ndarray) -> np.ndarray:
    """A [-1, 1] image (model space) as 0..255 uint8, without re-scaling: the inverse of the last step above."""
    return np.round((np.asarray(image, dtype=np.float64) + 1.0) / 2.0 * 255.0).clip(0, 255).astype(np.uint8)


def pad_to_square(array: np.ndarray, value: float = 0) -> np.ndarray:
    """Centred constant pad of a 2D array to a square; the odd pixel goes to the bottom/right."""
    h, w = array.shape[:2]
    n = max(h, w)
    top, left = (n - h) // 2, (n - w) // 2
    pad = [(top, n - h - top), (left, n - w - left)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, mode="constant", constant_values=value)


def unpad_from_square(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of pad_to_square for an array already at the padded size max(shape)."""
    h, w = int(shape[0]), int(shape[1])
    n = array.shape[0]
    top, left = (n - h) // 2, (n - w) // 2
    return array[top:top + h, left:left + w]


def preprocess_image(image: np.ndarray, size: int) -> np.ndarray:
    """A 2D slice (any dtype) -> float32 (size, size) in [-1, 1]."""
    image = np.asarray(image)
    if image.ndim == 3:  # RGB(A) slice: luminance, as PIL's "L"
        image = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    square = pad_to_square(min_max(image))
    if square.shape[0] != size:
        square = resize(square, (size, size), order=1, anti_aliasing=True, preserve_range=True, mode="reflect")
    return (np.clip(square, 0.0, 1.0) * 2.0 - 1.0).astype(np.float32)


def preprocess_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """A 2D mask (any dtype; foreground is > 0) -> bool (size, size), nearest-neighbour resized."""
    square = pad_to_square(np.asarray(mask) > 0)
    if square.shape[0] != size:
        square = resize(square, (size, size), order=0, anti_aliasing=False, preserve_range=True) > 0.5
    return square.astype(bool)


def resize_label_map(labels: np.ndarray, size: int) -> np.ndarray:
    """An integer label map padded to a square and resized by nearest neighbour."""
    square = pad_to_square(np.asarray(labels))
    if square.shape[0] == size:
        return square
    return resize(square, (size, size), order=0, anti_aliasing=False, preserve_range=True).astype(labels.dtype)


@dataclass(frozen=True)
class MaskEncoding:
    """How per-organ masks become the ControlNet condition: the original's single intensity-coded channel,
    sum_i w_i * m_i in [0, 1] mapped to [-1, 1], so with the CHAOS weights background is -1, liver -0.4, right kidney
    0, left kidney -0.2, spleen +0.2. Overlapping organs add up (clipped at 1), as in the original."""

    weights: tuple[float, ...] = field(default=CHAOS_WEIGHTS)
    channels = 1  # condition channels (a class constant, not a setting)

    def __post_init__(self) -> None:
        if any(not 0.0 < w <= 1.0 for w in self.weights):
            raise ValueError(f"organ weights must lie in (0, 1], got {self.weights}")

    def encode(self, masks: Sequence[np.ndarray | None], size: int) -> np.ndarray:
        """Per-organ binary masks (None or all-zero = absent) -> float32 (1, size, size) in [-1, 1]."""
        binary = [np.zeros((size, size), bool) if m is None else np.asarray(m, bool) for m in masks]
        if len(self.weights) < len(binary):
            raise ValueError(f"{len(binary)} organ masks but only {len(self.weights)} intensity weights")
        coded = np.zeros((size, size), np.float32)
        for w, b in zip(self.weights, binary):
            coded += np.float32(w) * b
        return (np.clip(coded, 0.0, 1.0) * 2.0 - 1.0)[None]

    def empty(self, size: int) -> np.ndarray:
        """The condition of an unannotated (target-modality) slice: -1 everywhere."""
        return -np.ones((self.channels, size, size), np.float32)

    def decode(self, condition: np.ndarray, num_organs: int) -> list[np.ndarray]:
        """Per-organ boolean masks back from an encoding (the codes must be distinct sums)."""
        unit = (np.asarray(condition)[0] + 1.0) / 2.0
        half_gap = min(self._min_gap(num_organs), 1.0) / 2.0
        return [np.abs(unit - w) < half_gap for w in self.weights[:num_organs]]

    def _min_gap(self, num_organs: int) -> float:
        codes = sorted([0.0, *self.weights[:num_organs]])
        return min(b - a for a, b in zip(codes, codes[1:]))


SEARCH_BOX_MARGIN = 0.15  # the offline filter's box margin (where it looks for an organ), as a fraction of the box


def box_with_margin(mask: np.ndarray, margin: float) -> tuple[slice, slice]:
    """The bounding box of a non-empty mask grown on every side by ``margin`` of its larger side (at least 2 px)."""
    rows, cols = np.nonzero(mask)
    pad = max(2, int(round(margin * max(np.ptp(rows) + 1, np.ptp(cols) + 1))))
    return (slice(max(rows.min() - pad, 0), min(rows.max() + pad + 1, mask.shape[0])),
            slice(max(cols.min() - pad, 0), min(cols.max() + pad + 1, mask.shape[1])))
