"""Synthetic-JSON export to nnU-Net raw: labels, merging, NIfTI spacing, nnU-Net's own integrity check,
the lean CPU settings and the discovery of our short trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from mrgen.io.images import read_gray, write_gray
from mrgen.nnunet.env import (
    SHORT_TRAINER,
    TRAINER_DIR,
    NnUNetPathError,
    NnUNetPaths,
    dataset_dir,
    lean_environment,
    plan_command,
)
from mrgen.nnunet.export import (IGNORE_COLOUR, ExportError, ExportOptions, export_json_files, load_items,
                                 merge_items)
from mrgen.nnunet.labels import LabelMappingError, evaluation_labels, export_labels

REPO = Path(__file__).resolve().parents[1]
CHAOS = export_labels("CHAOSMR")


def _synthetic_json(folder: Path, n: int = 6, key: str = "mask_{}_path", size: int = 32, name: str = "synthetic.json",
                    spacing: list[float] | None = None) -> Path:
    """n generated-looking slices; organ k is a soft-edged square; the last slice has no organ at all."""
    rng = np.random.default_rng(0)
    entries = []
    for i in range(n):
        image = rng.integers(0, 255, (size, size), dtype=np.uint8)
        write_gray(folder / "images" / f"{i}_T2-SPIR_Abdomen_MRI_0.png", image)
        entry = {"index": i, "prompt": ["T2 SPIR Abdomen MRI"], "image_path": f"images/{i}_T2-SPIR_Abdomen_MRI_0.png"}
        for k in range(4):
            mask = np.zeros((size, size), np.uint8)
            if i < n - 1:
                mask[4 + 5 * k:12 + 5 * k, 4:20] = 255
                mask[3 + 5 * k, 4:20] = 40  # a soft edge: foreground for the original's "> 0"
            write_gray(folder / "masks" / f"{i}_mask_{k}.png", mask)
            entry[key.format(k)] = f"masks/{i}_mask_{k}.png"
        if spacing is not None:
            entry.update(spacing=spacing, shape=[2 * size, 2 * size])
        entries.append(entry)
    path = folder / name
    path.write_text(json.dumps(entries))
    return path


def test_png_export_labels_overlay_and_empties(tmp_path, caplog):
    source = _synthetic_json(tmp_path / "synth")
    report = export_json_files([source], tmp_path / "raw", ExportOptions(1, "Synth", CHAOS))
    assert report.dataset_dir.name == "Dataset001_Synth" and report.cases == 6
    assert report.empty == ["5_T2-SPIR_Abdomen_MRI_0"] and "1 of 6 label maps are empty" in caplog.text
    labels = read_gray(report.dataset_dir / "labelsTr" / "0_T2-SPIR_Abdomen_MRI_0.png")
    assert labels[3, 10] == 1 and labels[8, 10] == 2  # soft edge counts; overlaps go to the larger id
    assert set(np.unique(labels)) == {0, 1, 2, 3, 4}
    assert (report.dataset_dir / "imagesTr" / "0_T2-SPIR_Abdomen_MRI_0_0000.png").is_file()
    assert read_gray(report.dataset_dir / "visualizationTr" / "0_T2-SPIR_Abdomen_MRI_0.png").shape == (32, 32)
    meta = json.loads((report.dataset_dir / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "right kidney": 2, "left kidney": 3, "spleen": 4}
    assert meta["numTraining"] == 6 and meta["file_ending"] == ".png" and meta["channel_names"] == {"0": "MR"}


def _with_ignored_spleen(source: Path) -> Path:
    """The same JSON with the first slice's spleen (mask 3) untrusted, as the per-organ selection rule writes it."""
    entries = json.loads(source.read_text())
    entries[0]["ignored_masks"] = [3]
    path = source.with_name("ignored.json")
    path.write_text(json.dumps(entries))
    return path


def test_an_ignored_organ_becomes_the_ignore_label_over_its_search_box(tmp_path, caplog):
    caplog.set_level("INFO")
    report = export_json_files([_with_ignored_spleen(_synthetic_json(tmp_path / "synth"))], tmp_path / "raw",
                               ExportOptions(3, "Ignored", CHAOS))
    labels = read_gray(report.dataset_dir / "labelsTr" / "0_T2-SPIR_Abdomen_MRI_0.png")
    # the spleen square covers rows 19-26 (soft edge 18), columns 4-19; its box grows by 2 px on every side (to 16-28)
    assert labels[25, 10] == 5 and labels[28, 3] == 5  # inside the square, and in the margin
    assert labels[17, 10] == 3  # a trusted organ keeps its label inside the box
    assert labels[30, 10] == 0 and 4 not in labels  # outside the box: background; no spleen label anywhere
    assert 4 in read_gray(report.dataset_dir / "labelsTr" / "1_T2-SPIR_Abdomen_MRI_0.png")  # other slices untouched
    meta = json.loads((report.dataset_dir / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "right kidney": 2, "left kidney": 3, "spleen": 4, "ignore": 5}
    assert report.with_ignored == 1 and "with an ignore region: 1" in caplog.text
    picture = np.asarray(Image.open(report.dataset_dir / "visualizationTr" / "0_T2-SPIR_Abdomen_MRI_0.png"))
    assert tuple(picture[28, 10]) == IGNORE_COLOUR  # the box's bottom edge: outlined in grey
    bad = json.loads((tmp_path / "synth" / "ignored.json").read_text())
    bad[0]["ignored_masks"] = [4]
    (tmp_path / "synth" / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ExportError, match=r"entry 0: 'ignored_masks' must be a list of mask indices in \[0, 4\)"):
        load_items(tmp_path / "synth" / "bad.json", CHAOS)


def test_nifti_export_carries_in_plane_spacing(tmp_path):
    source = _synthetic_json(tmp_path / "synth", n=2, key="mask{}_path", spacing=[0.7, 0.9])
    report = export_json_files([source], tmp_path / "raw", ExportOptions(2, "SynthNii", CHAOS, "nifti", size=48))
    image = sitk.ReadImage(str(report.dataset_dir / "imagesTr" / "0_T2-SPIR_Abdomen_MRI_0_0000.nii.gz"))
    assert sitk.GetArrayFromImage(image).shape == (1, 48, 48)
    # spacing given for a 64 px grid, stored at 32 px, exported at 48 px
    np.testing.assert_allclose(image.GetSpacing(), (0.9 * 2 * 32 / 48, 0.7 * 2 * 32 / 48, 999.0))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(report.dataset_dir / "labelsTr" / "0_T2-SPIR_Abdomen_MRI_0.nii.gz")))
    assert label.dtype == np.uint8 and set(np.unique(label)) == {0, 1, 2, 3, 4}


def test_merge_is_seeded_and_respects_ratios(tmp_path):
    a = load_items(_synthetic_json(tmp_path / "a", n=10), CHAOS)
    b = load_items(_synthetic_json(tmp_path / "b", n=4), CHAOS)
    merged = merge_items([a, b], [0.5, 1.0], seed=3)
    assert len(merged) == 9 and merged[5:] == b
    assert merged == merge_items([a, b], [0.5, 1.0], seed=3) and merged != merge_items([a, b], [0.5, 1.0], seed=4)
    with pytest.raises(ExportError, match="one per file"):
        merge_items([a, b], [0.5], seed=0)


def test_repeated_names_stay_unique(tmp_path):
    a, b = _synthetic_json(tmp_path / "a", n=2), _synthetic_json(tmp_path / "b", n=2)
    report = export_json_files([a, b], tmp_path / "raw", ExportOptions(3, "Two", CHAOS))
    names = sorted(p.name for p in (report.dataset_dir / "labelsTr").iterdir())
    assert names == ["0_T2-SPIR_Abdomen_MRI_0.png", "0_T2-SPIR_Abdomen_MRI_0_2.png",
                     "1_T2-SPIR_Abdomen_MRI_0.png", "1_T2-SPIR_Abdomen_MRI_0_2.png"]


def test_mappings_and_their_errors(tmp_path):
    user = tmp_path / "mapping.json"
    user.write_text(json.dumps({"mask_1_path": "liver tumor", "mask_0_path": "liver"}))
    assert export_labels(str(user)).organs == ("liver", "liver tumor")
    assert export_labels("Liver Tumor").ids == {"liver": 1, "liver tumor": 2}
    assert evaluation_labels("CHAOSMR").unions == ["kidney"]
    with pytest.raises(LabelMappingError, match="neither a built-in name"):
        export_labels("Kidneys")
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"mask_0_path": "liver", "mask_2_path": "spleen"}))
    with pytest.raises(LabelMappingError, match="without gaps"):
        export_labels(str(gap))


def test_input_errors(tmp_path, monkeypatch):
    source = _synthetic_json(tmp_path / "synth", n=1)
    with pytest.raises(ExportError, match="entry 0: no 'mask_4_path' or 'mask4_path' for organ 'pancreas'"):
        load_items(source, export_labels(["liver", "right kidney", "left kidney", "spleen", "pancreas"]))
    (tmp_path / "synth" / "masks" / "0_mask_2.png").unlink()
    with pytest.raises(ExportError, match=r"entry 0: 'mask_2_path' 'masks/0_mask_2.png' not found"):
        load_items(source, CHAOS)
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(NnUNetPathError, match="--out DIR or set the nnUNet_raw"):
        export_json_files([source], None, ExportOptions(1, "X", CHAOS))
    (tmp_path / "raw" / "Dataset004_Other").mkdir(parents=True)
    with pytest.raises(NnUNetPathError, match="already uses dataset id 004"):
        dataset_dir(tmp_path / "raw", 4, "Mine")


def test_script_reports_missing_raw_folder(tmp_path):
    source = _synthetic_json(tmp_path / "synth", n=1)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "Segmentation/prepare_nnunet_data.py"), "--json_file",
                           str(source), "--dataset_id", "1", "--dataset_name", "X"],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 2 and "set the nnUNet_raw environment variable" in done.stderr
    assert "Traceback" not in done.stderr


def test_lean_environment_and_trainer_discovery(tmp_path, monkeypatch):
    paths = NnUNetPaths.under(tmp_path)
    env = lean_environment(paths, "train", base={"nnUNet_extTrainer": "/elsewhere"})
    assert env["nnUNet_n_proc_DA"] == "0" and env["nnUNet_def_n_proc"] == "1"
    assert env["nnUNet_raw"] == str(tmp_path / "nnUNet_raw")
    assert env["nnUNet_extTrainer"].split(":") == [str(TRAINER_DIR), "/elsewhere"]
    assert lean_environment(paths, "plan", base={})["nnUNet_n_proc_DA"] == "1"  # 0 breaks the 2.8.1 planner
    assert plan_command(7)[-4:] == ["-np", "1", "-npfp", "1"]

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINER_DIR))
    trainer = recursive_find_trainer_class_by_name(SHORT_TRAINER)
    assert trainer.__name__ == SHORT_TRAINER and issubclass(trainer, nnUNetTrainer)

    from mrgen.nnunet.trainers.nnUNetTrainer_MRGenShort import _env_int

    monkeypatch.setenv("MRGEN_NNUNET_EPOCHS", "3")
    assert _env_int("MRGEN_NNUNET_EPOCHS", 10, 1) == 3
    monkeypatch.setenv("MRGEN_NNUNET_EPOCHS", "ten")
    with pytest.raises(ValueError, match="MRGEN_NNUNET_EPOCHS='ten' must be an integer"):
        _env_int("MRGEN_NNUNET_EPOCHS", 10, 1)


def test_exports_pass_nnunet_integrity_check(tmp_path):
    """PNG and NIfTI exports, and one with an ignore label, through nnU-Net's own plan_and_preprocess
    --verify_dataset_integrity."""
    paths = NnUNetPaths.under(tmp_path)
    paths.create()
    source = _synthetic_json(tmp_path / "synth", n=4, spacing=[0.8, 0.8])
    export_json_files([source], paths.raw, ExportOptions(901, "VerifyPng", CHAOS))
    export_json_files([source], paths.raw, ExportOptions(902, "VerifyNii", CHAOS, "nifti"))
    export_json_files([_with_ignored_spleen(source)], paths.raw, ExportOptions(903, "VerifyIgnore", CHAOS))
    # planning without preprocessing (--no_pp) is all the check needs and saves a worker pool
    command = ["nnUNetv2_plan_and_preprocess", "-d", "901", "902", "903", "-c", "2d", "--verify_dataset_integrity",
               "--no_pp", "-npfp", "1"]
    bin_dir = Path(sys.executable).parent
    done = subprocess.run([str(bin_dir / command[0]), *command[1:]], capture_output=True, text=True,
                          env=lean_environment(paths, "plan"), cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("verify_dataset_integrity Done") == 3  # the third with nnU-Net's ignore label
    # NIfTI: 0.8 mm on the entries' 64 px grid is 1.6 mm on the stored 32 px images; PNG has no spacing
    for name, spacing in (("Dataset901_VerifyPng", [1.0, 1.0]), ("Dataset902_VerifyNii", [1.6, 1.6])):
        plans = json.loads((paths.preprocessed / name / "nnUNetPlans.json").read_text())
        assert plans["configurations"]["2d"]["spacing"] == pytest.approx(spacing)
