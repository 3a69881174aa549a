"""Where each exported 2D slice came from, so predictions can be put back into the original 3D volume.

A volume is first brought into a *view* orientation by an explicit axis permutation/flip (nibabel
orientation codes, ``LPS`` by default: the radiological axial view). Slice ``k`` of the view is
``view[:, :, k].T``: rows run along the view's second axis (anterior -> posterior for LPS), columns along
its first (patient right -> left), which is how DICOM stores an axial slice. Each slice is then centre-padded
to a square and resized. The sidecar records every one of these steps; ``slices_to_volume`` undoes them
exactly (nearest-neighbour resizing back from a larger size is exact).

The original instead rotated every slice by 90 degrees and flipped it without recording it (reference 7.2).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt2axcodes, ornt_transform
from skimage.transform import resize

from mrgen.data.preprocess import pad_to_square, unpad_from_square
from mrgen.io.atomic import atomic_write_json

SIDECAR_VERSION = 1
NATIVE = "native"


class GeometryError(ValueError):
    """A geometry sidecar is missing, malformed, or does not fit the slices given."""


@dataclass
class SliceGeometry:
    """The per-case sidecar written next to an exported slice dataset (one JSON file per case)."""

    case_id: str
    original_shape: list[int]
    original_affine: list[list[float]]
    original_axcodes: list[str]
    view_axcodes: list[str]
    to_view_ornt: list[list[float]]
    view_shape: list[int]
    slice_axis_in_source: int
    source_slice_index: list[int]
    in_plane_shape: list[int]
    in_plane_spacing_mm: list[float]
    slice_spacing_mm: float
    padded_size: int | None
    output_size: int | None
    slice_names: list[str]
    file_ending: str
    intensity: str
    labels: dict[str, int]
    source_image: str | None = None
    source_label: str | None = None
    version: int = SIDECAR_VERSION

    @property
    def num_slices(self) -> int:
        return len(self.slice_names)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SliceGeometry":
        path = Path(path)
        if not path.is_file():
            raise GeometryError(f"geometry sidecar {path} does not exist; it is written by Segmentation/prepare_real_data.py")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("version") != SIDECAR_VERSION:
                raise GeometryError(f"{path}: sidecar version {raw.get('version')!r}, expected {SIDECAR_VERSION}")
            return cls(**raw)
        except (json.JSONDecodeError, TypeError) as err:
            raise GeometryError(f"{path}: not a valid geometry sidecar ({err}); re-run prepare_real_data.py") from err


@dataclass(frozen=True)
class ViewTransform:
    """The axis permutation/flip from a volume's voxel axes to the view's, with the affines of both."""

    ornt: np.ndarray
    source_shape: tuple[int, int, int]
    source_affine: np.ndarray

    @classmethod
    def for_volume(cls, affine: np.ndarray, shape: Sequence[int], view_axcodes: str | Sequence[str]) -> "ViewTransform":
        if isinstance(view_axcodes, str) and view_axcodes == NATIVE:
            ornt = np.array([[0, 1], [1, 1], [2, 1]], dtype=float)
        else:
            ornt = ornt_transform(io_orientation(affine), axcodes2ornt(parse_axcodes(view_axcodes)))
        return cls(ornt, tuple(int(s) for s in shape[:3]), np.asarray(affine, dtype=float))

    @property
    def view_shape(self) -> tuple[int, int, int]:
        shape = [0, 0, 0]
        for axis, (target, _) in enumerate(self.ornt):
            shape[int(target)] = self.source_shape[axis]
        return tuple(shape)

    @property
    def view_affine(self) -> np.ndarray:
        return self.source_affine @ inv_ornt_aff(self.ornt, self.source_shape)

    @property
    def inverse(self) -> np.ndarray:
        inverse = np.zeros_like(self.ornt)
        for axis, (target, flip) in enumerate(self.ornt):
            inverse[int(target)] = [axis, flip]
        return inverse

    def to_view(self, volume: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(apply_orientation(volume, self.ornt))

    def from_view(self, view: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(apply_orientation(view, self.inverse))

    def source_slice_indices(self) -> tuple[int, list[int]]:
        """The source axis the slices run along, and the source index of each view slice."""
        axis = int(np.flatnonzero(self.ornt[:, 0] == 2)[0])
        n = self.source_shape[axis]
        indices = list(range(n))
        return axis, indices[::-1] if self.ornt[axis, 1] < 0 else indices


def parse_axcodes(codes: str | Sequence[str]) -> tuple[str, str, str]:
    """Three nibabel axis codes, one from each of L/R, A/P, S/I (e.g. 'LPS', 'RAS', 'LIP')."""
    upper = tuple(c.upper() for c in codes)
    pairs = [next((p for p in ("LR", "AP", "SI") if c in p), None) for c in upper]
    if len(upper) != 3 or None in pairs or len(set(pairs)) != 3:
        raise GeometryError(f"view orientation {codes!r} is not three axis codes, one of each L/R, A/P, S/I "
                            f"(e.g. 'LPS'), nor {NATIVE!r}")
    return upper  # type: ignore[return-value]


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def view_slice(view: np.ndarray, k: int) -> np.ndarray:
    """Slice ``k`` as a 2D (rows, cols) image; see the module docstring for the convention."""
    return view[:, :, k].T


def forward_image(slice2d: np.ndarray, padded: bool, output_size: int | None) -> np.ndarray:
    """Centre pad to a square (if ``padded``) and bilinear resize (no anti-aliasing, as cv2 in the original)."""
    square = pad_to_square(slice2d) if padded else slice2d
    if output_size is None or square.shape[0] == output_size:
        return square
    return resize(square, (output_size, output_size), order=1, anti_aliasing=False, preserve_range=True, mode="edge")


def forward_labels(slice2d: np.ndarray, padded: bool, output_size: int | None) -> np.ndarray:
    square = pad_to_square(slice2d) if padded else slice2d
    if output_size is None or square.shape[0] == output_size:
        return square
    return _resize_nearest(square, (output_size, output_size))


def inverse_slice(slice2d: np.ndarray, geometry: SliceGeometry, order: int = 0) -> np.ndarray:
    """An exported-size slice back to the original in-plane shape: nearest neighbour (``order`` 0, for
    labels; exact when the export enlarged the slice) or bilinear (``order`` 1, for looking at images)."""
    h, w = geometry.in_plane_shape
    if geometry.padded_size is None:
        expected = (h, w) if geometry.output_size is None else (geometry.output_size,) * 2
    else:
        expected = (geometry.output_size or geometry.padded_size,) * 2
    if tuple(slice2d.shape) != expected:
        raise GeometryError(f"case {geometry.case_id}: slice of shape {slice2d.shape}, expected {expected} "
                            f"from its geometry sidecar")
    if geometry.padded_size is None:
        return slice2d if geometry.output_size is None else _resize(slice2d, (h, w), order)
    square = slice2d
    if geometry.output_size is not None and geometry.output_size != geometry.padded_size:
        square = _resize(slice2d, (geometry.padded_size, geometry.padded_size), order)
    return unpad_from_square(square, (h, w))


def slices_to_volume(slices: Sequence[np.ndarray], geometry: SliceGeometry, order: int = 0) -> np.ndarray:
    """Stack exported-size slices (in view order) back into the original voxel grid (see inverse_slice)."""
    if len(slices) != geometry.num_slices:
        raise GeometryError(f"case {geometry.case_id}: {len(slices)} slices given, the sidecar lists {geometry.num_slices}")
    view = np.stack([inverse_slice(s, geometry, order).T for s in slices], axis=2)
    transform = transform_from_geometry(geometry)
    volume = transform.from_view(view)
    if list(volume.shape) != list(geometry.original_shape):
        raise GeometryError(f"case {geometry.case_id}: rebuilt volume has shape {volume.shape}, "
                            f"the original was {geometry.original_shape}")
    return volume


def transform_from_geometry(geometry: SliceGeometry) -> ViewTransform:
    return ViewTransform(np.asarray(geometry.to_view_ornt, dtype=float), tuple(geometry.original_shape),
                         np.asarray(geometry.original_affine, dtype=float))


def describe_volume(transform: ViewTransform, view_axcodes: str | Sequence[str]) -> dict:
    """The geometry fields that depend only on the volume and the view (not on the export settings)."""
    view_spacing = voxel_spacing(transform.view_affine)
    axis, indices = transform.source_slice_indices()
    view_shape = transform.view_shape
    return dict(
        original_shape=list(transform.source_shape),
        original_affine=transform.source_affine.tolist(),
        original_axcodes=list(ornt2axcodes(io_orientation(transform.source_affine))),
        view_axcodes=[NATIVE] if view_axcodes == NATIVE else list(parse_axcodes(view_axcodes)),
        to_view_ornt=transform.ornt.tolist(),
        view_shape=list(view_shape),
        slice_axis_in_source=axis,
        source_slice_index=indices,
        in_plane_shape=[view_shape[1], view_shape[0]],
        in_plane_spacing_mm=[float(view_spacing[1]), float(view_spacing[0])],
        slice_spacing_mm=float(view_spacing[2]),
    )


def _resize_nearest(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return _resize(labels, shape, 0)


def _resize(array: np.ndarray, shape: tuple[int, int], order: int) -> np.ndarray:
    if order == 0:
        return resize(array, shape, order=0, anti_aliasing=False, preserve_range=True).astype(array.dtype)
    return resize(array.astype(np.float32), shape, order=order, anti_aliasing=False, preserve_range=True, mode="edge")
