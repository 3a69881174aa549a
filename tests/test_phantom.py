"""The simulated abdominal MRI dataset: layout, indexes, geometry, determinism and MR physics."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mrgen.data import phantom as P
from mrgen.data.index import load_index
from mrgen.data.modalities import load_registry
from mrgen.io.images import read_gray

MODS = ("T1-InPhase", "T2-SPIR")
ARGS = dict(cases=3, seed=7, size=48, modalities=MODS, slices=8)


def file_hashes(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return P.generate_phantom_dataset(tmp_path_factory.mktemp("phantom") / "out", **ARGS)


@pytest.fixture(scope="module")
def anatomy() -> P.Anatomy:
    """One 64 px anatomy with a visibly fatty liver, for rendering in several modalities."""
    anatomy = P.sample_anatomy(np.random.default_rng(11), size=64, slices=16)
    anatomy.tissues[P.Tissue.LIVER] = replace(anatomy.tissues[P.Tissue.LIVER], fat_fraction=0.12)
    return anatomy


def test_layout(dataset: Path) -> None:
    for name in ("README.md", "phantom.json", "preview.png", "image_text_train.json", "image_text_test.json"):
        assert (dataset / name).is_file(), name
    for mod in MODS:
        for split in ("train", "test", "all"):
            assert (dataset / f"Phantom_{mod}_{split}.json").is_file()
        for split in ("train", "test"):
            assert (dataset / f"volumes_{mod}_{split}.jsonl").is_file()
        for i in range(ARGS["cases"]):
            cid = f"{mod}_{i:03d}"
            assert (dataset / "volumes" / mod / f"{cid}_image.nii.gz").is_file()
            assert (dataset / "volumes" / mod / f"{cid}_label.nii.gz").is_file()
            for k in range(ARGS["slices"]):
                stem = dataset / "slices" / mod / cid / f"{cid}_s{k:03d}"
                assert Path(f"{stem}.png").is_file()
                for m in range(4):
                    assert Path(f"{stem}_mask{m}.png").is_file()
    summary = json.loads((dataset / "phantom.json").read_text())
    assert summary["seed"] == ARGS["seed"] and summary["size"] == ARGS["size"] and summary["slices"] == ARGS["slices"]
    assert summary["label_names"] == {"1": "liver", "2": "right kidney", "3": "left kidney", "4": "spleen"}
    assert [c["case_id"] for c in summary["cases"]["T2-SPIR"]] == ["T2-SPIR_000", "T2-SPIR_001", "T2-SPIR_002"]


def test_same_seed_same_bytes_other_seed_other_bytes(dataset: Path, tmp_path: Path) -> None:
    again = P.generate_phantom_dataset(tmp_path / "again", **ARGS)
    assert file_hashes(again) == file_hashes(dataset)
    other = P.generate_phantom_dataset(tmp_path / "other", **{**ARGS, "seed": 8, "modalities": ("T2-SPIR",)})
    name = "volumes/T2-SPIR/T2-SPIR_000_image.nii.gz"
    assert file_hashes(other)[name] != file_hashes(dataset)[name]


def test_conditional_indexes_validate_and_match_masks(dataset: Path) -> None:
    registry = load_registry()
    for mod in MODS:
        entries = load_index(dataset / f"Phantom_{mod}_all.json")
        assert len(entries) == ARGS["cases"] * ARGS["slices"]
        for e in entries:
            assert e.modality == P.MODALITY_KEYS[mod]
            assert e.modality_attributes == registry.attributes(e.modality)
            assert e.label == ["liver", "right kidney", "left kidney", "spleen"]
            assert e.region == "Upper Abdominal Region" and e.dataset == "Phantom_MRI"
            assert e.shape == (ARGS["size"], ARGS["size"])
            non_empty = [e.label[i] for i, m in enumerate(e.mask_paths) if read_gray(m).max() > 0]
            assert e.organs == non_empty
            assert all(set(np.unique(read_gray(m))) <= {0, 255} for m in e.mask_paths)
        assert any(len(e.organs) == 4 for e in entries), "some slice should show all four organs"


def test_slices_and_masks_match_the_volumes(dataset: Path) -> None:
    for e in load_index(dataset / "Phantom_T2-SPIR_all.json")[: 2 * ARGS["slices"]]:
        labels = np.asarray(nib.load(e.mask_nii_path).dataobj)
        image = np.asarray(nib.load(e.volume_nii_path).dataobj)
        k = e.slice_index
        np.testing.assert_array_equal(read_gray(e.image_path), P.display_uint8(image)[:, :, k].T)
        for i, mask in enumerate(e.mask_paths):
            np.testing.assert_array_equal(read_gray(mask) > 0, labels[:, :, k].T == i + 1)
        present = [name for i, name in enumerate(P.ORGANS) if (labels[:, :, k] == i + 1).any()]
        assert e.organs == present


def test_nifti_geometry(dataset: Path) -> None:
    summary = json.loads((dataset / "phantom.json").read_text())
    for case in summary["cases"]["T1-InPhase"]:
        image = nib.load(dataset / "volumes" / "T1-InPhase" / f"{case['case_id']}_image.nii.gz")
        label = nib.load(dataset / "volumes" / "T1-InPhase" / f"{case['case_id']}_label.nii.gz")
        assert image.shape == label.shape == (ARGS["size"], ARGS["size"], ARGS["slices"])
        assert image.get_data_dtype() == np.float32 and label.get_data_dtype() == np.uint8
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        np.testing.assert_allclose(image.affine, label.affine)
        row_mm, col_mm, slice_mm = case["spacing"]
        np.testing.assert_allclose(image.header.get_zooms(), (col_mm, row_mm, slice_mm), rtol=1e-6)
        assert 360 <= ARGS["size"] * col_mm <= 400 and 175 / ARGS["slices"] <= slice_mm <= 195 / ARGS["slices"]
        # the volume centre sits at the world origin
        centre = image.affine @ np.array([(ARGS["size"] - 1) / 2, (ARGS["size"] - 1) / 2, (ARGS["slices"] - 1) / 2, 1])
        np.testing.assert_allclose(centre[:3], 0, atol=1e-3)  # float32 header


def test_split_by_case(dataset: Path) -> None:
    for mod in MODS:
        train = {e.patient_id for e in load_index(dataset / f"Phantom_{mod}_train.json")}
        test = {e.patient_id for e in load_index(dataset / f"Phantom_{mod}_test.json")}
        assert train and test and not train & test
        assert train | test == {f"{mod}_{i:03d}" for i in range(ARGS["cases"])}
        for split, ids in (("train", train), ("test", test)):
            lines = (dataset / f"volumes_{mod}_{split}.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines]
            assert {r["patient_id"] for r in records} == ids
            for r in records:
                assert r["modality"] == P.MODALITY_KEYS[mod] and r["dataset"] == "Phantom_MRI"
                assert r["label"] == list(P.ORGANS)
                assert (dataset / r["image"]).is_file() and (dataset / r["mask"]).is_file()
    assert P.split_cases(0, "T1", 1, 0.25) == ["train"]
    assert P.split_cases(0, "T1", 2, 0.25).count("test") == 1


def test_image_text_index(dataset: Path) -> None:
    registry = load_registry()
    train = json.loads((dataset / "image_text_train.json").read_text())
    test = json.loads((dataset / "image_text_test.json").read_text())
    assert len(train) + len(test) == len(MODS) * ARGS["cases"] * ARGS["slices"]
    assert not {e["patient_id"] for e in train} & {e["patient_id"] for e in test}
    for e in train + test:
        assert e["image_modality"] == "MRI"
        assert f"{e['aux_modality']} Abdomen {e['image_modality']}" in registry
        assert isinstance(e["organs"], str) and e["region"] == "Upper Abdominal Region"
        assert set(filter(None, (o.strip() for o in e["organs"].split(",")))) <= set(P.ORGANS)
        assert (dataset / e["image_path"]).is_file()


def test_anatomy_is_plausible() -> None:
    for seed in range(3):
        anatomy = P.sample_anatomy(np.random.default_rng(seed), size=64, slices=24)
        g = anatomy.geometry
        voxel_ml = g.pixel_mm ** 2 * g.slice_mm / 1000
        where = {lab: np.argwhere(anatomy.labels == lab) for lab in range(1, 5)}
        volume = {lab: len(w) * voxel_ml for lab, w in where.items()}
        assert 700 < volume[1] < 2500 and 50 < volume[4] < 450
        assert all(50 < volume[lab] < 300 for lab in (2, 3))
        col, row, z = ({lab: w[:, axis].mean() for lab, w in where.items()} for axis in range(3))
        assert col[1] < 32 and col[2] < 32 < col[3] and col[4] > 32  # image left = patient right
        assert row[2] > 32 and row[3] > 32 and row[4] > 32            # kidneys and spleen posterior
        assert z[1] > z[2] and z[4] > z[3]                              # liver above kidneys, spleen above left kidney


def pure_voxels(anatomy: P.Anatomy, tissue: P.Tissue) -> np.ndarray:
    """(z, row, col) native voxels made entirely of one tissue (all 8 sub-voxels)."""
    d, h, w = (n // 2 for n in anatomy.tissue.shape)
    blocks = (anatomy.tissue == tissue).reshape(d, 2, h, 2, w, 2)
    return blocks.all(axis=(1, 3, 5))


def rendered(anatomy: P.Anatomy, modality: str) -> np.ndarray:
    """Noise-free magnitude (z, row, col); the same acquisition seed for every modality."""
    return P.render_case(anatomy, modality, np.random.default_rng(0), noise=False).transpose(2, 1, 0)


def mean_of(image: np.ndarray, anatomy: P.Anatomy, tissue: P.Tissue) -> float:
    mask = pure_voxels(anatomy, tissue)
    assert mask.sum() > 5, tissue
    return float(image[mask].mean())


def test_fat_is_suppressed_on_t2_spir(anatomy: P.Anatomy) -> None:
    t1 = rendered(anatomy, "T1-InPhase")
    t2 = rendered(anatomy, "T2-SPIR")
    fat_t1 = mean_of(t1, anatomy, P.Tissue.FAT)
    fat_t2 = mean_of(t2, anatomy, P.Tissue.FAT)
    assert fat_t2 / mean_of(t2, anatomy, P.Tissue.MUSCLE) < 0.5 * fat_t1 / mean_of(t1, anatomy, P.Tissue.MUSCLE)
    assert fat_t2 / np.percentile(t2, 99.5) < 0.3 < fat_t1 / np.percentile(t1, 99.5)


def test_organ_contrast(anatomy: P.Anatomy) -> None:
    t2 = rendered(anatomy, "T2-SPIR")
    assert mean_of(t2, anatomy, P.Tissue.SPLEEN) > 1.3 * mean_of(t2, anatomy, P.Tissue.LIVER)
    assert mean_of(t2, anatomy, P.Tissue.KIDNEY_CORTEX) > mean_of(t2, anatomy, P.Tissue.LIVER)
    assert mean_of(t2, anatomy, P.Tissue.BLOOD) < 0.5 * mean_of(t2, anatomy, P.Tissue.LIVER)  # flow void
    t1 = rendered(anatomy, "T1-InPhase")
    assert mean_of(t1, anatomy, P.Tissue.LIVER) > 1.1 * mean_of(t1, anatomy, P.Tissue.SPLEEN)
    assert mean_of(t1, anatomy, P.Tissue.FAT) > 1.5 * mean_of(t1, anatomy, P.Tissue.LIVER)


def test_out_of_phase_cancels_fat_water_boundaries(anatomy: P.Anatomy) -> None:
    ip = rendered(anatomy, "T1-InPhase")
    op = rendered(anatomy, "T1-OutPhase")
    d, h, w = ip.shape
    blocks = anatomy.tissue.reshape(d, 2, h, 2, w, 2)
    fat_share = (blocks == P.Tissue.FAT).mean(axis=(1, 3, 5))
    water_tissues = [P.Tissue.LIVER, P.Tissue.SPLEEN, P.Tissue.MUSCLE, P.Tissue.KIDNEY_CORTEX]
    water_share = np.isin(blocks, water_tissues).mean(axis=(1, 3, 5))
    boundary = (fat_share >= 0.25) & (water_share >= 0.25) & (fat_share + water_share == 1)
    assert boundary.sum() > 20
    ratio = op / np.maximum(ip, 1e-9)
    boundary_ratio = float(np.median(ratio[boundary]))
    assert boundary_ratio < 0.8 * float(np.median(ratio[pure_voxels(anatomy, P.Tissue.FAT)]))
    assert boundary_ratio < 0.8 * float(np.median(ratio[pure_voxels(anatomy, P.Tissue.MUSCLE)]))
    # the fatty liver (12 % fat) darkens out of phase, unlike the fat-free spleen
    liver = float(np.median(ratio[pure_voxels(anatomy, P.Tissue.LIVER)]))
    spleen = float(np.median(ratio[pure_voxels(anatomy, P.Tissue.SPLEEN)]))
    assert liver < 0.85 * spleen


def test_noise_is_rician_and_seeded(anatomy: P.Anatomy) -> None:
    a = P.render_case(anatomy, "T2-SPIR", np.random.default_rng(3))
    b = P.render_case(anatomy, "T2-SPIR", np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.shape == (64, 64, 16) and a.min() >= 0
    corners = a[:4, :4, :]  # air: the magnitude of pure complex noise has a positive (Rician) floor
    assert corners.mean() > 0 and corners.mean() < 0.1 * np.percentile(a, 99)


def test_simulate_case_matches_dataset(dataset: Path) -> None:
    case = P.simulate_case(ARGS["seed"], "T2-SPIR", 1, ARGS["size"], ARGS["slices"])
    stored = nib.load(dataset / "volumes" / "T2-SPIR" / "T2-SPIR_001_image.nii.gz")
    np.testing.assert_array_equal(np.asarray(stored.dataobj), case.image)


def test_cli(tmp_path: Path) -> None:
    import runpy

    script = Path(__file__).resolve().parents[1] / "scripts" / "make_phantom_dataset.py"
    module = runpy.run_path(str(script))
    module["main"](["--out", str(tmp_path / "cli"), "--cases", "1", "--size", "32", "--slices", "4",
                    "--modalities", "T1", "T2"])
    assert load_index(tmp_path / "cli" / "Phantom_T2_all.json")[0].modality == "T2 Abdomen MRI"
    assert load_index(tmp_path / "cli" / "Phantom_T1_test.json") == []


def test_bad_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown phantom modalities"):
        P.generate_phantom_dataset(tmp_path, modalities=("T3",))
    with pytest.raises(ValueError, match="cases"):
        P.generate_phantom_dataset(tmp_path, cases=0)
