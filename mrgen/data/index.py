"""The conditional dataset index: a JSON list of slice entries in the original's schema.

Schema (reference 5.2), one object per 2D slice:

- ``image_path`` (str): the slice image (PNG).
- ``mask0_path`` ... ``mask{K-1}_path`` (str or null): one binary PNG per organ, mask ``i`` belongs to
  ``label[i]``, same size as the image.
- ``modality`` (str): a key of the modality registry; ``modality_attributes`` (str): its attribute text.
- ``region`` (str), ``label`` (list of the dataset's organ names), ``organs`` (list of organs present in
  this slice, a subset of ``label``), ``shape`` ([H, W]), ``dataset`` (str).
- optional: ``patient_id``, ``slice_index``, ``spacing`` ([row mm, col mm] or [row, col, slice]),
  ``volume_nii_path``, ``mask_nii_path``. Other keys are kept as they are.

Relative paths resolve against the index file's folder. Validation runs before any long work starts and
reports every problem it finds with the file, the entry number and the field.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from mrgen.data.modalities import ModalityRegistry, load_registry
from mrgen.io.atomic import atomic_write_json

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("image_path", "modality", "modality_attributes", "region", "label", "organs", "shape", "dataset")
OPTIONAL_PATH_FIELDS = ("volume_nii_path", "mask_nii_path")
MASK_FIELD = re.compile(r"^mask(\d+)_path$")
MAX_REPORTED_PROBLEMS = 20


class IndexValidationError(ValueError):
    """One or more entries of an index file are invalid; the message lists each problem."""

    def __init__(self, path: Path, problems: Sequence[str]):
        self.path = path
        self.problems = list(problems)
        shown = self.problems[:MAX_REPORTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        text = f"{path}: {len(self.problems)} problem(s) in the dataset index:\n  " + "\n  ".join(shown)
        if more:
            text += f"\n  ... and {more} more"
        super().__init__(text)


@dataclass
class IndexEntry:
    image_path: Path
    mask_paths: list[Path | None]
    modality: str
    modality_attributes: str
    region: str
    label: list[str]
    organs: list[str]
    shape: tuple[int, int]
    dataset: str
    patient_id: str | None = None
    slice_index: int | None = None
    spacing: tuple[float, ...] | None = None
    volume_nii_path: Path | None = None
    mask_nii_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def patient_key(self) -> str:
        """What splits group by: ``patient_id``, else the volume file, else the image's folder."""
        if self.patient_id:
            return str(self.patient_id)
        if self.volume_nii_path is not None:
            return str(self.volume_nii_path)
        return str(self.image_path.parent)

    def mask_path_for(self, organ: str) -> Path | None:
        i = self.label.index(organ)
        return self.mask_paths[i] if i < len(self.mask_paths) else None

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        def rel(p: Path | None) -> str | None:
            if p is None:
                return None
            if relative_to is not None:
                return os.path.relpath(p, relative_to)
            return str(p)

        out: dict[str, Any] = {"image_path": rel(self.image_path)}
        for i, mask in enumerate(self.mask_paths):
            out[f"mask{i}_path"] = rel(mask)
        out.update(
            modality=self.modality,
            modality_attributes=self.modality_attributes,
            region=self.region,
            label=list(self.label),
            organs=list(self.organs),
            shape=list(self.shape),
            dataset=self.dataset,
        )
        for key in ("patient_id", "slice_index"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.spacing is not None:
            out["spacing"] = list(self.spacing)
        for key in OPTIONAL_PATH_FIELDS:
            if getattr(self, key) is not None:
                out[key] = rel(getattr(self, key))
        out.update(self.extra)
        return out


class _EntryParser:
    """Turns one raw JSON object into an IndexEntry, collecting problems instead of stopping at the first."""

    def __init__(self, index_path: Path, root: Path, allow_outside_root: bool, registry: ModalityRegistry, check_files: bool):
        self.index_path = index_path
        self.base = index_path.parent
        self.root = root.resolve()
        self.allow_outside_root = allow_outside_root
        self.registry = registry
        self.check_files = check_files
        self.problems: list[str] = []

    def problem(self, i: int, name: str, text: str) -> None:
        self.problems.append(f"entry {i}: field '{name}': {text}")

    def resolve(self, i: int, name: str, value: Any, must_exist: bool = True) -> Path | None:
        if not isinstance(value, str) or not value:
            self.problem(i, name, f"expected a non-empty path string, got {value!r}")
            return None
        path = Path(value)
        if not path.is_absolute():
            path = self.base / path
        resolved = path.resolve()
        if not self.allow_outside_root and not resolved.is_relative_to(self.root):
            self.problem(
                i, name,
                f"{value!r} resolves to {resolved}, outside the dataset root {self.root}; move the file under "
                f"the root or allow it explicitly (allow_outside_root=True / --allow_outside_root)",
            )
            return None
        if must_exist and self.check_files and not resolved.is_file():
            self.problem(i, name, f"file {resolved} does not exist; fix the path or remove the entry")
            return None
        return resolved

    def image_size(self, i: int, name: str, path: Path) -> tuple[int, int] | None:
        """(H, W) from the file header; a file PIL cannot read is a problem."""
        try:
            with Image.open(path) as im:
                width, height = im.size
            return height, width
        except (UnidentifiedImageError, OSError) as err:
            self.problem(i, name, f"file {path} is not a readable image ({err}); re-export it")
            return None

    def parse(self, i: int, raw: Any) -> IndexEntry | None:
        if not isinstance(raw, dict):
            self.problem(i, "<entry>", f"expected a JSON object, got {type(raw).__name__}")
            return None
        before = len(self.problems)
        for name in REQUIRED_FIELDS:
            if name not in raw:
                self.problem(i, name, "missing; every entry needs " + ", ".join(REQUIRED_FIELDS))
        if len(self.problems) > before:
            return None

        label = self.string_list(i, "label", raw["label"])
        organs = self.string_list(i, "organs", raw["organs"])
        if label is not None and organs is not None:
            for organ in organs:
                if organ not in label:
                    self.problem(i, "organs", f"organ {organ!r} is not in label {label}; add it to 'label' or fix the name")

        modality = raw["modality"]
        if not isinstance(modality, str) or modality not in self.registry:
            self.problem(
                i, "modality",
                f"unknown modality key {modality!r}; known keys are in {self.registry.source} "
                f"(add it there or pass a registry that has it)",
            )
        elif raw["modality_attributes"] != self.registry.attributes(modality):
            log.warning("%s: entry %d: modality_attributes differ from the registry's text for %r; "
                        "prompts use the registry", self.index_path, i, modality)

        shape = raw["shape"]
        if not (isinstance(shape, (list, tuple)) and len(shape) == 2 and all(isinstance(s, int) and s > 0 for s in shape)):
            self.problem(i, "shape", f"expected [H, W] with positive integers, got {shape!r}")
            shape = None

        image_path = self.resolve(i, "image_path", raw["image_path"])
        image_hw = self.image_size(i, "image_path", image_path) if image_path and self.check_files else None

        mask_paths = self.masks(i, raw, image_hw)
        if label is not None and len(mask_paths) > len(label):
            self.problem(i, "label", f"{len(mask_paths)} mask fields but only {len(label)} label names; mask i belongs to label[i]")

        optional = {}
        for name in OPTIONAL_PATH_FIELDS:
            if raw.get(name) is not None:
                optional[name] = self.resolve(i, name, raw[name], must_exist=False)
        spacing = raw.get("spacing")
        if spacing is not None and not (isinstance(spacing, (list, tuple)) and len(spacing) in (2, 3)
                                        and all(isinstance(s, (int, float)) and s > 0 for s in spacing)):
            self.problem(i, "spacing", f"expected [row mm, col mm] or [row, col, slice] positive numbers, got {spacing!r}")
        slice_index = raw.get("slice_index")
        if slice_index is not None and not isinstance(slice_index, int):
            self.problem(i, "slice_index", f"expected an integer, got {slice_index!r}")

        if len(self.problems) > before:
            return None
        known = set(REQUIRED_FIELDS) | set(OPTIONAL_PATH_FIELDS) | {"patient_id", "slice_index", "spacing"}
        extra = {k: v for k, v in raw.items() if k not in known and not MASK_FIELD.match(k)}
        return IndexEntry(
            image_path=image_path,
            mask_paths=mask_paths,
            modality=modality,
            modality_attributes=raw["modality_attributes"],
            region=raw["region"],
            label=label,
            organs=organs,
            shape=(int(shape[0]), int(shape[1])),
            dataset=raw["dataset"],
            patient_id=None if raw.get("patient_id") is None else str(raw["patient_id"]),
            slice_index=slice_index,
            spacing=None if spacing is None else tuple(float(s) for s in spacing),
            extra=extra,
            **optional,
        )

    def masks(self, i: int, raw: dict[str, Any], image_hw: tuple[int, int] | None) -> list[Path | None]:
        """The ``mask{k}_path`` fields in order; each file must match its image's size and be binary."""
        mask_paths: list[Path | None] = []
        mask_numbers = sorted(int(m.group(1)) for m in (MASK_FIELD.match(k) for k in raw) if m)
        if mask_numbers and mask_numbers != list(range(len(mask_numbers))):
            self.problem(i, "mask*_path", f"mask fields must be numbered 0..K-1 without gaps, got {mask_numbers}")
        for k in mask_numbers:
            name = f"mask{k}_path"
            if raw[name] is None:
                mask_paths.append(None)
                continue
            mask_path = self.resolve(i, name, raw[name])
            mask_paths.append(mask_path)
            if mask_path and image_hw and self.check_files:
                self.check_mask(i, name, mask_path, image_hw)
        return mask_paths

    def check_mask(self, i: int, name: str, path: Path, image_hw: tuple[int, int]) -> None:
        try:
            with Image.open(path) as im:
                levels = np.unique(np.asarray(im.convert("L") if im.mode not in ("L", "1", "P") else im))
                width, height = im.size
        except (UnidentifiedImageError, OSError) as err:
            self.problem(i, name, f"file {path} is not a readable image ({err}); re-export it")
            return
        if (height, width) != image_hw:
            self.problem(i, name, f"mask is {height}x{width} but the image is {image_hw[0]}x{image_hw[1]} (H x W); "
                                  f"masks must match their image")
        if levels.size > 2 or (levels.size == 2 and levels[0] != 0):
            shown = ", ".join(str(v) for v in levels[:6]) + (" ..." if levels.size > 6 else "")
            self.problem(i, name, f"mask {path} is not binary (grey levels {shown}); a mask holds 0 for background "
                                  f"and one foreground level (0/255 PNG); is this an image or a label map?")

    def string_list(self, i: int, name: str, value: Any) -> list[str] | None:
        if isinstance(value, str):  # the Radiopaedia JSON stores organs as one comma-separated string
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        self.problem(i, name, f"expected a list of strings, got {value!r}")
        return None


def load_index(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    allow_outside_root: bool = False,
    registry: ModalityRegistry | None = None,
    check_files: bool = True,
    annotations: bool = True,
) -> list[IndexEntry]:
    """Load and validate an index file; raise IndexValidationError listing every bad entry.

    ``root`` (default: the index file's folder) bounds where paths may point unless
    ``allow_outside_root``. ``check_files`` reads each image and mask header (existence, readability,
    matching size); turn it off only for indexes whose files live elsewhere on purpose.
    ``annotations=False`` treats the index as unannotated: mask fields and ``organs`` are dropped before
    validation, so no mask file is ever opened (how target-modality slices are loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset index {path} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise IndexValidationError(path, [f"not valid UTF-8 JSON: {err}"]) from err
    if not isinstance(raw, list):
        raise IndexValidationError(path, ["the top level must be a JSON list of entries"])
    if not annotations:
        raw = [_without_annotations(item) for item in raw]
    parser = _EntryParser(path, Path(root) if root is not None else path.parent, allow_outside_root,
                          registry or load_registry(), check_files)
    entries = [parser.parse(i, item) for i, item in enumerate(raw)]
    if parser.problems:
        raise IndexValidationError(path, parser.problems)
    return entries  # type: ignore[return-value]


def _without_annotations(item: Any) -> Any:
    if not isinstance(item, dict):
        return item
    stripped = {k: v for k, v in item.items() if not MASK_FIELD.match(k) and k != "mask_nii_path"}
    stripped["organs"] = []
    return stripped


def load_indexes(paths: Iterable[str | os.PathLike], **kwargs: Any) -> list[IndexEntry]:
    """The concatenation of several index files, each validated."""
    entries: list[IndexEntry] = []
    for p in paths:
        entries.extend(load_index(p, **kwargs))
    return entries


def save_index(entries: Iterable[IndexEntry], path: str | os.PathLike) -> None:
    """Write entries atomically with paths relative to the index file."""
    path = Path(path)
    base = path.parent.resolve()
    atomic_write_json(path, [e.to_json(relative_to=base) for e in entries])
