"""PNG figures a person can judge: image grids with mask overlays, and loss curves.

Drawn with matplotlib's object API on the Agg canvas (no pyplot global state, no display needed) and
written atomically.
"""

from __future__ import annotations

import os
import textwrap
from typing import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.ndimage import binary_erosion

from mrgen.io.atomic import atomic_save

# liver red, right kidney green, left kidney blue, spleen yellow, then more for other label sets
ORGAN_COLOURS = np.array([(230, 50, 50), (40, 200, 70), (60, 110, 250), (250, 220, 40), (220, 80, 220),
                          (40, 220, 220), (250, 140, 30), (150, 150, 150)], dtype=np.float32) / 255.0


def to_unit(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """A [-1, 1] slice, (1, H, W) or (H, W), as a float (H, W) array in [0, 1]."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu().numpy()
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[0]
    return np.clip((image + 1.0) / 2.0, 0.0, 1.0)


def _colour(index: int) -> np.ndarray:
    return ORGAN_COLOURS[index % len(ORGAN_COLOURS)]


def colour_masks(masks: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Organs painted in their colours on black, (H, W, 3)."""
    rgb = np.zeros((*shape, 3), np.float32)
    for i, mask in enumerate(masks):
        rgb[np.asarray(mask, bool)] = _colour(i)
    return rgb


def overlay_masks(image: np.ndarray, masks: Sequence[np.ndarray], alpha: float = 0.45) -> np.ndarray:
    """Semi-transparent organ colours over a grey image in [0, 1]."""
    rgb = np.repeat(image[..., None], 3, axis=-1)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, bool)
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * _colour(i)
    return rgb


def outline_masks(image: np.ndarray, masks: Sequence[np.ndarray]) -> np.ndarray:
    """One-pixel organ outlines over a grey image in [0, 1]: does the sample follow the mask?"""
    rgb = np.repeat(image[..., None], 3, axis=-1)
    for i, mask in enumerate(masks):
        mask = np.asarray(mask, bool)
        rgb[mask & ~binary_erosion(mask)] = _colour(i)
    return rgb


def save_grid(path: str | os.PathLike, cells: Sequence[Sequence[np.ndarray]], column_titles: Sequence[str],
              row_titles: Sequence[str] | None = None, title: str | None = None, cell_inches: float = 1.9) -> None:
    """Rows of images ((H, W) grey in [0, 1] or (H, W, 3) RGB) with column and optional row titles."""
    rows, cols = len(cells), max(len(r) for r in cells)
    height = cell_inches * rows + (0.5 if title else 0.2)
    figure = Figure(figsize=(cell_inches * cols, height), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.subplots(rows, cols, squeeze=False)
    for r, row in enumerate(cells):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(row):
                image = row[c]
                ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0.0, vmax=1.0,
                          interpolation="nearest")
            else:
                ax.axis("off")
            if r == 0 and c < len(column_titles):
                ax.set_title(textwrap.fill(column_titles[c], 22), fontsize=7)
            if c == 0 and row_titles is not None and r < len(row_titles):
                ax.set_ylabel(textwrap.fill(row_titles[r], 24), fontsize=6)
    if title:
        figure.suptitle(title, fontsize=8)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.35 / height) if title else None)  # keep the title off the column titles
    atomic_save(path, lambda tmp: figure.savefig(tmp, format="png"))


def save_loss_curve(path: str | os.PathLike, steps: Sequence[int], losses: Sequence[float], title: str) -> None:
    """Per-step loss (faint) and its running mean, log scale."""
    figure = Figure(figsize=(6.4, 3.6), dpi=110)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    steps_arr, losses_arr = np.asarray(steps), np.asarray(losses, dtype=np.float64)
    ax.plot(steps_arr, losses_arr, color="tab:blue", alpha=0.3, linewidth=0.8, label="loss per step")
    window = min(max(len(losses_arr) // 20, 5), 1000)
    if len(losses_arr) >= window > 1:
        smooth = np.convolve(losses_arr, np.ones(window) / window, mode="valid")
        ax.plot(steps_arr[window - 1:], smooth, color="tab:blue", linewidth=1.6, label=f"mean of {window}")
    if len(losses_arr) and np.all(losses_arr > 0):
        ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    figure.tight_layout()
    atomic_save(path, lambda tmp: figure.savefig(tmp, format="png"))


REFERENCE_SUFFIXES = {"_floor": ("floor (shuffled masks)", "tab:gray"), "_shuffled": ("shuffled masks", "tab:gray"),
                      "_real": ("real target slices", "tab:green")}


def save_validation_curve(path: str | os.PathLike, history: Sequence[dict[str, float]], title: str) -> None:
    """One panel per validation metric over the optimizer steps; a metric's references (``<name>_floor``,
    ``<name>_shuffled``, ``<name>_real``) are drawn dashed in its panel."""
    metrics = sorted({k for entry in history for k in entry} - {"step"})
    bases = [m for m in metrics if not any(m.endswith(s) and m[:-len(s)] in metrics for s in REFERENCE_SUFFIXES)]
    columns = min(len(bases), 3)
    rows = -(-len(bases) // columns)
    figure = Figure(figsize=(4.2 * columns, 2.9 * rows), dpi=100)
    FigureCanvasAgg(figure)
    for i, base in enumerate(bases):
        ax = figure.add_subplot(rows, columns, i + 1)
        for name, (label, colour), style in [(base, ("model", "tab:blue"), "-o"),
                                             *((base + s, ref, "--x") for s, ref in REFERENCE_SUFFIXES.items())]:
            points = [(e["step"], e[name]) for e in history if name in e]
            if points:
                ax.plot(*zip(*points), style, color=colour, markersize=3, linewidth=1.3, label=label)
        ax.set_title(base, fontsize=9)
        ax.set_xlabel("optimizer step", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    atomic_save(path, lambda tmp: figure.savefig(tmp, format="png"))
