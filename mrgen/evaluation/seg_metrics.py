"""Overlap and surface metrics of binary 3D masks, in millimetres with the real voxel spacing.

- **DSC** = 2|G & P| / (|G| + |P|) over the whole volume.
- **Surface**: the mask voxels with at least one face neighbour (6-connectivity) outside the mask; the
  outside of the array counts as background. Distances run between surface voxel centres, scaled by the
  spacing (``scipy.ndimage.distance_transform_edt`` with ``sampling``).
- **HD95** = max(95th percentile of distances G-surface -> P-surface, same P -> G), as MONAI's
  ``compute_hausdorff_distance(percentile=95)``; unweighted voxel counts.
- **NSD** at tolerance tau (mm) = (#G-surface voxels within tau of P's surface + #P-surface voxels within tau
  of G's) / (#G-surface + #P-surface) (Nikolov et al.), counted per voxel as MONAI's
  ``compute_surface_dice`` does, not per surface-element area as DeepMind's ``surface-distance``.

Empty masks (``EmptyPolicy``):

- GT empty and prediction not, or the reverse: DSC 0, NSD 0, HD95 = the volume's diagonal in mm (the
  largest distance possible in the field of view, so a missed or hallucinated organ is penalised and means
  stay finite).
- Both empty: ``"exclude"`` (default) gives NaN for every metric, so the case drops out of that organ's mean
  (DSC is undefined there; nnU-Net's evaluator does the same); ``"original"`` gives DSC 1 and NSD 1 as the
  original's ``evaluate_nib.py`` did (HD95 stays NaN: no distance exists).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np
from scipy import ndimage

EmptyPolicy = Literal["exclude", "original"]
EMPTY_POLICIES = ("exclude", "original")
FACE_CONNECTIVITY = 1


@dataclass(frozen=True)
class OrganMetrics:
    dice: float
    hd95: float
    nsd: float
    gt_voxels: int
    pred_voxels: int


def dice(gt: np.ndarray, pred: np.ndarray, empty_policy: EmptyPolicy = "exclude") -> float:
    gt, pred = gt.astype(bool), pred.astype(bool)
    total = int(gt.sum()) + int(pred.sum())
    if total == 0:
        return 1.0 if empty_policy == "original" else math.nan
    return 2.0 * int(np.logical_and(gt, pred).sum()) / total


def surface(mask: np.ndarray) -> np.ndarray:
    """Boolean map of the mask's surface voxels (see the module docstring)."""
    structure = ndimage.generate_binary_structure(mask.ndim, FACE_CONNECTIVITY)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to ``b``'s surface, and from ``b``'s to ``a``'s.

    Both masks must be non-empty. The work is done in their joint bounding box (plus one voxel), which
    holds every surface voxel, so the distances equal those over the full array.
    """
    box = _joint_box(a, b)
    a, b = a[box], b[box]
    surface_a, surface_b = surface(a), surface(b)
    to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
    to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
    return to_b[surface_a], to_a[surface_b]


def _joint_box(a: np.ndarray, b: np.ndarray) -> tuple[slice, ...]:
    coords = np.argwhere(a | b)
    lo = np.maximum(coords.min(axis=0) - 1, 0)
    hi = np.minimum(coords.max(axis=0) + 2, a.shape)
    return tuple(slice(int(l), int(h)) for l, h in zip(lo, hi))


def hd95(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float]) -> float:
    gt, pred = gt.astype(bool), pred.astype(bool)
    if not gt.any() and not pred.any():
        return math.nan
    if not gt.any() or not pred.any():
        return diagonal_mm(gt.shape, spacing)
    d_gt, d_pred = surface_distances(gt, pred, spacing)
    return float(max(np.percentile(d_gt, 95), np.percentile(d_pred, 95)))


def nsd(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerance_mm: float,
        empty_policy: EmptyPolicy = "exclude") -> float:
    gt, pred = gt.astype(bool), pred.astype(bool)
    if not gt.any() and not pred.any():
        return 1.0 if empty_policy == "original" else math.nan
    if not gt.any() or not pred.any():
        return 0.0
    d_gt, d_pred = surface_distances(gt, pred, spacing)
    return float((np.sum(d_gt <= tolerance_mm) + np.sum(d_pred <= tolerance_mm)) / (d_gt.size + d_pred.size))


def diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing))))


def organ_metrics(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerance_mm: float,
                  empty_policy: EmptyPolicy = "exclude") -> OrganMetrics:
    if empty_policy not in EMPTY_POLICIES:
        raise ValueError(f"empty policy must be one of {EMPTY_POLICIES}, got {empty_policy!r}")
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    return OrganMetrics(
        dice=dice(gt, pred, empty_policy),
        hd95=hd95(gt, pred, spacing),
        nsd=nsd(gt, pred, spacing, tolerance_mm, empty_policy),
        gt_voxels=int(np.count_nonzero(gt)),
        pred_voxels=int(np.count_nonzero(pred)),
    )
