"""Reading and writing 2D slices as PNG, always atomically."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from mrgen.io.atomic import atomic_save


def read_gray(path: str | os.PathLike) -> np.ndarray:
    """Read an image as a 2D array in its stored bit depth (RGB is converted to luminance)."""
    with Image.open(path) as im:
        if im.mode in ("I;16", "I;16B", "I", "F"):
            return np.asarray(im)
        return np.asarray(im.convert("L"))


def write_gray(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a 2D uint8 (or uint16) array as a PNG."""
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2D array, got shape {array.shape}")
    if array.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{path}: expected uint8 or uint16, got {array.dtype}; scale it first")
    atomic_save(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def write_rgb(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 array as a PNG."""
    array = np.asarray(array, dtype=np.uint8)
    atomic_save(path, lambda tmp: Image.fromarray(array, mode="RGB").save(tmp, format="PNG"))


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Min-max scale any array to 0..255 uint8 (a constant image becomes all zeros)."""
    image = np.asarray(image, dtype=np.float64)
    lo, hi = float(image.min()), float(image.max())
    if hi <= lo:
        return np.zeros(image.shape, dtype=np.uint8)
    return np.round((image - lo) / (hi - lo) * 255.0).astype(np.uint8)

