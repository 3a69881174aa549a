import json
from pathlib import Path

import numpy as np
import pytest

from mrgen.data.index import IndexValidationError, load_index, save_index
from mrgen.io.images import write_gray

from conftest import make_toy_index


def _rewrite(path: Path, mutate) -> Path:
    entries = json.loads(path.read_text())
    mutate(entries)
    path.write_text(json.dumps(entries))
    return path


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(IndexValidationError) as info:
        load_index(path, **kwargs)
    return str(info.value)


def test_good_index_loads_with_resolved_paths(tmp_path):
    path = make_toy_index(tmp_path, "a", "T2 SPIR Abdomen MRI")
    entries = load_index(path)
    assert len(entries) == 6
    assert all(e.image_path.is_absolute() and e.image_path.is_file() for e in entries)
    assert entries[0].mask_path_for("spleen").name.endswith("_mask3.png")
    assert entries[0].patient_key == "a-p0"


def test_save_load_round_trip_keeps_relative_paths(tmp_path):
    path = make_toy_index(tmp_path, "a", "T2 SPIR Abdomen MRI")
    entries = load_index(path)
    copy = tmp_path / "copy.json"
    save_index(entries, copy)
    assert json.loads(copy.read_text())[0]["image_path"] == "a/p0/s0.png"
    assert load_index(copy) == entries


def test_missing_field(tmp_path):
    path = _rewrite(make_toy_index(tmp_path, "a", "T2 SPIR Abdomen MRI"), lambda e: e[1].pop("region"))
    msg = _error(path)
    assert str(path) in msg and "entry 1: field 'region': missing" in msg


def test_missing_file(tmp_path):
    path = make_toy_index(tmp_path, "a", "T2 SPIR Abdomen MRI")
    (tmp_path / "a/p1/s0_mask3.png").unlink()
    assert "entry 2: field 'mask3_path': file" in _error(path) and "does not exist" in _error(path)


def test_unreadable_file(tmp_path):
    path = make_toy_index(tmp_path, "a", "T2 SPIR Abdomen MRI")
    (tmp_path / "a/p0/s1.png").write_bytes(b"not a png")
    assert "entry 1: field 'image_path'" in _error(path) and "not a readable image" in _error(path)


def test_mask_shape_differs_from_image(tmp_path):
    path = make_toy_index(tmp_path, "a", "T2 SPIR Abdomen MRI")
    write_gray(tmp_path / "a/p2/s1_mask0.png", np.zeros((10, 10), np.uint8))
    msg = _error(path)
    assert "entry 5: field 'mask0_path': mask is 10x10 but the image is 24x20" in msg


def test_non_binary_mask_is_refused(tmp_path):
    path = make_toy_index(tmp_path, "a", "T2 SPIR Abdomen MRI")
    noise = np.random.default_rng(0).integers(0, 256, (24, 20), dtype=np.uint8)  # an image saved as a mask
    write_gray(tmp_path / "a/p1/s0_mask0.png", noise)
    msg = _error(path)
    assert "entry 2: field 'mask0_path'" in msg and "is not binary (grey levels 0, 1, 2" in msg
    write_gray(tmp_path / "a/p1/s0_mask0.png", np.where(noise > 128, 255, 0).astype(np.uint8))
    assert len(load_index(path)) == 6  # 0/255 is a mask


def test_organ_not_in_label(tmp_path):
    path = _rewrite(make_toy_index(tmp_path, "a", "T2 SPIR Abdomen MRI"), lambda e: e[0]["organs"].append("pancreas"))
    assert "entry 0: field 'organs': organ 'pancreas' is not in label" in _error(path)


def test_unknown_modality_key(tmp_path):
    def mutate(entries):
        entries[3]["modality"] = "T2 SPIR Abdomen"
    path = _rewrite(make_toy_index(tmp_path, "a", "T2 SPIR Abdomen MRI"), mutate)
    assert "entry 3: field 'modality': unknown modality key 'T2 SPIR Abdomen'" in _error(path)


def test_path_outside_root_is_refused_unless_allowed(tmp_path):
    outside = tmp_path / "elsewhere"
    make_toy_index(outside, "b", "T2 SPIR Abdomen MRI")
    root = tmp_path / "root"
    path = make_toy_index(root, "a", "T2 SPIR Abdomen MRI")

    def mutate(entries):
        entries[0]["image_path"] = "../elsewhere/b/p0/s0.png"
    _rewrite(path, mutate)
    assert "outside the dataset root" in _error(path)
    assert load_index(path, allow_outside_root=True)[0].image_path == (outside / "b/p0/s0.png").resolve()


def test_every_problem_is_reported_at_once(tmp_path):
    def mutate(entries):
        entries[0].pop("shape")
        entries[4]["modality"] = "nope"
    path = _rewrite(make_toy_index(tmp_path, "a", "T2 SPIR Abdomen MRI"), mutate)
    with pytest.raises(IndexValidationError) as info:
        load_index(path)
    assert len(info.value.problems) == 2


def test_unannotated_loading_never_opens_masks(tmp_path, monkeypatch):
    path = make_toy_index(tmp_path, "a", "T2 SPIR Abdomen MRI")
    for mask in tmp_path.glob("a/*/*_mask*.png"):
        mask.unlink()  # would be an error if any mask were looked at
    entries = load_index(path, annotations=False)
    assert all(e.mask_paths == [] and e.organs == [] for e in entries)
    assert entries[0].label == ["liver", "right kidney", "left kidney", "spleen"]
