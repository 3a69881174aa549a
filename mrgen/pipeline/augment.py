"""Strong intensity augmentation of a 2D nnU-Net training set: the domain-randomisation baseline.

In the spirit of SynthSeg and DualNorm: every copy of a slice gets a random, possibly non-monotonic
intensity curve (a piecewise-linear look-up table through random levels, so tissue contrasts can swap
and invert), a random gamma and a little noise. A segmenter trained on it sees many contrasts of the
source anatomy, which is what a contrast-agnostic baseline needs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from mrgen.io.atomic import atomic_write_json
from mrgen.io.images import read_gray, write_gray


def random_contrast(image: np.ndarray, rng: np.random.Generator, knots: int = 5) -> np.ndarray:
    """uint8 slice -> the same anatomy under a random intensity curve, gamma and noise (uint8)."""
    x = image.astype(np.float32) / 255.0
    levels = rng.uniform(0.0, 1.0, knots)
    levels[0] = rng.uniform(0.0, 0.15)  # keep the background dark most of the time, as in MR
    curved = np.interp(x, np.linspace(0.0, 1.0, knots), levels)
    curved = np.clip(curved, 0.0, 1.0) ** rng.uniform(0.6, 1.6)
    curved = curved + rng.normal(0.0, rng.uniform(0.0, 0.03), curved.shape)
    return np.round(np.clip(curved, 0.0, 1.0) * 255.0).astype(np.uint8)


def augment_dataset(source: Path, destination: Path, copies: int, seed: int) -> Path:
    """``copies`` randomly re-contrasted versions of every training slice of a PNG nnU-Net raw dataset."""
    rng = np.random.default_rng(seed)
    if destination.exists():
        shutil.rmtree(destination)
    (destination / "imagesTr").mkdir(parents=True)
    (destination / "labelsTr").mkdir(parents=True)
    count = 0
    for image_path in sorted((source / "imagesTr").glob("*_0000.png")):
        case = image_path.name[: -len("_0000.png")]
        image, labels = read_gray(image_path), source / "labelsTr" / f"{case}.png"
        for copy in range(copies):
            write_gray(destination / "imagesTr" / f"{case}_aug{copy}_0000.png", random_contrast(image, rng))
            shutil.copyfile(labels, destination / "labelsTr" / f"{case}_aug{copy}.png")
            count += 1
    dataset = json.loads((source / "dataset.json").read_text())
    dataset["numTraining"] = count
    if "name" in dataset:
        dataset["name"] = destination.name.split("_", 1)[1]
    atomic_write_json(destination / "dataset.json", dataset)
    return destination
