"""Shared test setup: offline hubs, few threads, and a tiny hand-made conditional dataset."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import shutil  # noqa: E402

from mrgen.data.index import IndexEntry, save_index  # noqa: E402
from mrgen.data.phantom import generate_phantom_dataset  # noqa: E402
from mrgen.data.modalities import load_registry  # noqa: E402
from mrgen.io.images import write_gray  # noqa: E402
from mrgen.models.builders import UNET, VAE, build_from_config, controlnet_from_unet  # noqa: E402
from mrgen.models.pipeline_folder import TextEncoderSpec, write_text_encoder  # noqa: E402

torch.set_num_threads(2)

ORGANS = ["liver", "right kidney", "left kidney", "spleen"]
REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "ckpt" / "tiny"
# the pair config of synthesis tests on the ``phantom`` fixture
PHANTOM_PAIR_YAML = """
data:
  name: phantom_T1_to_T2-SPIR
  data_root: {root}
  source_indexes: [Phantom_T1-InPhase_train.json]
  target_indexes: [Phantom_T2-SPIR_train.json]
  inference_indexes: [Phantom_T1-InPhase_test.json]
  target_modality: T2 SPIR Abdomen MRI
  organs: [liver, right kidney, left kidney, spleen]
  organ_weights: [0.3, 0.5, 0.4, 0.6]
"""


def make_toy_index(root: Path, name: str, modality: str, patients: int = 3, slices: int = 2,
                   size: tuple[int, int] = (24, 20), seed: int = 0) -> Path:
    """Write ``patients x slices`` random slices with two organ masks each and their index; return its path."""
    rng = np.random.default_rng(seed)
    registry = load_registry()
    entries = []
    for p in range(patients):
        for s in range(slices):
            stem = root / name / f"p{p}" / f"s{s}"
            image = rng.integers(0, 255, size, dtype=np.uint8)
            write_gray(f"{stem}.png", image)
            liver = np.zeros(size, np.uint8)
            liver[2:10, 2:10] = 255
            spleen = np.zeros(size, np.uint8)
            spleen[12:20, 10:18] = 255
            masks = [liver, None, None, spleen]
            mask_paths = []
            for i, m in enumerate(masks):
                if m is None:
                    m = np.zeros(size, np.uint8)
                write_gray(f"{stem}_mask{i}.png", m)
                mask_paths.append(Path(f"{stem}_mask{i}.png"))
            entries.append(IndexEntry(
                image_path=Path(f"{stem}.png"), mask_paths=mask_paths, modality=modality,
                modality_attributes=registry.attributes(modality), region="Upper Abdominal Region",
                label=list(ORGANS), organs=["liver", "spleen"], shape=size, dataset="Toy",
                patient_id=f"{name}-p{p}", slice_index=s,
            ))
    path = root / f"{name}.json"
    save_index(entries, path)
    return path


@pytest.fixture
def toy_pair(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(root, source T1 in-phase index, target T2-SPIR index) of a tiny toy dataset."""
    source = make_toy_index(tmp_path, "src", "T1 in-phase Abdomen MRI", seed=1)
    target = make_toy_index(tmp_path, "tgt", "T2 SPIR Abdomen MRI", seed=2)
    return tmp_path, source, target


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> Path:
    """A small simulated dataset: 2 cases per modality, 64 px, 8 slices."""
    root = tmp_path_factory.mktemp("phantom")
    generate_phantom_dataset(root, cases=2, seed=0, size=64, slices=8)
    return root


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """A pipeline folder of tiny random-weight models (code paths, not quality)."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pipeline")
    unet = build_from_config(TINY, UNET)
    build_from_config(TINY, VAE).save_pretrained(folder / "vae")
    unet.save_pretrained(folder / "unet")
    controlnet_from_unet(unet, 1, (16, 32, 96)).save_pretrained(folder / "controlnet")
    shutil.copytree(TINY / "scheduler", folder / "scheduler")
    write_text_encoder(folder, TextEncoderSpec("minilm"))
    return folder


@pytest.fixture(scope="session")
def pipeline_without_controlnet(pipeline: Path, tmp_path_factory) -> Path:
    """The tiny pipeline folder without its controlnet/ (a UNet-stage output)."""
    folder = tmp_path_factory.mktemp("unet_only") / "pipeline"
    shutil.copytree(pipeline, folder, ignore=shutil.ignore_patterns("controlnet"))
    return folder
