import json
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from mrgen.data.datasets import ImageTextDataset, PairConfig, PairDataset, _augment, spread
from mrgen.data.index import IndexValidationError
from mrgen.data.preprocess import CHAOS_WEIGHTS
from mrgen.data.splits import held_out_patients

from conftest import ORGANS


def _pair(root: Path, source: Path, target: Path, **kwargs) -> PairConfig:
    return PairConfig(name="toy", source_indexes=[source.name], target_indexes=[target.name],
                      target_modality="T2 SPIR Abdomen MRI", organs=ORGANS, organ_weights=list(CHAOS_WEIGHTS),
                      data_root=str(root), **kwargs)


def test_pair_dataset_never_reads_target_masks(toy_pair, monkeypatch):
    root, source, target = toy_pair
    opened: list[str] = []
    real_open = PIL.Image.open

    def spy(fp, *args, **kwargs):
        opened.append(str(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", spy)
    dataset = PairDataset(_pair(root, source, target), size=16, prompt_dropout=0.0)
    for i in range(len(dataset)):
        dataset[i]
    target_masks = [p for p in opened if "/tgt/" in p and "_mask" in p]
    source_masks = [p for p in opened if "/src/" in p and "_mask" in p]
    assert target_masks == [] and source_masks


def test_pair_dataset_items(toy_pair):
    root, source, target = toy_pair
    dataset = PairDataset(_pair(root, source, target), size=16, prompt_dropout=0.0)
    assert len(dataset) == 12 and dataset.condition_channels == 1
    src, tgt = dataset[0], dataset[11]
    assert not src["is_target"] and tgt["is_target"]
    assert src["image"].shape == (1, 16, 16) and src["condition"].shape == (1, 16, 16)
    assert torch.all(tgt["condition"] == -1) and not torch.all(src["condition"] == -1)
    assert set(np.round(torch.unique(src["condition"]).double().numpy(), 4).tolist()) == {-1.0, -0.4, 0.2}  # liver, spleen
    assert src["prompt"].startswith("T1 in-phase Abdomen MRI, ") and src["prompt"].endswith("left kidney, spleen")
    assert tgt["prompt"].startswith("T2 SPIR Abdomen MRI, ")
    condition, source_prompt, target_prompt, image = dataset.validation_items(2)[0]
    assert target_prompt.startswith("T2 SPIR") and source_prompt.startswith("T1 in-phase")
    assert "" in dataset.prompts and target_prompt in dataset.prompts


def test_organ_prompts_and_ablation(toy_pair):
    root, source, target = toy_pair
    pair = _pair(root, source, target, prompt_organs="organs", use_target_images=False)
    dataset = PairDataset(pair, size=16, prompt_dropout=0.0)
    assert len(dataset) == 6 and dataset.condition_channels == 1
    item = dataset[0]
    assert item["condition"].shape == (1, 16, 16)
    assert item["prompt"].endswith("Upper Abdominal Region, liver, spleen")


def test_source_in_target_modality_is_refused(toy_pair):
    root, source, _ = toy_pair
    with pytest.raises(ValueError, match="already in the target modality"):
        PairDataset(_pair(root, source, source).__class__(
            name="bad", source_indexes=[source.name], target_indexes=[], target_modality="T1 in-phase Abdomen MRI",
            organs=ORGANS, organ_weights=list(CHAOS_WEIGHTS), data_root=str(root)), size=16)


def test_pair_config_checks_weights():
    with pytest.raises(ValueError, match="organ_weights"):
        PairConfig(name="x", source_indexes=[], target_indexes=[], target_modality="T2 SPIR Abdomen MRI",
                   organs=["liver", "spleen"], organ_weights=[0.3])


def test_prompt_dropout_only_in_training(toy_pair):
    root, source, _ = toy_pair
    torch.manual_seed(0)
    train = ImageTextDataset([source], size=16, split="all", prompt_dropout=1.0)
    assert train[0]["prompt"] == "T1 in-phase Abdomen MRI, fat high signal, muscle intermediate signal, " \
                                 "water low signal, fat bright, Upper Abdominal Region, liver, spleen"  # 'all' is no training split
    dropped = ImageTextDataset([source], size=16, split="train", prompt_dropout=1.0, test_fraction=0.3)
    assert dropped[0]["prompt"] == ""


def test_image_text_split_is_by_patient_and_order_free(toy_pair):
    root, source, target = toy_pair
    train = ImageTextDataset([source, target], size=16, split="train", test_fraction=0.3)
    test = ImageTextDataset([source, target], size=16, split="test", test_fraction=0.3)
    patients = lambda ds: {s.patient_key for s in ds.slices}  # noqa: E731
    assert patients(train).isdisjoint(patients(test)) and len(train) + len(test) == 12
    shuffled = ImageTextDataset([target, source], size=16, split="test", test_fraction=0.3)
    assert patients(shuffled) == patients(test)
    assert held_out_patients(["a", "b", "c"], 0.5, seed=1) == held_out_patients(["c", "b", "a"], 0.5, seed=1)


def test_radiopaedia_json_is_read_as_it_is(tmp_path):
    rows = []
    for patient in ("2564", "77"):
        image = tmp_path / "radiopaedia" / patient / "1" / "MRI_4" / "1.jpeg"
        image.parent.mkdir(parents=True)
        PIL.Image.fromarray(np.full((20, 30), 128, np.uint8)).save(image)
        rows.append({"image_path": f"./radiopaedia/{patient}/1/MRI_4/1.jpeg", "aux_modality": "T2",
                     "image_modality": "MRI", "region": "Upper Abdominal Region", "organs": "liver, spleen",
                     "link": "https://radiopaedia.org/cases/x"})
    index = tmp_path / "radiopaedia_abdomen_mri_image_annotated.json"
    index.write_text(json.dumps(rows))
    ds = ImageTextDataset([index], size=32, split="all", augment=True)
    item = ds[0]
    assert item["image"].shape == (1, 32, 32)
    assert item["prompt"] == ("T2 Abdomen MRI, fat moderate signal, muscle low signal, water high signal, "
                              "fat moderately bright, muscle dark, Upper Abdominal Region, liver, spleen")
    assert {s.patient_key for s in ds.slices} == {str(tmp_path / "radiopaedia" / p) for p in ("2564", "77")}
    rows[1]["aux_modality"] = "T7"
    index.write_text(json.dumps(rows))
    with pytest.raises(IndexValidationError, match="entry 1: .*'T7 Abdomen MRI'"):
        ImageTextDataset([index], size=32, split="all")


def test_augmentation_fills_black():
    torch.manual_seed(3)
    rotated = [_augment(torch.ones(1, 16, 16)) for _ in range(50)]
    corners = torch.stack([r[0, 0, 0] for r in rotated])
    assert corners.min() >= -1.0 and (corners < 0).any()  # rotated corners are black, never mid-grey 0


def test_spread_picks_first_and_last_and_never_more_than_there_are():
    assert spread(list("abcdefghij"), 3) == ["a", "e", "j"]
    assert spread(range(3), 8) == [0, 1, 2]
    assert spread(range(5), 1) == [0] and spread(range(5), 0) == [] and spread([], 4) == []
