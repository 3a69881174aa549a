"""DSC against nnU-Net's own evaluator; HD95 and NSD against an independent brute-force computation."""

from __future__ import annotations

import itertools
import math

import nibabel as nib
import numpy as np
import pytest

from mrgen.evaluation.seg_metrics import diagonal_mm, dice, hd95, nsd, organ_metrics

SPACING = (0.8, 1.3, 3.0)


def _blob(shape, centre, radii):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return (((grid - centre) / radii) ** 2).sum(axis=-1) <= 1.0


def _brute_surface_points(mask: np.ndarray, spacing) -> np.ndarray:
    """Voxel centres (mm) of mask voxels with a face neighbour outside the mask or outside the array."""
    points = []
    for index in zip(*np.nonzero(mask)):
        for axis, step in itertools.product(range(mask.ndim), (-1, 1)):
            neighbour = list(index)
            neighbour[axis] += step
            if not 0 <= neighbour[axis] < mask.shape[axis] or not mask[tuple(neighbour)]:
                points.append(np.array(index) * spacing)
                break
    return np.array(points)


def _brute_directed(a_points: np.ndarray, b_points: np.ndarray) -> np.ndarray:
    return np.sqrt(((a_points[:, None, :] - b_points[None, :, :]) ** 2).sum(-1)).min(axis=1)


@pytest.fixture
def pair():
    shape = (14, 12, 7)
    gt = _blob(shape, np.array([6.0, 5.0, 3.0]), np.array([4.5, 3.5, 2.2]))
    pred = _blob(shape, np.array([7.0, 5.5, 3.4]), np.array([4.0, 4.0, 2.0]))
    pred[0:2, 0:2, 0] = True  # a stray island touching the array border
    return gt, pred


def test_hd95_matches_brute_force(pair):
    gt, pred = pair
    sg, sp = _brute_surface_points(gt, np.array(SPACING)), _brute_surface_points(pred, np.array(SPACING))
    expected = max(np.percentile(_brute_directed(sg, sp), 95), np.percentile(_brute_directed(sp, sg), 95))
    assert hd95(gt, pred, SPACING) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.0, 4.5])  # away from exact voxel distances (float ties)
def test_nsd_matches_brute_force(pair, tolerance):
    gt, pred = pair
    sg, sp = _brute_surface_points(gt, np.array(SPACING)), _brute_surface_points(pred, np.array(SPACING))
    d_gp, d_pg = _brute_directed(sg, sp), _brute_directed(sp, sg)
    expected = ((d_gp <= tolerance).sum() + (d_pg <= tolerance).sum()) / (len(d_gp) + len(d_pg))
    assert nsd(gt, pred, SPACING, tolerance) == pytest.approx(expected, rel=1e-12)


def test_spacing_matters_for_surface_metrics(pair):
    gt, pred = pair
    assert hd95(gt, pred, (1.0, 1.0, 1.0)) != pytest.approx(hd95(gt, pred, SPACING))


def test_identical_masks_are_perfect(pair):
    gt, _ = pair
    m = organ_metrics(gt, gt, SPACING, tolerance_mm=0.0)
    assert (m.dice, m.hd95, m.nsd) == (1.0, 0.0, 1.0)


def test_dice_equals_nnunet_evaluator(tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    rng = np.random.default_rng(3)
    shape = (20, 18, 9)
    gt = np.zeros(shape, np.uint8)
    gt[_blob(shape, np.array([8.0, 8.0, 4.0]), np.array([6.0, 5.0, 3.0]))] = 1
    gt[_blob(shape, np.array([15.0, 12.0, 5.0]), np.array([3.0, 3.0, 2.0]))] = 2
    pred = gt.copy()
    flips = rng.random(shape) < 0.15
    pred[flips] = rng.integers(0, 4, size=int(flips.sum()))  # label 3 exists only in the prediction
    affine = np.diag([*SPACING, 1.0])
    for name, data in (("gt", gt), ("pred", pred)):
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"{name}.nii.gz")
    theirs = compute_metrics(str(tmp_path / "gt.nii.gz"), str(tmp_path / "pred.nii.gz"), SimpleITKIO(), [1, 2, 3, (1, 2)])
    for label in (1, 2, 3, (1, 2)):
        ids = (label,) if isinstance(label, int) else label
        ours = dice(np.isin(gt, ids), np.isin(pred, ids))
        assert ours == pytest.approx(theirs["metrics"][label]["Dice"], rel=1e-12)


def test_empty_mask_conventions():
    empty = np.zeros((5, 5, 3), bool)
    some = empty.copy()
    some[2, 2, 1] = True
    assert math.isnan(dice(empty, empty))
    assert dice(empty, empty, "original") == 1.0
    assert dice(empty, some) == 0.0 and dice(some, empty, "original") == 0.0
    assert math.isnan(hd95(empty, empty, SPACING))
    assert hd95(empty, some, SPACING) == pytest.approx(diagonal_mm((5, 5, 3), SPACING))
    assert nsd(some, empty, SPACING, 2.0) == 0.0
    assert math.isnan(nsd(empty, empty, SPACING, 2.0)) and nsd(empty, empty, SPACING, 2.0, "original") == 1.0


def test_bad_inputs_are_errors():
    with pytest.raises(ValueError, match="shape"):
        organ_metrics(np.zeros((3, 3, 3), bool), np.zeros((3, 3, 2), bool), SPACING, 1.0)
    with pytest.raises(ValueError, match="empty policy"):
        organ_metrics(np.zeros((3, 3, 3), bool), np.zeros((3, 3, 3), bool), SPACING, 1.0, "zero")
