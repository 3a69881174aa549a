"""Self-samples (mrgen.training.self_samples): segmented organ regions, the keep rule, the target-modality pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrgen.data.datasets import PairConfig
from mrgen.training.self_samples import SelfSamplePairs, all_organs_reach, segment_organs

PAIR = PairConfig(name="toy", source_indexes=["s.json"], target_indexes=["t.json"], target_modality="T2 SPIR Abdomen MRI",
                  organs=["liver", "spleen"], organ_weights=[0.3, 0.6])


def disc(centre: tuple[int, int], radius: float, size: int = 32) -> np.ndarray:
    rows, cols = np.mgrid[:size, :size]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2


def test_segment_organs_finds_the_drawn_organ_not_the_mask() -> None:
    drawn = disc((16, 16), 6)
    image = np.where(drawn, 220, 40).astype(np.uint8)
    masks = np.stack([disc((16, 18), 6), np.zeros((32, 32), bool)])  # the mask 2 px off; no spleen
    regions, ious = segment_organs(image, masks)
    assert (regions[0] == drawn).mean() > 0.98  # the region is where the image has the organ
    assert 0.4 < ious[0] < 0.9 and ious[1] == 0 and not regions[1].any()


def test_all_organs_reach_ignores_absent_organs_and_needs_one_present() -> None:
    masks = np.zeros((3, 2, 4, 4), bool)
    masks[0, 0, 1, 1] = masks[1, :, 1, 1] = True  # sample 0: liver only; sample 1: both; sample 2: none
    organ_iou = np.array([[0.5, 0.0], [0.5, 0.3], [0.0, 0.0]], np.float32)
    kept = all_organs_reach({"masks": masks, "organ_iou": organ_iou}, 0.4)
    assert kept.tolist() == [True, False, False]


def test_self_sample_pairs_append_annotated_target_pairs_with_the_regions_as_condition() -> None:
    real = [{"image": torch.zeros(1, 32, 32), "condition": torch.zeros(1, 32, 32), "prompt": "T1",
             "is_target": False, "path": "real"}] * 4
    regions = np.stack([disc((10, 10), 4), disc((22, 22), 3)])[None]
    samples = {"images": np.full((1, 32, 32), 255, np.uint8), "regions": regions, "prompts": np.array(["T2 prompt"])}
    pairs = SelfSamplePairs(real, samples, PAIR, share=0.5)
    assert len(pairs) == 6 and pairs[0]["path"] == "real"
    item = pairs[5]
    assert item["prompt"] == "T2 prompt" and torch.all(item["image"] == 1.0)
    expected = PAIR.encoding.encode(list(regions[0]), 32)
    assert torch.equal(item["condition"], torch.from_numpy(expected))
    with pytest.raises(ValueError, match="min_organ_iou"):
        SelfSamplePairs(real, {"images": np.zeros((0, 32, 32), np.uint8)}, PAIR, share=0.5)
