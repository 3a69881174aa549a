"""Mask-following: do generated organs sit where their condition masks say?

Each image is segmented with the offline segmenter prompted by its own masks, and again prompted by the
masks of a different sample (a seeded derangement). The second score is the floor: what an image that
ignores its mask still scores, because anatomy is stereotyped. A ControlNet follows masks only when
the score is clearly above that floor; the fraction of organs with IoU above 0.7 separates the two
much better than the mean IoU (calibration: 0.98 on real images with their own masks, 0.04-0.14 with
shuffled ones).

IoU says where an organ is, not how it looks: a dark organ with a bright rim segments as well as a bright
one. So each organ is also checked for being brighter than a ring around it (1-3 pixels outside its mask),
and the fraction of such organs is reported beside the IoU; compare it with real target slices'
(``scripts/measure_mask_following.py --real``): a sample with the source modality's contrast shows the
source's polarity (docs/mask_following.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import ndimage

from mrgen.filtering.base import present
from mrgen.filtering.offline import OfflineFilter

GOOD_IOU = 0.7
RING_PIXELS = (1, 3)  # an organ's surroundings: this many pixels outside its mask, inner to outer


@dataclass(frozen=True)
class OrganAgreement:
    mean_iou: float
    fraction_above: float
    count: int
    fraction_brighter: float  # organs brighter than their surroundings (contrast polarity)


@dataclass(frozen=True)
class MaskFollowing:
    """Scores against the condition masks (``own``) and against shuffled masks (``floor``)."""

    own: dict[str, OrganAgreement]
    floor: dict[str, OrganAgreement]
    organ_names: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, dict[str, dict[str, float]]]:
        return {kind: {organ: vars(a) for organ, a in table.items()} for kind, table in (("own", self.own), ("floor", self.floor))}

    def table(self) -> str:
        """A markdown table: organ | IoU (own) | IoU (floor) | > 0.7 (own) | > 0.7 (floor) | n | brighter (own)."""
        lines = ["| organ | IoU vs own mask | IoU vs shuffled mask (floor) | fraction > 0.7 | floor fraction > 0.7 | organs "
                 "| brighter than surroundings |",
                 "|---|---|---|---|---|---|---|"]
        for organ in [*self.organ_names, "all"]:
            if organ in self.own:
                o, f = self.own[organ], self.floor[organ]
                lines.append(f"| {organ} | {o.mean_iou:.3f} | {f.mean_iou:.3f} | {o.fraction_above:.2f} | {f.fraction_above:.2f} | {o.count} "
                             f"| {o.fraction_brighter:.2f} |")
        return "\n".join(lines)


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of range(n) that moves every element (the shuffled-mask floor's pairing)."""
    if n < 2:
        raise ValueError("the shuffled-mask floor needs at least two images")
    while True:
        order = rng.permutation(n)
        if np.all(order != np.arange(n)):
            return order


def brighter_than_surroundings(image: np.ndarray, mask: np.ndarray) -> bool:
    """Is the mean intensity inside ``mask`` above that of the ring ``RING_PIXELS`` outside it?"""
    inner, outer = (ndimage.binary_dilation(mask, iterations=n) for n in RING_PIXELS)
    ring = outer & ~inner
    return bool(ring.any()) and float(image[mask].mean()) > float(image[ring].mean())


def _agreement(scores: list[tuple[float, bool]]) -> OrganAgreement:
    if not scores:
        return OrganAgreement(0.0, 0.0, 0, 0.0)
    ious = np.array([iou for iou, _ in scores], dtype=np.float64)
    brighter = np.array([b for _, b in scores], dtype=np.float64)
    return OrganAgreement(float(ious.mean()), float((ious > GOOD_IOU).mean()), int(ious.size), float(brighter.mean()))


def _score_all(images: Sequence[np.ndarray], masks: Sequence[Sequence[np.ndarray | None]], organ_names: list[str],
               scorer: OfflineFilter) -> dict[str, OrganAgreement]:
    per_organ: dict[str, list[tuple[float, bool]]] = {name: [] for name in organ_names}
    for image, organ_masks in zip(images, masks):
        scores = scorer.score(image, organ_masks)
        for name, mask, value in zip(organ_names, organ_masks, scores.organ_iou):
            if present(mask):
                per_organ[name].append((value, brighter_than_surroundings(image, np.asarray(mask, dtype=bool))))
    table = {name: _agreement(values) for name, values in per_organ.items() if values}
    table["all"] = _agreement([v for values in per_organ.values() for v in values])
    return table


def mask_following(images: Sequence[np.ndarray], masks: Sequence[Sequence[np.ndarray | None]],
                   organ_names: Sequence[str], seed: int = 0) -> MaskFollowing:
    """``images``: (H, W) uint8; ``masks``: per image, per organ (H, W) bool (or None when absent)."""
    scorer = OfflineFilter()
    names = list(organ_names)
    shuffled = [masks[j] for j in derangement(len(images), np.random.default_rng(seed))]
    return MaskFollowing(_score_all(images, masks, names, scorer), _score_all(images, shuffled, names, scorer), names)
