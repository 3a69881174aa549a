"""The benchmark's measuring tools: the CPU-lean nnU-Net plans, seeds and their spread, segmentation fidelity
(ceiling and floor) and the classifier two-sample test (real vs real, source vs target)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mrgen.data.phantom import generate_phantom_dataset
from mrgen.evaluation.fidelity import fidelity_with_floor, label_masks
from mrgen.evaluation.two_sample import classifier_two_sample_test, roc_auc
from mrgen.nnunet.plans import LEAN_PLANS, PlansError, lean_plans, write_lean_plans
from mrgen.pipeline.segmentation import aggregate_seeds, organ_table
from mrgen.pipeline.synthetic_measures import real_slices

ORGANS = ["liver", "right kidney", "left kidney", "spleen"]


def _stock_plans() -> dict:
    def configuration(dims: int, stages: int) -> dict:
        return {"patch_size": [64] * dims, "data_identifier": f"nnUNetPlans_{dims}d", "architecture": {"arch_kwargs": {
            "n_stages": stages, "features_per_stage": [min(32 * 2 ** i, 512) for i in range(stages)],
            "kernel_sizes": [[3] * dims] * stages, "strides": [[1] * dims] + [[2] * dims] * (stages - 1),
            "n_conv_per_stage": [2] * stages, "n_conv_per_stage_decoder": [2] * (stages - 1)}}}

    return {"plans_name": "nnUNetPlans", "configurations": {"2d": configuration(2, 5), "3d_fullres": configuration(3, 5),
                                                            "3d_lowres": {"inherits_from": "3d_fullres"}}}


def test_lean_plans_shrink_the_2d_network_and_keep_everything_else():
    stock = _stock_plans()
    lean = lean_plans(stock)
    arch = lean["configurations"]["2d"]["architecture"]["arch_kwargs"]
    assert lean["plans_name"] == LEAN_PLANS and stock["plans_name"] == "nnUNetPlans"  # the stock dict is untouched
    assert arch["n_stages"] == 4 and arch["features_per_stage"] == [32, 64, 128, 256]
    assert len(arch["strides"]) == len(arch["kernel_sizes"]) == len(arch["n_conv_per_stage"]) == 4
    assert len(arch["n_conv_per_stage_decoder"]) == 3
    assert lean["configurations"]["2d"]["data_identifier"] == "nnUNetPlans_2d"  # the preprocessed data are shared
    assert lean["configurations"]["3d_fullres"] == stock["configurations"]["3d_fullres"]
    assert lean["configurations"]["3d_lowres"] == {"inherits_from": "3d_fullres"}


def test_lean_plans_are_written_beside_the_stock_plans_or_refused_clearly(tmp_path):
    with pytest.raises(PlansError, match="nnUNetv2_plan_and_preprocess"):
        write_lean_plans(tmp_path)
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(_stock_plans()))
    assert json.loads(write_lean_plans(tmp_path).read_text())["plans_name"] == LEAN_PLANS


def _summary(dice: float) -> dict:
    organs = {o: {"dice": dice + 0.01 * i, "hd95": 3.0} for i, o in enumerate(ORGANS)}
    return {"mean_over": ORGANS, "mean": {"dice": dice, "hd95": 3.0}, "organs": organs,
            "cases": [{"case_id": "x", "organs": {o: {"dice": dice, "hd95": 3.0} for o in ORGANS}}]}


def test_two_seeds_give_two_rows_a_mean_and_a_spread():
    merged = aggregate_seeds([_summary(0.60), _summary(0.70)], seeds=[0, 1])
    assert [row["seed"] for row in merged["seeds"]] == [0, 1]
    assert merged["mean"]["dice"] == pytest.approx(0.65)
    assert merged["spread"]["mean"]["dice"] == pytest.approx({"mean": 0.65, "std": 0.05, "min": 0.60, "max": 0.70})
    assert merged["organs"]["spleen"]["dice"] == pytest.approx(0.68)
    assert merged["cases"][0]["organs"]["liver"]["dice"] == pytest.approx(0.65)
    row = organ_table({"D_t": merged}).splitlines()[-1]
    assert row.endswith("| 65.0 (60.0-70.0) |") and "68.0 (63.0-73.0)" in row


@pytest.fixture(scope="module")
def two_contrasts(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_contrasts")
    generate_phantom_dataset(root, cases=12, seed=3, size=48, slices=12, modalities=["T1-InPhase", "T2-SPIR"])
    return root


def test_fidelity_of_a_perfect_segmenter_is_the_ceiling_with_own_masks_and_low_with_shuffled_ones(two_contrasts):
    from mrgen.io.images import read_gray
    from mrgen.data.index import load_index

    entries = load_index(two_contrasts / "Phantom_T2-SPIR_train.json")[:60]
    masks = [[read_gray(e.mask_paths[i]) > 0 if e.mask_paths[i] else None for i in range(len(ORGANS))] for e in entries]
    label_maps = [np.select([m if m is not None else np.zeros((48, 48), bool) for m in organ], [1, 2, 3, 4], 0)
                  for organ in masks]
    scores = fidelity_with_floor(label_maps, masks, [1, 2, 3, 4], ORGANS, seed=0)
    assert scores["own"]["all"]["dice"] == pytest.approx(1.0)
    assert scores["floor"]["all"]["dice"] < 0.6
    assert [m.sum() for m in label_masks(label_maps[0], [1, 2])] == [np.sum(label_maps[0] == 1), np.sum(label_maps[0] == 2)]


def test_two_sample_auc_is_near_half_for_real_vs_real_and_high_for_source_vs_target(two_contrasts):
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    target, groups = real_slices(two_contrasts / "Phantom_T2-SPIR_train.json")
    source, source_groups = real_slices(two_contrasts / "Phantom_T1-InPhase_train.json")
    half = np.isin(groups, sorted(set(groups))[::2])
    same = classifier_two_sample_test(target[half], target[~half], np.array(groups)[half], np.array(groups)[~half])
    different = classifier_two_sample_test(source, target, source_groups, groups)
    assert same.auc is not None and abs(same.auc - 0.5) < 0.2, same
    assert different.auc is not None and different.auc > 0.9, different
    assert classifier_two_sample_test(target[:5], target[5:10]).auc is None  # too few slices to say anything
