"""The CHAOS MR release layout -> volumes with labels.

Layout (per patient folder under the root, e.g. ``CHAOS_Train_Sets/Train_Sets/MR``)::

    <patient>/T1DUAL/DICOM_anon/InPhase/*.dcm
    <patient>/T1DUAL/DICOM_anon/OutPhase/*.dcm
    <patient>/T1DUAL/Ground/*.png          (shared by in- and out-phase)
    <patient>/T2SPIR/DICOM_anon/*.dcm
    <patient>/T2SPIR/Ground/*.png

Ground-truth PNGs store organs as grey levels 63/126/189/252 (liver, right kidney, left kidney, spleen);
the bands 55-70, 110-135, 175-200 and 240-255 are accepted, anything else non-zero is counted and dropped.
Each PNG belongs to the DICOM file of the same name when the names match; otherwise the PNGs, in natural
name order, are paired with the DICOM slices in ``InstanceNumber`` order (the release's file order).
Slices end up ordered along the slice normal (``dicom.read_dicom_series``), labels with them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from mrgen.io.images import read_gray
from mrgen.nnunet.dicom import read_dicom_series
from mrgen.nnunet.volumes import Volume, VolumeError, VolumeSource, unique_case_ids

log = logging.getLogger(__name__)

CHAOS_ORGANS = ["liver", "right kidney", "left kidney", "spleen"]
GREY_BANDS = ((55, 70), (110, 135), (175, 200), (240, 255))  # label i + 1 for band i

SEQUENCES = {
    "T1-InPhase": ("T1DUAL/DICOM_anon/InPhase", "T1DUAL/Ground", "T1 in-phase Abdomen MRI"),
    "T1-OutPhase": ("T1DUAL/DICOM_anon/OutPhase", "T1DUAL/Ground", "T1 out-of-phase Abdomen MRI"),
    "T2-SPIR": ("T2SPIR/DICOM_anon", "T2SPIR/Ground", "T2 SPIR Abdomen MRI"),
}


def grey_to_labels(png: np.ndarray, where: str = "") -> np.ndarray:
    """CHAOS ground-truth grey levels -> label ids 0..4 (uint8)."""
    labels = np.zeros(png.shape, np.uint8)
    for i, (lo, hi) in enumerate(GREY_BANDS):
        labels[(png >= lo) & (png <= hi)] = i + 1
    stray = int(np.count_nonzero((png > 0) & (labels == 0)))
    if stray:
        log.warning("%s: %d pixels with grey levels outside the CHAOS bands set to background", where, stray)
    return labels


def chaos_sources(root: str | Path, sequence: str, patients: Sequence[str] | None = None) -> list[VolumeSource]:
    """One source per patient folder under ``root`` that has the sequence (all, or those in ``patients``)."""
    if sequence not in SEQUENCES:
        raise VolumeError(f"unknown CHAOS sequence {sequence!r}; choose one of {', '.join(SEQUENCES)}")
    root = Path(root)
    if not root.is_dir():
        raise VolumeError(f"CHAOS root {root} does not exist")
    dicom_rel, ground_rel, modality = SEQUENCES[sequence]
    folders = sorted((p for p in root.iterdir() if (p / dicom_rel).is_dir()), key=lambda p: _natural_key(p.name))
    if patients:
        missing = sorted(set(patients) - {p.name for p in folders})
        if missing:
            raise VolumeError(f"{root}: no {dicom_rel} folder for patients {missing}")
        folders = [p for p in folders if p.name in set(patients)]
    if not folders:
        raise VolumeError(f"{root}: no patient folder contains {dicom_rel}; point --chaos_root at the folder "
                          f"holding the numbered patient folders (e.g. .../Train_Sets/MR)")
    tag = sequence.replace("-", "")
    sources = []
    for folder in folders:
        def load(folder=folder) -> Volume:
            return read_chaos_case(folder / dicom_rel, folder / ground_rel, f"CHAOS_{folder.name}_{tag}",
                                   modality, folder.name)

        sources.append(VolumeSource(f"CHAOS_{folder.name}_{tag}", str(folder / dicom_rel), load, folder.name))
    return unique_case_ids(sources)


def read_chaos_case(dicom_dir: Path, ground_dir: Path, case_id: str, modality: str, patient_id: str) -> Volume:
    series = read_dicom_series(dicom_dir)
    labels = None
    if ground_dir.is_dir():
        pngs = _ground_for_slices(series.files, series.instance_numbers, ground_dir)
        shape = series.volume.shape[:2][::-1]
        slices = []
        for png in pngs:
            grey = read_gray(png)
            if grey.shape != shape:
                raise VolumeError(f"{png}: ground truth is {grey.shape}, its DICOM slice {shape} (rows, cols)")
            slices.append(grey_to_labels(grey, str(png)).T)
        labels = np.stack(slices, axis=2)
    else:
        log.warning("%s: no ground-truth folder %s; exporting images only", case_id, ground_dir)
    return Volume(case_id, series.volume, series.affine, list(CHAOS_ORGANS), labels, modality=modality,
                  dataset="CHAOS_MRI", patient_id=patient_id, source_image=str(dicom_dir),
                  source_label=str(ground_dir) if labels is not None else None)


def _ground_for_slices(files: list[Path], instance_numbers: list[int | None], ground_dir: Path) -> list[Path]:
    pngs = sorted(ground_dir.glob("*.png"), key=lambda p: _natural_key(p.name))
    by_stem = {p.stem: p for p in pngs}
    if all(f.stem in by_stem for f in files):
        return [by_stem[f.stem] for f in files]
    if len(pngs) != len(files):
        raise VolumeError(f"{ground_dir}: {len(pngs)} ground-truth PNGs for {len(files)} DICOM slices in "
                          f"{files[0].parent}; they must match one to one")
    if any(n is None for n in instance_numbers):
        raise VolumeError(f"{files[0].parent}: PNG names do not match the DICOM names and some slices lack "
                          f"InstanceNumber, so slices and labels cannot be paired")
    by_instance = sorted(range(len(files)), key=lambda i: instance_numbers[i])
    paired: list[Path | None] = [None] * len(files)
    for png, slice_position in zip(pngs, by_instance):
        paired[slice_position] = png
    return paired  # type: ignore[return-value]


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
