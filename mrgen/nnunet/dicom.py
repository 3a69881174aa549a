"""A DICOM slice series -> one 3D volume with a RAS+ affine, ordered along the slice normal.

Geometry comes from the headers only: ``ImageOrientationPatient`` gives the row and column direction
cosines (LPS patient axes), ``PixelSpacing`` the (row, column) spacing, ``ImagePositionPatient`` each
slice's origin. Slices are sorted by their position projected on the normal (row x column); file names
and ``InstanceNumber`` are not trusted for order. The volume's voxel axes are (column index, row index,
slice), so ``volume[:, :, k].T`` is the k-th slice as stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

log = logging.getLogger(__name__)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
ORIENTATION_TOLERANCE = 1e-4
SPACING_TOLERANCE = 0.01  # relative deviation of slice gaps that is still one regular series


class DicomSeriesError(ValueError):
    """A folder does not hold one consistent DICOM slice series."""


@dataclass
class DicomSeries:
    volume: np.ndarray        # (columns, rows, slices), float32, rescaled
    affine: np.ndarray        # voxel -> RAS+ mm
    files: list[Path]         # one per slice, in volume order
    positions: np.ndarray     # (slices, 3) ImagePositionPatient in mm (DICOM's LPS), in volume order


def read_dicom_series(folder: str | Path) -> DicomSeries:
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise DicomSeriesError(f"{folder}: no DICOM files")
    headers = [_read(f) for f in files]
    row_dir, col_dir = _common_orientation(headers, files, folder)
    normal = np.cross(row_dir, col_dir)
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    order = np.argsort(positions @ normal, kind="stable")
    positions = positions[order]
    files = [files[i] for i in order]
    headers = [headers[i] for i in order]
    step = _slice_step(positions, normal, headers[0], folder)
    row_spacing, col_spacing = (float(v) for v in headers[0].PixelSpacing)
    _check_same(headers, files, "PixelSpacing", lambda h: tuple(float(v) for v in h.PixelSpacing))
    _check_same(headers, files, "Rows/Columns", lambda h: (int(h.Rows), int(h.Columns)))

    volume = np.stack([_pixels(h).T for h in headers], axis=2).astype(np.float32)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * col_spacing
    lps[:3, 1] = col_dir * row_spacing
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    return DicomSeries(volume, LPS_TO_RAS @ lps, files, positions)


def _read(path: Path) -> pydicom.Dataset:
    try:
        header = pydicom.dcmread(path)
    except pydicom.errors.InvalidDicomError as err:
        raise DicomSeriesError(f"{path}: not a DICOM file ({err})") from err
    for tag in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        if tag not in header:
            raise DicomSeriesError(f"{path}: missing {tag}; cannot place the slice in space")
    return header


def _common_orientation(headers: list[pydicom.Dataset], files: list[Path], folder: Path) -> tuple[np.ndarray, np.ndarray]:
    first = np.array([float(v) for v in headers[0].ImageOrientationPatient])
    for header, path in zip(headers, files):
        iop = np.array([float(v) for v in header.ImageOrientationPatient])
        if not np.allclose(iop, first, atol=ORIENTATION_TOLERANCE):
            raise DicomSeriesError(f"{path}: ImageOrientationPatient {iop.tolist()} differs from {files[0].name}'s "
                                   f"{first.tolist()}; {folder} mixes series")
    return first[:3], first[3:]


def _slice_step(positions: np.ndarray, normal: np.ndarray, first: pydicom.Dataset, folder: Path) -> np.ndarray:
    if len(positions) == 1:
        thickness = float(first.get("SpacingBetweenSlices", first.get("SliceThickness", 1.0)))
        return normal * thickness
    gaps = np.diff(positions @ normal)
    if np.any(gaps <= 0):
        raise DicomSeriesError(f"{folder}: two slices share a position along the slice normal; duplicate files?")
    if np.max(np.abs(gaps - gaps.mean())) > SPACING_TOLERANCE * gaps.mean():
        log.warning("%s: irregular slice gaps (%.3f..%.3f mm); using the mean %.3f mm", folder,
                    gaps.min(), gaps.max(), gaps.mean())
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def _check_same(headers: list[pydicom.Dataset], files: list[Path], what: str, get) -> None:
    first = get(headers[0])
    for header, path in zip(headers, files):
        if get(header) != first:
            raise DicomSeriesError(f"{path}: {what} {get(header)} differs from {files[0].name}'s {first}")


def _pixels(header: pydicom.Dataset) -> np.ndarray:
    pixels = header.pixel_array.astype(np.float32)
    slope = float(header.get("RescaleSlope", 1.0))
    intercept = float(header.get("RescaleIntercept", 0.0))
    return pixels * slope + intercept
