"""Bad input, as a user gives it on the command line, is refused before any work with one message (no traceback)
that names the file, entry or key. One row per kind; the synthesis flags' own table is in test_synthesis.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import TINY, make_toy_index
from mrgen.io.images import write_gray
from mrgen.models.builders import VAE, build_from_config
from mrgen.training.cli import main as train_main


def vae_yaml(root: Path, index: Path, **train) -> Path:
    settings = {"train_batch_size": 2, "max_train_steps": 1, "num_threads": 1, **train}
    lines = [f"output_dir: {root / 'run'}", "model:", f"  config_path: {TINY}", "data:", f"  index_paths: [{index}]",
             "  test_fraction: 0.34", "train:", *[f"  {k}: {v}" for k, v in settings.items()]]
    path = root / "vae.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def damaged_vae_folder(root: Path, damage: Callable[[Path], None]) -> Path:
    folder = root / "pipeline"
    build_from_config(TINY, VAE).save_pretrained(folder / "vae")
    damage(folder / "vae" / "diffusion_pytorch_model.safetensors")
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:1000])


def poison_with_nan(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    first = sorted(tensors)[0]
    tensors[first] = torch.full_like(tensors[first], float("nan"))
    save_file(tensors, path)


def edit_index(index: Path, change: Callable[[dict, Path], None]) -> None:
    entries = json.loads(index.read_text())
    change(entries[0], index.parent)
    index.write_text(json.dumps(entries))


def noisy_mask(entry: dict, root: Path) -> None:
    write_gray(root / entry["mask0_path"], np.random.default_rng(0).integers(0, 255, (24, 20), dtype=np.uint8))


def small_mask(entry: dict, root: Path) -> None:
    write_gray(root / entry["mask0_path"], np.zeros((12, 10), np.uint8))


# (kind, stage, extra command-line arguments (placeholders: {index}, {pipeline}), index change, message fragment)
CASES = [
    ("unknown config key", "vae", ["train.max_stepz=3"], None, "unknown key 'train.max_stepz'"),
    ("wrong type", "vae", ["train.max_train_steps=many"], None, "max_train_steps"),
    ("negative step count", "vae", ["train.max_train_steps=-5"], None, "max_train_steps must be at least 1"),
    ("zero checkpoint interval", "vae", ["train.checkpointing_steps=0"], None, "checkpointing_steps must be at least 1"),
    ("zero batch size", "vae", ["train.train_batch_size=0"], None, "train_batch_size must be at least 1"),
    ("missing index file", "vae", ["data.index_paths=[/nonexistent/index.json]"], None, "/nonexistent/index.json"),
    ("--resume of a missing checkpoint", "vae", ["--resume", "/nonexistent/checkpoint-5"], None, "checkpoint-5"),
    ("a new run into another run's output folder", "vae", ["output_dir={earlier}"], None,
     "holds the checkpoints of an earlier run (newest: checkpoint-3)"),
    ("index entry without a field", "vae", [], lambda e, r: e.pop("label"), "label"),
    ("index entry with a missing image", "vae", [], lambda e, r: e.update(image_path="gone.png"), "gone.png"),
    ("unknown modality in the index", "vae", [], lambda e, r: e.update(modality="T7 Abdomen MRI"), "T7 Abdomen MRI"),
    ("unknown organ in the index", "vae", [], lambda e, r: e.update(organs=["liver", "heart"]), "heart"),
    ("mask that is not binary", "vae", [], noisy_mask, "not binary"),
    ("mask of another size than its image", "vae", [], small_mask, "mask is 12x10 but the image is 24x20"),
    ("missing pretrained folder", "unet", ["model.pretrained_model_path=/nonexistent/pipeline"], None,
     "/nonexistent/pipeline"),
    ("truncated safetensors weights", "unet", ["model.pretrained_model_path={truncated}"], None, "truncated or damaged"),
    ("non-finite weights", "unet", ["model.pretrained_model_path={nan}"], None, "NaN or infinity"),
]


@pytest.mark.parametrize("kind, stage, extra, change, message", CASES, ids=[c[0] for c in CASES])
def test_bad_training_input_is_one_message_before_any_work(kind, stage, extra, change, message, tmp_path, capsys):
    index = make_toy_index(tmp_path, "toy", "T1 in-phase Abdomen MRI")
    if change is not None:
        edit_index(index, change)
    places = {"truncated": damaged_vae_folder(tmp_path / "t", truncate) if "{truncated}" in str(extra) else None,
              "nan": damaged_vae_folder(tmp_path / "n", poison_with_nan) if "{nan}" in str(extra) else None,
              "earlier": tmp_path / "earlier"}
    (tmp_path / "earlier" / "checkpoints" / "checkpoint-3").mkdir(parents=True)
    extra = [a.format(**{k: v for k, v in places.items() if v is not None}) for a in extra]
    config = vae_yaml(tmp_path, index)
    with pytest.raises(SystemExit) as exit_info:
        train_main(stage, ["--config", str(config), *extra])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert message in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before the first step
    assert not list((tmp_path / "earlier" / "checkpoints").glob("checkpoint-[!3]*"))


# ----- the Segmentation tools (each script's main, as `python Segmentation/<script>.py ...` calls it)

def segmentation_main(script: str) -> Callable[[list[str]], int]:
    import importlib.util

    spec = importlib.util.spec_from_file_location(script, Path(__file__).resolve().parents[1] / "Segmentation" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def nifti_pair(folder: Path, label_shape: tuple[int, int, int] = (8, 8, 3)) -> Path:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.float32), np.eye(4)), folder / "case1_image.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(label_shape, np.uint8), np.eye(4)), folder / "case1_label.nii.gz")
    return folder


def synthesis_json(root: Path, change: Callable[[list], object] = lambda entries: entries) -> Path:
    write_gray(root / "image.png", np.zeros((16, 16), np.uint8))
    write_gray(root / "mask.png", np.zeros((16, 16), np.uint8))
    entries = [{"image_path": "image.png", **{f"mask_{k}_path": "mask.png" for k in range(4)}}]
    path = root / "synthetic.json"
    path.write_text(json.dumps(change(entries)))
    return path


def taken_id(root: Path) -> Path:
    (root / "raw" / "Dataset601_Other").mkdir(parents=True)
    return synthesis_json(root)


EXPORT = ["--dataset_id", "601", "--dataset_name", "Mine"]
SEGMENTATION_CASES = [
    # kind, script, arguments ({root}: the test's folder), what the message must name
    ("label volume of another shape than its image", "prepare_real_data",
     lambda r: ["--image_dir", str(nifti_pair(r / "nii", (8, 8, 2))), "--label_names", "liver", *EXPORT],
     "label shape (8, 8, 2) does not match the image's (8, 8, 3)"),
    ("missing image folder", "prepare_real_data",
     lambda r: ["--image_dir", str(r / "nowhere"), "--label_names", "liver", *EXPORT], "nowhere does not exist"),
    ("NIfTI images without label names", "prepare_real_data",
     lambda r: ["--image_dir", str(nifti_pair(r / "nii")), *EXPORT], "--image_dir needs --label_names"),
    ("volume list line without its label names", "prepare_real_data",
     lambda r: ["--jsonl", str(_jsonl(r, {"image": "a.nii.gz", "mask": "a.nii.gz"})), *EXPORT], "missing 'label'"),
    ("synthesis JSON that is not a list", "prepare_nnunet_data",
     lambda r: ["--json_file", str(synthesis_json(r, lambda e: e[0])), *EXPORT], "expected a JSON list"),
    ("a taken nnU-Net dataset id", "prepare_nnunet_data",
     lambda r: ["--json_file", str(taken_id(r)), *EXPORT], "already uses dataset id 601"),
    ("ignored mask index out of range", "prepare_nnunet_data",
     lambda r: ["--json_file", str(synthesis_json(r, lambda e: [{**e[0], "ignored_masks": [7]}])), *EXPORT],
     "'ignored_masks' must be a list of mask indices in [0, 4)"),
    ("unknown label mapping", "prepare_nnunet_data",
     lambda r: ["--json_file", str(synthesis_json(r)), "--mask2label", "CHAOS_typo", *EXPORT],
     "'CHAOS_typo' is neither a built-in name"),
    ("test set without its geometry sidecars", "evaluate_nib",
     lambda r: ["--seg_dir", str(r), "--gt_dir", str(r), "--geometry_dir", str(r / "geometryTs"),
                "--target_dataset", "CHAOSMR", "--source_dataset", "CHAOSMR"],
     "geometryTs does not exist; it is written by Segmentation/prepare_real_data.py"),
]


def _jsonl(root: Path, line: dict) -> Path:
    path = root / "volumes.jsonl"
    path.write_text(json.dumps(line) + "\n")
    return path


@pytest.mark.parametrize("kind, script, arguments, message", SEGMENTATION_CASES, ids=[c[0] for c in SEGMENTATION_CASES])
def test_bad_segmentation_input_is_one_message_before_any_work(kind, script, arguments, message, tmp_path, capsys):
    argv = arguments(tmp_path)
    if "--dataset_id" in argv:
        argv += ["--out", str(tmp_path / "raw")]
    with pytest.raises(SystemExit) as exit_info:
        segmentation_main(script)(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err
    assert message in err, err
    assert not (tmp_path / "raw" / "Dataset601_Mine").exists()  # nothing half-written
