"""The synthesis manifest: one JSON line per candidate, appended (and fsynced) as each one finishes.

Each process (rank or cluster part) appends to its own file, so no two writers share a file. A line is
written only after the candidate's image files are complete on disk, so a record always points at whole
files. A run killed in the middle of an append leaves at most one partial last line, which ``read`` drops
(and ``repair`` truncates) so that the candidate is simply generated again.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from mrgen.io.images import read_gray

log = logging.getLogger(__name__)


def repair(path: Path) -> None:
    """Truncate a partial last line left by a killed writer."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping a partial last record (%d bytes) left by an interrupted run", path, len(data) - keep)
        with open(path, "r+b") as f:
            f.truncate(keep)
            f.flush()
            os.fsync(f.fileno())


def read(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                continue  # a partial last line: the candidate will be regenerated
            raise ValueError(f"{path}: line {number} is not valid JSON; the manifest is damaged") from None
    return records


class ManifestWriter:
    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        repair(path)

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=True, sort_keys=True) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def read_all(paths: Iterable[Path]) -> list[dict[str, Any]]:
    return [r for p in sorted(paths) for r in read(p)]


def condition_masks(record: dict[str, Any]) -> list[np.ndarray]:
    """The per-organ boolean masks a candidate was generated from (its ``mask_paths``, in the pair's organ order)."""
    return [read_gray(path) > 127 for path in record["mask_paths"]]
