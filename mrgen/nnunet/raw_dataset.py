"""Writing an nnU-Net v2 raw dataset: ``DatasetXXX_Name/{imagesTr,labelsTr,imagesTs,labelsTs}`` + dataset.json.

Slices are written either as 2D PNG (the original; nnU-Net reads them with spacing 1) or as pseudo-3D
NIfTI of one slice, whose array nnU-Net sees as ``(1, H, W)``, carrying the real in-plane spacing (the
maintainers' recommendation for 2D data, nnUNet#414). Image files end in ``_0000`` (channel 0), label
files do not.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import nibabel as nib
import numpy as np

from mrgen.io.atomic import atomic_save, atomic_write_text
from mrgen.io.images import read_gray, write_gray
from mrgen.nnunet.labels import ExportLabels

log = logging.getLogger(__name__)

FileFormat = Literal["png", "nifti"]
FILE_ENDINGS: dict[str, str] = {"png": ".png", "nifti": ".nii.gz"}
CHANNEL_SUFFIX = "_0000"
OUT_OF_PLANE_SPACING = 999.0


class RawDatasetError(ValueError):
    """The target dataset folder is in a state we must not write over."""


@dataclass(frozen=True)
class SplitFolders:
    """The image, label and extra folders of one split (``Tr`` or ``Ts``) of a raw dataset."""

    dataset_dir: Path
    split: Literal["Tr", "Ts"]
    file_format: FileFormat

    @property
    def file_ending(self) -> str:
        return FILE_ENDINGS[self.file_format]

    def folder(self, kind: str) -> Path:
        """``images``, ``labels``, ``geometry``, ``visualization`` ... + the split."""
        return self.dataset_dir / f"{kind}{self.split}"

    def image_path(self, name: str) -> Path:
        return self.folder("images") / f"{name}{CHANNEL_SUFFIX}{self.file_ending}"

    def label_path(self, name: str) -> Path:
        return self.folder("labels") / f"{name}{self.file_ending}"

    def prepare(self, kinds: tuple[str, ...], overwrite: bool) -> None:
        """Create the folders; existing files are an error unless ``overwrite`` (then they are removed)."""
        for kind in kinds:
            folder = self.folder(kind)
            if folder.is_dir() and any(folder.iterdir()):
                if not overwrite:
                    raise RawDatasetError(f"{folder} already holds files; pass --overwrite to replace them, "
                                          f"or choose another dataset id/name")
                log.info("removing the previous contents of %s", folder)
                shutil.rmtree(folder)
            folder.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def written(self, kinds: tuple[str, ...], overwrite: bool) -> Iterator[None]:
        """``prepare`` the folders for the writing inside the block; if it fails, remove them again (and the dataset
        folder if the block's export created it), so a stopped export leaves nothing half-written."""
        created = not self.dataset_dir.exists()
        self.prepare(kinds, overwrite)
        try:
            yield
        except BaseException:
            for folder in [self.dataset_dir] if created else [self.folder(kind) for kind in kinds]:
                shutil.rmtree(folder, ignore_errors=True)
            raise

    def write_image(self, name: str, image: np.ndarray, affine: np.ndarray | None = None) -> Path:
        return self._write(self.image_path(name), image, affine)

    def write_label(self, name: str, labels: np.ndarray, affine: np.ndarray | None = None) -> Path:
        return self._write(self.label_path(name), labels.astype(np.uint8), affine)

    def _write(self, path: Path, array: np.ndarray, affine: np.ndarray | None) -> Path:
        if self.file_format == "png":
            write_gray(path, array)
        else:
            write_slice_nifti(path, array, affine)
        return path


def write_slice_nifti(path: Path, slice2d: np.ndarray, affine: np.ndarray | None) -> None:
    """A 2D (rows, cols) array as a one-slice NIfTI: data (cols, rows, 1), so readers see (1, rows, cols)."""
    data = np.ascontiguousarray(slice2d.T[:, :, None])
    if data.dtype != np.uint8:
        data = data.astype(np.float32)
    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine)
    image.header.set_xyzt_units("mm")
    atomic_save(path, lambda tmp: nib.save(image, tmp))


def read_slice(path: Path) -> np.ndarray:
    """A PNG or one-slice NIfTI written as above (or by nnU-Net from such input) -> 2D (rows, cols)."""
    if path.name.endswith(".png"):
        return read_gray(path)
    data = np.asanyarray(nib.load(path).dataobj)
    if data.ndim != 3 or data.shape[2] != 1:
        raise RawDatasetError(f"{path}: expected a one-slice NIfTI (X, Y, 1), got shape {data.shape}")
    return data[:, :, 0].T


def slice_affine(view_affine: np.ndarray, k: int, scale: float, top: int, left: int) -> np.ndarray:
    """Affine of exported slice ``k`` (NIfTI voxel (col, row, 0)) after padding by (top, left) and
    resizing by ``scale`` = padded size / output size (pixel centres map to pixel centres).

    The slice normal gets the length ``OUT_OF_PLANE_SPACING``: nnU-Net's planner moves the axis with the
    largest spacing first, so a one-slice NIfTI whose in-plane spacing exceeds its slice thickness would
    be planned across the slice; nnU-Net's own 2D image reader uses the same 999.
    """
    offset = (scale - 1.0) / 2.0
    to_view = np.array([[scale, 0, 0, offset - left],
                        [0, scale, 0, offset - top],
                        [0, 0, 1, k],
                        [0, 0, 0, 1]], dtype=float)
    affine = view_affine @ to_view
    affine[:3, 2] *= OUT_OF_PLANE_SPACING / np.linalg.norm(affine[:3, 2])
    return affine


def planar_affine(row_mm: float, col_mm: float) -> np.ndarray:
    """Affine of a stand-alone slice (no 3D context) in the LPS view: rows posterior, columns left."""
    return np.diag([-col_mm, -row_mm, OUT_OF_PLANE_SPACING, 1.0])


def write_dataset_json(dataset_dir: Path, labels: ExportLabels, file_format: FileFormat, name: str,
                       description: str, channel_name: str = "MR", overwrite: bool = False,
                       ignore: bool = False) -> dict:
    """dataset.json through nnU-Net's own ``generate_dataset_json``; numTraining counts imagesTr; ``ignore`` adds
    nnU-Net's ignore label."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    ending = FILE_ENDINGS[file_format]
    existing = dataset_dir / "dataset.json"
    ids = labels.nnunet_labels(ignore)
    if existing.is_file() and not overwrite:
        old = json.loads(existing.read_text(encoding="utf-8"))
        if old.get("file_ending") != ending or old.get("labels") != ids:
            raise RawDatasetError(
                f"{existing} was written for file ending {old.get('file_ending')!r} and labels {old.get('labels')}; "
                f"this export uses {ending!r} and {ids}. Use another dataset id or --overwrite"
            )
    images_tr = dataset_dir / "imagesTr"
    num_training = len(list(images_tr.glob(f"*{CHANNEL_SUFFIX}{ending}"))) if images_tr.is_dir() else 0
    with tempfile.TemporaryDirectory(dir=dataset_dir) as tmp:  # nnU-Net's writer is not atomic; ours is
        generate_dataset_json(tmp, {0: channel_name}, ids, num_training, ending,
                              dataset_name=name, reference="none", description=description,
                              converted_by="mrgen", license="see the source data")
        text = (Path(tmp) / "dataset.json").read_text(encoding="utf-8")
    atomic_write_text(existing, text)
    return json.loads(text)
