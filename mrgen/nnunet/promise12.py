"""The PROMISE12 release: MetaImage volumes read with SimpleITK (installed with nnU-Net).

Layout (the training parts, e.g. ``TrainingData_Part1``; several folders may be given)::

    Case00.mhd + Case00.raw                              T2-weighted prostate MRI
    Case00_segmentation.mhd + Case00_segmentation.raw    prostate = 1 (absent in the test data)

MetaImage stores its geometry in DICOM's LPS world (``Offset``, ``ElementSpacing``, ``TransformMatrix``); the
affine here is the same geometry in NIfTI's RAS, so the 3D evaluation gets the real spacing and orientation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from mrgen.nnunet.volumes import Volume, VolumeError, VolumeSource, unique_case_ids

PROMISE12_ORGANS = ["prostate"]
MODALITY = "T2 Abdomen MRI"  # the registry key the original's PROMISE12 index uses for its T2 volumes
LABEL_SUFFIX = "_segmentation"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def itk_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array indexed (x, y, z), voxel -> RAS+ mm affine) of a file SimpleITK reads."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise VolumeError(f"{path}: SimpleITK cannot read it ({str(err).strip().splitlines()[-1]}); a MetaImage "
                          f".mhd needs its .raw data file beside it") from None
    if image.GetDimension() != 3:
        raise VolumeError(f"{path}: a {image.GetDimension()}D image, expected a 3D volume")
    direction = np.array(image.GetDirection(), float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), float)
    return sitk.GetArrayFromImage(image).transpose(2, 1, 0), affine


def read_promise12_case(image_path: Path, label_path: Path | None, case_id: str, modality: str | None) -> Volume:
    image, affine = itk_volume(image_path)
    labels = None
    if label_path is not None:
        labels, label_affine = itk_volume(label_path)
        if labels.shape != image.shape or not np.allclose(label_affine, affine, atol=1e-3):
            raise VolumeError(f"{label_path}: shape {labels.shape} or geometry differs from its image {image_path} "
                              f"({image.shape}); the label must be on the image's voxel grid")
        values = set(np.unique(labels).tolist()) - {0, 1}
        if values:
            raise VolumeError(f"{label_path}: label values {sorted(values)[:5]} besides 0 and 1 (prostate)")
        labels = labels.astype(np.uint8)
    return Volume(case_id, image.astype(np.float32), affine, list(PROMISE12_ORGANS), labels, modality=modality,
                  dataset="PROMISE12", patient_id=case_id, source_image=str(image_path),
                  source_label=None if label_path is None else str(label_path))


def promise12_sources(folders: Iterable[str | Path], modality: str | None = None) -> list[VolumeSource]:
    """One source per ``CaseNN.mhd`` in the folders, with its ``CaseNN_segmentation.mhd`` when present."""
    sources = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise VolumeError(f"PROMISE12 folder {folder} does not exist")
        for image in sorted(folder.glob("*.mhd")):
            if image.stem.endswith(LABEL_SUFFIX):
                continue
            label = image.with_name(f"{image.stem}{LABEL_SUFFIX}.mhd")

            def load(image=image, label=label if label.is_file() else None) -> Volume:
                return read_promise12_case(image, label, image.stem, modality or MODALITY)

            sources.append(VolumeSource(image.stem, str(image), load, image.stem))
    if not sources:
        raise VolumeError(f"no CaseNN.mhd volume in {', '.join(map(str, folders))}; point --promise12_dir at the "
                          f"release's TrainingData_Part* folders")
    return unique_case_ids(sources)
