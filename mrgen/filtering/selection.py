"""The original's selection rule (reference 6.4), every number configurable, and a per-organ variant.

Per mask: rank candidates by mean IoU (descending, ties by try index) and look at the top ``top_k``.
A candidate passes when mean confidence >= ``avg_confidence``, mean IoU >= ``avg_iou`` and every present
organ has IoU >= ``iou`` and confidence >= ``confidence``. If at least ``keep`` pass, keep the first
``keep``; otherwise lower all four thresholds by ``relax`` and keep at most ``keep_relaxed``.

The per-organ rule (``per_organ``, ours) lets a candidate pass when at least one organ reaches ``iou`` and
``confidence``; the means are not used. Its organs that miss are not trusted: the nnU-Net export marks them with
the ignore label instead of discarding the slice (``failing_organs``; ``mrgen.nnunet.export``).
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

    def passing_organs(self, scores: FilterScores) -> list[int]:
        """Indices of the organs that reach both per-organ thresholds (an absent organ scores 0 and never does)."""
        return [k for k, (i, c) in enumerate(zip(scores.organ_iou, scores.organ_confidence))
                if i != 0 and i >= self.iou and c >= self.confidence]


@dataclass(frozen=True)
class SelectionRule:
    thresholds: Thresholds = Thresholds()
    top_k: int = 5
    keep: int = 2
    relax: float = 0.10
    keep_relaxed: int = 1
    per_organ: bool = False

    def with_thresholds(self, **values: float) -> "SelectionRule":
        return replace(self, thresholds=replace(self.thresholds, **values))

    def select(self, candidates: Sequence[tuple[T, FilterScores]]) -> tuple[list[T], str]:
        """Candidates of one mask, in try order -> (kept items, which rule kept them)."""
        ranked = sorted(enumerate(candidates), key=lambda ic: (-ic[1][1].avg_iou, ic[0]))[: self.top_k]
        strict = [item for _, (item, scores) in ranked if self._passes(self.thresholds_for("strict"), scores)]
        if len(strict) >= self.keep:
            return strict[: self.keep], "strict"
        relaxed = [item for _, (item, scores) in ranked if self._passes(self.thresholds_for("relaxed"), scores)]
        return relaxed[: self.keep_relaxed], "relaxed" if relaxed else "none"

    def describe(self) -> str:
        t = self.thresholds
        if self.per_organ:
            passing = (f"per organ (a candidate passes when an organ reaches IoU {t.iou:.2f} and confidence "
                       f"{t.confidence:.2f}; its other organs get the ignore label)")
        else:
            passing = (f"strict thresholds organ IoU {t.iou:.2f}, organ confidence {t.confidence:.2f}, mean IoU "
                       f"{t.avg_iou:.2f}, mean confidence {t.avg_confidence:.2f}")
        return (f"top {self.top_k} by mean IoU, {passing}, keep {self.keep}; else relax by {self.relax:.2f} and keep "
                f"{self.keep_relaxed}")

    def thresholds_for(self, how: str) -> Thresholds:
        """The thresholds of the ``strict`` or ``relaxed`` step."""
        return self.thresholds if how == "strict" else self.thresholds.relaxed(self.relax)

    def failing_organs(self, scores: FilterScores, present: list[int], how: str) -> list[int]:
        """The present organs of a candidate kept by the per-organ rule's ``how`` step that missed its thresholds."""
        passing = set(self.thresholds_for(how).passing_organs(scores))
        return [k for k in present if k not in passing]

    def _passes(self, thresholds: Thresholds, scores: FilterScores) -> bool:
        return bool(thresholds.passing_organs(scores)) if self.per_organ else thresholds.passes(scores)

    def enough_strict(self, candidates: Sequence[FilterScores]) -> bool:
        """For early stopping: would the strict rule already keep ``keep`` of these candidates?"""
        return self.select([(i, s) for i, s in enumerate(candidates)])[1] == "strict"
