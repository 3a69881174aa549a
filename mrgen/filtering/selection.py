"""The original's selection rule (reference 6.4), every number configurable.

Per mask: rank candidates by mean IoU (descending, ties by try index) and look at the top ``top_k``.
A candidate passes when mean confidence >= ``avg_confidence``, mean IoU >= ``avg_iou`` and every present
organ has IoU >= ``iou`` and confidence >= ``confidence``. If at least ``keep`` pass, keep the first
``keep``; otherwise lower all four thresholds by ``relax`` and keep at most ``keep_relaxed``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence, TypeVar

from mrgen.filtering.base import FilterScores

T = TypeVar("T")


@dataclass(frozen=True)
class Thresholds:
    iou: float = 0.70
    confidence: float = 0.80
    avg_iou: float = 0.80
    avg_confidence: float = 0.90

    def relaxed(self, by: float) -> "Thresholds":
        return Thresholds(self.iou - by, self.confidence - by, self.avg_iou - by, self.avg_confidence - by)

    def passes(self, scores: FilterScores) -> bool:
        organs_ok = all(i >= self.iou for i in scores.organ_iou if i != 0) and \
            all(c >= self.confidence for c in scores.organ_confidence if c != 0)
        return organs_ok and scores.avg_iou >= self.avg_iou and scores.avg_confidence >= self.avg_confidence


@dataclass(frozen=True)
class SelectionRule:
    thresholds: Thresholds = Thresholds()
    top_k: int = 5
    keep: int = 2
    relax: float = 0.10
    keep_relaxed: int = 1

    def with_thresholds(self, **values: float) -> "SelectionRule":
        return replace(self, thresholds=replace(self.thresholds, **values))

    def select(self, candidates: Sequence[tuple[T, FilterScores]]) -> tuple[list[T], str]:
        """Candidates of one mask, in try order -> (kept items, which rule kept them)."""
        ranked = sorted(enumerate(candidates), key=lambda ic: (-ic[1][1].avg_iou, ic[0]))[: self.top_k]
        strict = [item for _, (item, scores) in ranked if self.thresholds.passes(scores)]
        if len(strict) >= self.keep:
            return strict[: self.keep], "strict"
        relaxed_thresholds = self.thresholds.relaxed(self.relax)
        relaxed = [item for _, (item, scores) in ranked if relaxed_thresholds.passes(scores)]
        return relaxed[: self.keep_relaxed], "relaxed" if relaxed else "none"

    def enough_strict(self, candidates: Sequence[FilterScores]) -> bool:
        """For early stopping: would the strict rule already keep ``keep`` of these candidates?"""
        return self.select([(i, s) for i, s in enumerate(candidates)])[1] == "strict"
