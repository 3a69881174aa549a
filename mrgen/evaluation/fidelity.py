"""Segmentation fidelity: does a segmenter that knows the target modality find the organs where the masks put them?

A segmenter trained on real target slices with their labels (the benchmark's D_t nnU-Net; the quality filter
never sees it) segments each synthetic slice, and its prediction is compared with the slice's condition mask,
organ by organ (2D Dice over the slices whose mask holds that organ). Read it against two references:

- the ceiling: the same segmenter on real held-out target slices against their own labels;
- the floor: the same predictions of the synthetic slices against the condition mask of another slice (a
  seeded derangement, as for mask-following), which is what an image that ignores its mask still scores
  because abdominal anatomy is stereotyped.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mrgen.evaluation.seg_metrics import dice
from mrgen.filtering.base import present
from mrgen.filtering.mask_following import derangement

OrganMasks = Sequence[np.ndarray | None]  # per organ, a (H, W) bool mask or None where the slice lacks it


def organ_dice(predictions: Sequence[np.ndarray], masks: Sequence[OrganMasks], labels: Sequence[int],
               organ_names: Sequence[str]) -> dict[str, dict[str, float | int]]:
    """Mean 2D Dice per organ (and over every organ instance, ``all``) between label maps and organ masks.

    ``labels[i]`` is the segmenter's label value of ``organ_names[i]``, the organ of ``masks[*][i]``.
    """
    per_organ: dict[str, list[float]] = {name: [] for name in organ_names}
    for prediction, organ_masks in zip(predictions, masks):
        for name, label, mask in zip(organ_names, labels, organ_masks):
            if present(mask):
                per_organ[name].append(dice(mask, prediction == label))
    table = {name: _summary(values) for name, values in per_organ.items() if values}
    table["all"] = _summary([v for values in per_organ.values() for v in values])
    return table


def _summary(values: list[float]) -> dict[str, float | int]:
    return {"dice": float(np.mean(values)) if values else float("nan"), "count": len(values)}


def fidelity_with_floor(predictions: Sequence[np.ndarray], masks: Sequence[OrganMasks], labels: Sequence[int],
                        organ_names: Sequence[str], seed: int = 0) -> dict[str, dict[str, dict[str, float | int]]]:
    """``{"own": ..., "floor": ...}``: Dice against each slice's own condition masks and against another's."""
    own = organ_dice(predictions, masks, labels, organ_names)
    if len(predictions) < 2:
        return {"own": own, "floor": {}}
    shuffled = [masks[j] for j in derangement(len(predictions), np.random.default_rng(seed))]
    return {"own": own, "floor": organ_dice(predictions, shuffled, labels, organ_names)}


def label_masks(label_map: np.ndarray, labels: Sequence[int]) -> list[np.ndarray]:
    """A real slice's label map as one bool mask per organ label (for the ceiling)."""
    return [label_map == value for value in labels]
