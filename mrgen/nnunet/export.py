"""Synthetic (or any conditional) slice JSON -> nnU-Net v2 raw training dataset.

Input entries are the synthesis JSON's (``image_path``, ``mask_0_path`` ...) or a conditional index's
(``image_path``, ``mask0_path`` ...). Per entry, as the original's ``prepare_synthetic_data.py``
(reference 7.1): the image as grayscale uint8; each organ mask binarised (> ``mask_threshold``, 0 in the
original) and multiplied by its id; organs combined by per-pixel max into one label map; an overlay in
``visualizationTr``; empty label maps counted and reported. Several JSONs can be merged, each sampled at
its own ratio with a seeded RNG (the original's ``merg_json``).

An entry's ``ignored_masks`` (mask indices; written by the per-organ selection rule, ``mrgen.filtering.selection``)
are organs the quality filter did not trust: instead of their label, the pixels of their box (the filter's search
box, ``SEARCH_BOX_MARGIN``) that no trusted organ claims get nnU-Net's ignore label, which the loss skips; dataset.json
then lists ``"ignore"`` as the highest label.

Additions: ``--format nifti`` writes pseudo-3D ``(1, H, W)`` NIfTI carrying the in-plane spacing, from the
entry's ``spacing`` (mm per pixel of the grid given by its ``shape``) or ``--spacing``; ``--size`` resizes
(bilinear for images, nearest for labels) after a centred pad to a square.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from mrgen.data.preprocess import SEARCH_BOX_MARGIN, box_with_margin
from mrgen.io.images import read_gray, to_uint8, write_rgb
from mrgen.nnunet.env import dataset_dir as make_dataset_dir, raw_root
from mrgen.nnunet.geometry import forward_image, forward_labels
from mrgen.nnunet.labels import ExportLabels
from mrgen.nnunet.raw_dataset import FileFormat, SplitFolders, planar_affine, write_dataset_json
from mrgen.viz import overlay

log = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.3  # the original's 70% image, 30% colour
IGNORE_COLOUR = (150, 150, 150)  # grey in visualizationTr
MAX_LISTED = 10


class ExportError(ValueError):
    """An input JSON or one of its entries cannot be exported; the message names the file and entry."""


@dataclass(frozen=True)
class SliceItem:
    image_path: Path
    mask_paths: tuple[Path | None, ...]      # one per organ of the export mapping
    spacing: tuple[float, float] | None      # (row, col) mm per pixel of ``grid_shape``
    grid_shape: tuple[int, int] | None       # the grid the spacing refers to (entry ``shape``)
    where: str
    ignored: tuple[int, ...] = ()            # mask indices written as the ignore label


@dataclass
class ExportOptions:
    dataset_id: int
    dataset_name: str
    labels: ExportLabels
    file_format: FileFormat = "png"
    size: int | None = None
    mask_threshold: int = 0
    spacing: tuple[float, float] | None = None   # overrides entries: mm per pixel of the stored images
    channel_name: str = "MR"
    overwrite: bool = False


@dataclass
class ExportReport:
    dataset_dir: Path
    cases: int = 0
    empty: list[str] = field(default_factory=list)
    organ_counts: Counter = field(default_factory=Counter)
    with_ignored: int = 0  # slices with an ignore region


def load_items(json_file: str | Path, labels: ExportLabels) -> list[SliceItem]:
    """The entries of one synthesis JSON or conditional index, with mask paths in mapping order."""
    path = Path(json_file)
    if not path.is_file():
        raise ExportError(f"JSON file {path} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, list):
        raise ExportError(f"{path}: expected a JSON list of entries (synthesis JSON or conditional index)")
    return [_item(path, i, entry, labels) for i, entry in enumerate(raw)]


def _item(path: Path, i: int, entry: Any, labels: ExportLabels) -> SliceItem:
    where = f"{path}: entry {i}"
    if not isinstance(entry, dict) or "image_path" not in entry:
        raise ExportError(f"{where}: expected an object with 'image_path'")
    masks = []
    for k in range(len(labels.organs)):
        key = next((key for key in (f"mask_{k}_path", f"mask{k}_path") if key in entry), None)
        if key is None:
            raise ExportError(f"{where}: no 'mask_{k}_path' or 'mask{k}_path' for organ {labels.organs[k]!r} "
                              f"of mapping {labels.source}; is this the right --mask2label?")
        masks.append(None if entry[key] is None else _resolve(path, entry[key], where, key))
    spacing = entry.get("spacing")
    shape = entry.get("shape")
    return SliceItem(
        image_path=_resolve(path, entry["image_path"], where, "image_path"),
        mask_paths=tuple(masks),
        spacing=None if spacing is None else (float(spacing[0]), float(spacing[1])),
        grid_shape=None if shape is None else (int(shape[0]), int(shape[1])),
        where=where,
        ignored=_ignored_masks(entry.get("ignored_masks", []), len(labels.organs), where),
    )


def _ignored_masks(value: Any, organs: int, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(k, int) and 0 <= k < organs for k in value):
        raise ExportError(f"{where}: 'ignored_masks' must be a list of mask indices in [0, {organs}), got {value!r}")
    return tuple(value)


def _resolve(json_path: Path, value: str, where: str, key: str) -> Path:
    """Relative paths: against the JSON's folder first, then the working directory."""
    candidates = [Path(value)] if Path(value).is_absolute() else [json_path.parent / value, Path.cwd() / value]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ExportError(f"{where}: '{key}' {value!r} not found (tried {', '.join(str(c) for c in candidates)})")


def merge_items(lists: Sequence[list[SliceItem]], ratios: Sequence[float] | None, seed: int) -> list[SliceItem]:
    """Each list sampled without replacement at its ratio (round(ratio * n) entries), then concatenated."""
    ratios = list(ratios) if ratios else [1.0] * len(lists)
    if len(ratios) != len(lists):
        raise ExportError(f"{len(ratios)} sampling ratios for {len(lists)} JSON files; give one per file")
    rng = random.Random(seed)
    merged: list[SliceItem] = []
    for items, ratio in zip(lists, ratios):
        if not 0.0 < ratio <= 1.0:
            raise ExportError(f"sampling ratios must lie in (0, 1], got {ratio}")
        count = round(ratio * len(items))
        merged += items if count == len(items) else rng.sample(items, count)
    return merged


def export_slices(items: Sequence[SliceItem], out_root: Path, options: ExportOptions) -> ExportReport:
    """Write ``imagesTr``/``labelsTr``/``visualizationTr`` and dataset.json under ``out_root``; an export stopped
    by an error leaves nothing behind."""
    if not items:
        raise ExportError("no entries to export")
    dataset_dir = make_dataset_dir(Path(out_root), options.dataset_id, options.dataset_name)
    folders = SplitFolders(dataset_dir, "Tr", options.file_format)
    report = ExportReport(dataset_dir)
    if options.file_format == "nifti" and options.spacing is None and any(item.spacing is None for item in items):
        log.warning("entries without spacing and no --spacing: their NIfTI slices get 1 mm pixels")
    with folders.written(("images", "labels", "visualization"), options.overwrite):
        for item, name in tqdm(list(zip(items, unique_names(items))), desc="export slices", unit="slice"):
            _count(name, _export_item(item, name, folders, options), options.labels, report)
        write_dataset_json(dataset_dir, options.labels, options.file_format, options.dataset_name,
                           options.dataset_name, options.channel_name, overwrite=options.overwrite,
                           ignore=any(item.ignored for item in items))
    _log_report(report)
    return report


def _export_item(item: SliceItem, name: str, folders: SplitFolders, options: ExportOptions) -> np.ndarray:
    """Write one slice's image, label map and overlay; returns the label map written."""
    image, labels = _read_item(item, options)
    spacing = _pixel_spacing(item, image.shape, options) or (1.0, 1.0)
    if options.size is not None:
        spacing = tuple(s * max(image.shape) / options.size for s in spacing)
    padded = options.size is not None
    image = np.clip(np.rint(forward_image(image.astype(np.float32), padded, options.size)), 0, 255).astype(np.uint8)
    labels = forward_labels(labels, padded, options.size)
    affine = planar_affine(*spacing)
    folders.write_image(name, image, affine)
    folders.write_label(name, labels, affine)
    write_rgb(folders.folder("visualization") / f"{name}.png",
              overlay(image, labels, OVERLAY_ALPHA, {options.labels.ignore_id: IGNORE_COLOUR}))
    return labels


def _read_item(item: SliceItem, options: ExportOptions) -> tuple[np.ndarray, np.ndarray]:
    image = read_gray(item.image_path)
    if image.dtype != np.uint8:
        image = to_uint8(image)
    labels = np.zeros(image.shape, np.uint8)
    ignored = []
    for k, mask_path in enumerate(item.mask_paths):
        if mask_path is None:
            continue
        mask = read_gray(mask_path)
        if mask.shape != image.shape:
            raise ExportError(f"{item.where}: mask {mask_path} is {mask.shape}, the image {image.shape}")
        organ = mask > options.mask_threshold
        if k in item.ignored:
            ignored.append(organ)
        else:
            labels[organ] = np.maximum(labels[organ], k + 1)
    for organ in ignored:
        if organ.any():
            box = np.zeros_like(organ)
            box[box_with_margin(organ, SEARCH_BOX_MARGIN)] = True
            labels[box & (labels == 0)] = options.labels.ignore_id
    return image, labels


def _pixel_spacing(item: SliceItem, image_shape: tuple[int, ...], options: ExportOptions) -> tuple[float, float] | None:
    """mm per pixel of the stored image: ``--spacing``, else the entry's spacing rescaled from its grid."""
    if options.spacing is not None:
        return options.spacing
    if item.spacing is None:
        return None
    if item.grid_shape is None or tuple(item.grid_shape) == tuple(image_shape):
        return item.spacing
    # a generated image is the source grid padded to a square and resized: one scale for both axes
    scale = max(item.grid_shape) / max(image_shape)
    return item.spacing[0] * scale, item.spacing[1] * scale


def unique_names(items: Sequence[SliceItem]) -> list[str]:
    """Case names from image file names (unsafe characters -> '_'), repeated names numbered."""
    counts: Counter = Counter()
    names = []
    for item in items:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", item.image_path.stem)
        counts[base] += 1
        names.append(base if counts[base] == 1 else f"{base}_{counts[base]}")
    if len(set(names)) != len(names):
        raise ExportError("could not make unique case names from the image file names; rename the files")
    return names


def _count(name: str, labels: np.ndarray, export: ExportLabels, report: ExportReport) -> None:
    report.cases += 1
    present = set(np.unique(labels).tolist()) - {0}
    if not present:
        report.empty.append(name)
    for organ, organ_id in export.ids.items():
        if organ_id in present:
            report.organ_counts[organ] += 1
    report.with_ignored += export.ignore_id in present


def _log_report(report: ExportReport) -> None:
    log.info("exported %d slices to %s; slices per organ: %s; with an ignore region: %d", report.cases,
             report.dataset_dir, dict(report.organ_counts), report.with_ignored)
    if report.empty:
        shown = ", ".join(report.empty[:MAX_LISTED]) + (" ..." if len(report.empty) > MAX_LISTED else "")
        log.warning("%d of %d label maps are empty (no organ): %s", len(report.empty), report.cases, shown)


def export_json_files(json_files: Sequence[str | Path], out_root: Path | None, options: ExportOptions,
                      ratios: Sequence[float] | None = None, seed: int = 0) -> ExportReport:
    """Load, merge (seeded sampling at ``ratios``) and export; ``out_root`` defaults to ``$nnUNet_raw``."""
    root = raw_root(out_root)
    lists = [load_items(path, options.labels) for path in json_files]
    return export_slices(merge_items(lists, ratios, seed), root, options)
