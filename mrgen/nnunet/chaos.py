"""The CHAOS MR release layout -> volumes with labels.

Layout (per patient folder under the root, e.g. ``CHAOS_Train_Sets/Train_Sets/MR``)::

    <patient>/T1DUAL/DICOM_anon/InPhase/*.dcm
    <patient>/T1DUAL/DICOM_anon/OutPhase/*.dcm
    <patient>/T1DUAL/Ground/*.png          (shared by in- and out-phase)
    <patient>/T2SPIR/DICOM_anon/*.dcm
    <patient>/T2SPIR/Ground/*.png

Ground-truth PNGs store organs as grey levels 63/126/189/252 (liver, right kidney, left kidney, spleen);
the bands 55-70, 110-135, 175-200 and 240-255 are accepted, anything else non-zero is counted and dropped.
Each PNG belongs to the DICOM file of the same name. The T1 DUAL PNGs carry the InPhase DICOM names only, so an
OutPhase slice takes the PNG of the InPhase slice at its position (``ImagePositionPatient``, both echoes of a
dual-echo acquisition share the slice positions). A pairing that cannot be proven so is refused, naming the case:
pairing by file order put most OutPhase labels on the wrong slice of the release.
Slices end up ordered along the slice normal (``dicom.read_dicom_series``), labels with them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from mrgen.io.images import read_gray
from mrgen.nnunet.dicom import DicomSeries, read_dicom_series
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
        pngs = _ground_for_slices(series, ground_dir, case_id)
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


def _ground_for_slices(series: DicomSeries, ground_dir: Path, case_id: str) -> list[Path]:
    """The ground-truth PNG of each slice of ``series`` (volume order)."""
    by_stem = {p.stem: p for p in ground_dir.glob("*.png")}
    if all(f.stem in by_stem for f in series.files):
        return [by_stem[f.stem] for f in series.files]
    folder = series.files[0].parent
    in_phase = folder.parent / "InPhase"
    if folder.name == "OutPhase" and in_phase.is_dir():
        return _ground_through_in_phase(series, read_dicom_series(in_phase), by_stem, case_id)
    raise VolumeError(f"{case_id}: the ground-truth PNGs in {ground_dir} are not named after the DICOM files in "
                      f"{folder} (CHAOS names each PNG after its slice, e.g. IMG-0004-00002.png for "
                      f"IMG-0004-00002.dcm), so which label belongs to which slice cannot be proven; rename them so")


def _ground_through_in_phase(out_phase: DicomSeries, in_phase: DicomSeries, by_stem: dict[str, Path],
                             case_id: str) -> list[Path]:
    """T1 DUAL OutPhase: each slice takes the PNG of the InPhase slice at the same position."""
    unnamed = [f.name for f in in_phase.files if f.stem not in by_stem]
    if unnamed:
        raise VolumeError(f"{case_id}: no ground-truth PNG named after the InPhase slices {unnamed[:3]}, so the "
                          f"OutPhase labels cannot be paired through them")
    gaps = np.linalg.norm(np.diff(in_phase.positions, axis=0), axis=1)
    tolerance = 0.25 * float(gaps.min()) if len(gaps) else 1e-3
    paired = []
    for file, position in zip(out_phase.files, out_phase.positions):
        distances = np.linalg.norm(in_phase.positions - position, axis=1)
        matches = np.flatnonzero(distances <= tolerance)
        if len(matches) != 1:
            raise VolumeError(f"{case_id}: OutPhase slice {file.name} at {np.round(position, 2).tolist()} mm has "
                              f"{len(matches)} InPhase slices at its position (within {tolerance:.2f} mm), so its "
                              f"label cannot be proven; the two echoes must share their slice positions")
        paired.append(by_stem[in_phase.files[int(matches[0])].stem])
    return paired


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
