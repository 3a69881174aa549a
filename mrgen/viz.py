"""Small picture helpers shared by every stage: organ colours, mask overlays and labelled image grids.

Colours are fixed so that a given organ looks the same in every picture the project writes:
label 1 (liver) red, 2 (right kidney) green, 3 (left kidney) blue, 4 (spleen) yellow; further labels
take the colours of matplotlib's ``tab20`` map in turn.
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from mrgen.io.images import write_rgb

ORGAN_COLOURS: dict[int, tuple[int, int, int]] = {
    1: (230, 45, 45),    # liver
    2: (40, 200, 70),    # right kidney
    3: (50, 120, 255),   # left kidney
    4: (250, 215, 30),   # spleen
}
BACKGROUND = (24, 24, 24)
TEXT_COLOUR = (235, 235, 235)
MIN_TILE_PX = 160
FONT_PX = 14


def label_colour(label: int) -> tuple[int, int, int]:
    """The RGB colour of a label id (>= 1)."""
    if label < 1:
        raise ValueError(f"label ids start at 1 (0 is background), got {label}")
    if label in ORGAN_COLOURS:
        return ORGAN_COLOURS[label]
    r, g, b, _ = colormaps["tab20"]((label - len(ORGAN_COLOURS) - 1) % 20)
    return int(round(r * 255)), int(round(g * 255)), int(round(b * 255))


def to_rgb(image: np.ndarray) -> np.ndarray:
    """A gray (uint8 as is, any other dtype min-max scaled) or RGB image -> (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        if image.dtype != np.uint8:
            image = _scale_to_uint8(image[..., :3])
        return np.ascontiguousarray(image[..., :3])
    if image.ndim != 2:
        raise ValueError(f"expected a 2D gray or (H, W, 3) RGB image, got shape {image.shape}")
    gray = image if image.dtype == np.uint8 else _scale_to_uint8(image)
    return np.repeat(gray[..., None], 3, axis=2)


def _scale_to_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float64)
    lo, hi = float(np.nanmin(image)), float(np.nanmax(image))
    if hi <= lo:
        return np.zeros(image.shape, np.uint8)
    return np.round((image - lo) / (hi - lo) * 255.0).astype(np.uint8)


def as_label_map(labels: np.ndarray | Sequence[np.ndarray | None], shape: tuple[int, int]) -> np.ndarray:
    """A 2D integer label map, or a list of per-organ masks (mask i -> label i + 1; None = absent)."""
    if isinstance(labels, np.ndarray) and labels.ndim == 2:
        if labels.shape != shape:
            raise ValueError(f"label map shape {labels.shape} differs from the image's {shape}")
        return labels.astype(np.int64)
    label_map = np.zeros(shape, np.int64)
    for i, mask in enumerate(labels):
        if mask is None:
            continue
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"mask {i} has shape {mask.shape}, the image {shape}")
        label_map[mask > 0] = i + 1
    return label_map


def overlay(image: np.ndarray, labels: np.ndarray | Sequence[np.ndarray | None], alpha: float = 0.4,
            colours: Mapping[int, tuple[int, int, int]] | None = None) -> np.ndarray:
    """The image in gray with each label filled in its colour (``label_colour``, or ``colours`` where given) at
    ``alpha`` and outlined (1 px, opaque)."""
    rgb = to_rgb(image).astype(np.float32)
    label_map = as_label_map(labels, rgb.shape[:2])
    for label in np.unique(label_map):
        if label == 0:
            continue
        mask = label_map == label
        colour = np.array((colours or {}).get(int(label), label_colour(int(label))), np.float32)
        rgb[mask] = (1.0 - alpha) * rgb[mask] + alpha * colour
        rgb[mask & ~ndimage.binary_erosion(mask, border_value=0)] = colour
    return np.round(rgb).clip(0, 255).astype(np.uint8)


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor (pixels stay crisp)."""
    if factor <= 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_PX)


def render_grid(
    rows: Sequence[Sequence[np.ndarray | None]],
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    min_tile_px: int = MIN_TILE_PX,
) -> np.ndarray:
    """Compose rows of gray/RGB images (None leaves a blank cell) into one labelled RGB picture."""
    cells = [[None if im is None else to_rgb(im) for im in row] for row in rows]
    present = [im for row in cells for im in row if im is not None]
    if not present:
        raise ValueError("save_grid needs at least one image")
    tile_h = max(im.shape[0] for im in present)
    tile_w = max(im.shape[1] for im in present)
    factor = max(1, -(-min_tile_px // max(tile_h, tile_w)))
    tile_h, tile_w = tile_h * factor, tile_w * factor
    n_cols = max(len(row) for row in cells)
    font = _font()
    pad = 4
    line_h = FONT_PX + 6
    title_h = line_h if titles else 0
    label_w = 0
    if row_labels:
        label_w = int(max(font.getlength(t) for t in row_labels)) + 2 * pad
    width = label_w + n_cols * (tile_w + pad) + pad
    height = title_h + len(cells) * (tile_h + pad) + pad
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(titles or []):
        x = label_w + pad + c * (tile_w + pad)
        draw.text((x + 2, 3), title, fill=TEXT_COLOUR, font=font)
    for r, row in enumerate(cells):
        y = title_h + pad + r * (tile_h + pad)
        if row_labels and r < len(row_labels):
            draw.text((pad, y + tile_h // 2 - FONT_PX // 2), row_labels[r], fill=TEXT_COLOUR, font=font)
        for c, im in enumerate(row):
            if im is None:
                continue
            big = upscale(im, max(1, min(tile_h // im.shape[0], tile_w // im.shape[1])))
            x = label_w + pad + c * (tile_w + pad)
            canvas.paste(Image.fromarray(big, mode="RGB"), (x, y))
    return np.asarray(canvas)


def save_grid(
    rows: Sequence[Sequence[np.ndarray | None]],
    path: str | os.PathLike,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    min_tile_px: int = MIN_TILE_PX,
) -> None:
    """Write ``render_grid(...)`` as a PNG, atomically. Small images are enlarged (nearest neighbour)."""
    write_rgb(path, render_grid(rows, titles, row_labels, min_tile_px))
