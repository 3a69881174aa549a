"""Picture helpers: colours, overlays and grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from PIL import Image

from mrgen import viz
from mrgen.io.images import read_gray


def test_fixed_organ_colours() -> None:
    assert viz.label_colour(1) == (230, 45, 45)  # liver red
    assert viz.label_colour(4)[0] > 200 and viz.label_colour(4)[1] > 200  # spleen yellow
    assert viz.label_colour(5) != viz.label_colour(6)
    with pytest.raises(ValueError):
        viz.label_colour(0)


def test_overlay_fills_and_outlines() -> None:
    image = np.full((20, 20), 100, np.uint8)
    labels = np.zeros((20, 20), np.int64)
    labels[5:15, 5:15] = 1
    out = viz.overlay(image, labels, alpha=0.5)
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (100, 100, 100)              # background untouched
    assert tuple(out[5, 5]) == viz.label_colour(1)          # outline opaque
    assert out[10, 10, 0] > out[10, 10, 1]                  # interior tinted red
    from_masks = viz.overlay(image, [labels == 1, None], alpha=0.5)
    np.testing.assert_array_equal(from_masks, out)
    ramp = viz.overlay(np.linspace(0.0, 1.0, 400).reshape(20, 20), labels)  # float images are min-max scaled
    assert tuple(ramp[0, 0]) == (0, 0, 0) and tuple(ramp[-1, -1]) == (255, 255, 255)


def test_overlay_rejects_mismatched_masks() -> None:
    with pytest.raises(ValueError, match="shape"):
        viz.overlay(np.zeros((8, 8)), [np.zeros((4, 4))])


def test_save_grid_upscales_small_images(tmp_path: Path) -> None:
    tiles = [[np.zeros((32, 32), np.uint8), viz.overlay(np.zeros((32, 32)), np.eye(32, dtype=int))],
             [np.full((64, 64), 200, np.uint8), None]]
    path = tmp_path / "grid.png"
    viz.save_grid(tiles, path, titles=["image", "overlay"], row_labels=["a", "b"])
    with Image.open(path) as im:
        assert im.mode == "RGB"
        width, height = im.size
    assert width > 2 * viz.MIN_TILE_PX and height > 2 * viz.MIN_TILE_PX
    assert read_gray(path).max() >= 200
