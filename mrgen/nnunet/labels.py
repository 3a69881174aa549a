"""Label conventions: which organ gets which nnU-Net id, and which ids make up an evaluated organ.

Two kinds of mapping, both from the original (reference 5.4):

- ``MASK2LABEL`` (export): an ordered list of organ names; organ ``i`` comes from the ``i``-th per-organ
  mask of an index entry (``mask_{i}_path`` in the synthesis JSON, ``mask{i}_path`` in a conditional index)
  and is written with nnU-Net id ``i + 1``. Overlapping organs resolve to the larger id, as in the original.
- ``DATASET2LABEL`` (evaluation): organ name -> one id, or a list of ids meaning their union
  (CHAOS "kidney" = right + left kidney).

A user mapping is a JSON file: for export either the original's ``{"mask_0_path": "liver", ...}`` object or
a plain list of names; for evaluation ``{"liver": 1, "kidney": [2, 3], ...}``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

MASK2LABEL: dict[str, tuple[str, ...]] = {
    "CHAOSMR": ("liver", "right kidney", "left kidney", "spleen"),
    "Prostate": ("prostate",),
    "Liver": ("liver",),
    "Liver Tumor": ("liver", "liver tumor"),
    "Pancreas": ("pancreas",),
}

DATASET2LABEL: dict[str, dict[str, int | tuple[int, ...]]] = {
    "CHAOSMR": {"liver": 1, "right kidney": 2, "left kidney": 3, "spleen": 4, "kidney": (2, 3)},
    "AMOS22_CT": {"liver": 6, "right kidney": 2, "left kidney": 3, "spleen": 1, "kidney": (2, 3)},
    "MSD_Prostate": {"transition zone": 1, "peripheral zone": 2, "prostate": (1, 2)},
    "Prostate": {"prostate": 1},
    "Liver": {"liver": 1},
    "Pancreas": {"pancreas": 1},
    "Liver Tumor": {"liver": (1, 2), "liver tumor": 2},
}

_MASK_KEY = re.compile(r"^mask_?(\d+)_path$")


class LabelMappingError(ValueError):
    """A label mapping name or file is unknown or malformed."""


@dataclass(frozen=True)
class ExportLabels:
    """Organ names in mask order; organ ``organs[i]`` is written with id ``i + 1``."""

    organs: tuple[str, ...]
    source: str

    def __post_init__(self) -> None:
        if not self.organs:
            raise LabelMappingError(f"{self.source}: a label mapping needs at least one organ")
        if len(set(self.organs)) != len(self.organs):
            raise LabelMappingError(f"{self.source}: organ names must be unique, got {list(self.organs)}")

    @property
    def ids(self) -> dict[str, int]:
        return {organ: i + 1 for i, organ in enumerate(self.organs)}

    @property
    def ignore_id(self) -> int:
        """nnU-Net's ignore label must be the highest id."""
        return len(self.organs) + 1

    def nnunet_labels(self, ignore: bool = False) -> dict[str, int]:
        """The ``labels`` field of nnU-Net's dataset.json, with the ignore label if asked for."""
        return {"background": 0, **self.ids, **({"ignore": self.ignore_id} if ignore else {})}


@dataclass(frozen=True)
class EvaluationLabels:
    """Organ name -> the label ids whose union is that organ; ``unions`` are the multi-id organs."""

    ids_by_organ: Mapping[str, tuple[int, ...]]
    source: str

    @property
    def unions(self) -> list[str]:
        return [organ for organ, ids in self.ids_by_organ.items() if len(ids) > 1]


def export_labels(name_or_path: str | Sequence[str]) -> ExportLabels:
    """A ``MASK2LABEL`` key, a JSON file (``{"mask_0_path": name, ...}`` or a list), or a list of names."""
    if not isinstance(name_or_path, str):
        return ExportLabels(tuple(name_or_path), "organ list")
    if name_or_path in MASK2LABEL:
        return ExportLabels(MASK2LABEL[name_or_path], f"MASK2LABEL[{name_or_path!r}]")
    raw = _read_mapping_file(name_or_path, known=MASK2LABEL)
    if isinstance(raw, list) and all(isinstance(v, str) for v in raw):
        return ExportLabels(tuple(raw), name_or_path)
    if isinstance(raw, dict) and all(isinstance(v, str) for v in raw.values()):
        return ExportLabels(_organs_in_mask_order(raw, name_or_path), name_or_path)
    raise LabelMappingError(
        f"{name_or_path}: expected a list of organ names or an object {{\"mask_0_path\": \"liver\", ...}}"
    )


def evaluation_labels(name_or_path: str) -> EvaluationLabels:
    """A ``DATASET2LABEL`` key or a JSON file ``{"liver": 1, "kidney": [2, 3], ...}``."""
    if name_or_path in DATASET2LABEL:
        raw: Mapping[str, object] = DATASET2LABEL[name_or_path]
        source = f"DATASET2LABEL[{name_or_path!r}]"
    else:
        raw = _read_mapping_file(name_or_path, known=DATASET2LABEL)
        source = name_or_path
        if not isinstance(raw, dict):
            raise LabelMappingError(f"{source}: expected an object {{\"organ\": id or [ids], ...}}")
    ids_by_organ: dict[str, tuple[int, ...]] = {}
    for organ, value in raw.items():
        ids = (value,) if isinstance(value, int) else tuple(value) if isinstance(value, (list, tuple)) else ()
        if not ids or not all(isinstance(i, int) and i > 0 for i in ids):
            raise LabelMappingError(f"{source}: organ {organ!r}: expected a positive id or a list of them, got {value!r}")
        ids_by_organ[organ] = ids
    return EvaluationLabels(ids_by_organ, source)


def _organs_in_mask_order(raw: Mapping[str, str], source: str) -> tuple[str, ...]:
    numbered: dict[int, str] = {}
    for key, organ in raw.items():
        match = _MASK_KEY.match(key)
        if not match:
            raise LabelMappingError(f"{source}: key {key!r} is not a mask key like 'mask_0_path' or 'mask0_path'")
        numbered[int(match.group(1))] = organ
    if sorted(numbered) != list(range(len(numbered))):
        raise LabelMappingError(f"{source}: mask keys must be numbered 0..K-1 without gaps, got {sorted(numbered)}")
    return tuple(numbered[i] for i in range(len(numbered)))


def _read_mapping_file(path: str, known: Mapping[str, object]) -> object:
    file = Path(path)
    if not file.is_file():
        raise LabelMappingError(
            f"label mapping {path!r} is neither a built-in name ({', '.join(known)}) nor an existing JSON file"
        )
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise LabelMappingError(f"{path}: not valid JSON: {err}") from err
