"""The quality-filter interface: an image and its per-organ condition masks -> per-organ IoU and confidence.

Absent organs (no condition mask, or an empty one) score IoU 0 and confidence 0, as in the original, and
are left out of the per-image means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class FilterScores:
    organ_iou: list[float]
    organ_confidence: list[float]

    @property
    def avg_iou(self) -> float:
        present = [v for v in self.organ_iou if v != 0]
        return float(np.mean(present)) if present else 0.0

    @property
    def avg_confidence(self) -> float:
        present = [v for v in self.organ_confidence if v != 0]
        return float(np.mean(present)) if present else 0.0


class QualityFilter(Protocol):
    name: str

    def score(self, image: np.ndarray, masks: Sequence[np.ndarray | None]) -> FilterScores:
        """``image``: (H, W) uint8; ``masks``: per-organ (H, W) bool or None."""
        ...


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def present(mask: np.ndarray | None) -> bool:
    return mask is not None and bool(np.any(mask))
