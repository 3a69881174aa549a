"""Real 3D volumes -> a 2D slice nnU-Net raw dataset, a geometry sidecar per case, and a conditional index.

Per slice, as the original's ``prepare_real_data.py`` (reference 7.2) unless the options say otherwise:
min-max to 0-255 per slice, centred zero pad to a square, bilinear resize (no anti-aliasing) to 512, uint8
PNG; labels by nearest neighbour, ids from the export mapping. Differences from the original, on purpose:
the slice orientation is an explicit, recorded reorientation (``orientation``, default LPS: the radiological
axial view) instead of a silent 90-degree rotation and flip; the sidecar makes predictions invertible to the
original voxel grid and affine; the same slices are also written as a conditional-dataset index (native
in-plane size, one mask PNG per organ present) so real data can feed training. The index leaves out
``volume_nii_path``/``mask_nii_path``: the source volumes usually live outside the dataset folder, where the
index loader refuses paths by default; the sidecar records them instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from tqdm import tqdm

from mrgen.data.index import IndexEntry, save_index
from mrgen.data.modalities import load_registry, modality_key
from mrgen.data.preprocess import min_max
from mrgen.io.images import to_uint8, write_gray
from mrgen.nnunet.chaos import SEQUENCES, chaos_sources
from mrgen.nnunet.env import dataset_dir as make_dataset_dir, raw_root
from mrgen.nnunet.geometry import (
    SliceGeometry,
    ViewTransform,
    describe_volume,
    forward_image,
    forward_labels,
    view_slice,
)
from mrgen.nnunet.labels import ExportLabels
from mrgen.nnunet.promise12 import promise12_sources
from mrgen.nnunet.raw_dataset import FileFormat, SplitFolders, slice_affine, write_dataset_json
from mrgen.nnunet.volumes import (
    Volume,
    VolumeError,
    VolumeSource,
    select_cases,
    sources_from_folder,
    sources_from_jsonl,
    sources_from_msd,
)

log = logging.getLogger(__name__)

Intensity = Literal["slice", "volume", "raw"]
SPLITS = {"train": "Tr", "test": "Ts"}
DEFAULT_REGION = "Upper Abdominal Region"


@dataclass
class RealDataOptions:
    dataset_id: int
    dataset_name: str
    split: Literal["train", "test"] = "test"
    labels: ExportLabels | None = None      # None: the first volume's label names, in order
    file_format: FileFormat = "png"
    size: int | None = 512                  # None: native in-plane size, no padding
    intensity: Intensity = "slice"
    orientation: str = "LPS"                # nibabel axis codes of the view, or "native"
    write_labels: bool = True
    write_index: bool = True
    modality: str | None = None             # overrides the volumes' own modality for the index
    region: str = DEFAULT_REGION
    channel_name: str = "MR"
    overwrite: bool = False

    def validate(self) -> None:
        if self.split not in SPLITS:
            raise VolumeError(f"split must be 'train' or 'test', got {self.split!r}")
        if self.intensity == "raw" and self.file_format == "png":
            raise VolumeError("intensity 'raw' keeps scanner values, which PNG cannot hold; use --format nifti")
        if self.intensity not in ("slice", "volume", "raw"):
            raise VolumeError(f"intensity must be slice, volume or raw, got {self.intensity!r}")
        if self.size is not None and self.size < 8:
            raise VolumeError(f"size must be at least 8 pixels (or 0 for the native size), got {self.size}")
        if self.split == "train" and not self.write_labels:
            raise VolumeError("a training split needs labels")


@dataclass
class ConversionReport:
    dataset_dir: Path
    split: str
    cases: int = 0
    slices: int = 0
    empty_label_slices: int = 0
    organ_slices: Counter = field(default_factory=Counter)
    index_path: Path | None = None


def convert_real_volumes(sources: Sequence[VolumeSource], out_root: Path, options: RealDataOptions) -> ConversionReport:
    """Export every source's slices into ``out_root/DatasetXXX_Name`` for the chosen split."""
    options.validate()
    if not sources:
        raise VolumeError("no volumes to convert")
    dataset_dir = make_dataset_dir(Path(out_root), options.dataset_id, options.dataset_name)
    folders = SplitFolders(dataset_dir, SPLITS[options.split], options.file_format)
    kinds = ("images", "geometry") + (("labels",) if options.write_labels else ()) + (("conditional",) if options.write_index else ())
    report = ConversionReport(dataset_dir, options.split)
    labels = options.labels
    entries: list[IndexEntry] = []
    with folders.written(kinds, options.overwrite):
        for source in tqdm(sources, desc=f"export {options.split} volumes", unit="case"):
            volume = source.load()
            if labels is None:
                labels = ExportLabels(tuple(volume.label_names), f"labels of {source.describe}")
            entries += export_case(volume, folders, options, labels, report)
        write_dataset_json(dataset_dir, labels, options.file_format, options.dataset_name,
                           f"{options.dataset_name}: real volumes sliced by mrgen", options.channel_name,
                           overwrite=options.overwrite)
        if options.write_index:
            report.index_path = folders.folder("conditional") / f"{options.dataset_name}_{options.split}.json"
            save_index(entries, report.index_path)
    log.info("%s: %d cases, %d slices (%d without any label) -> %s; slices per organ: %s", options.split,
             report.cases, report.slices, report.empty_label_slices, dataset_dir, dict(report.organ_slices))
    return report


def export_case(volume: Volume, folders: SplitFolders, options: RealDataOptions, labels: ExportLabels,
                report: ConversionReport) -> list[IndexEntry]:
    transform = ViewTransform.for_volume(volume.affine, volume.image.shape, options.orientation)
    view_image = transform.to_view(volume.image)
    label_map = volume.label_map(labels) if options.write_labels or options.write_index else None
    if options.write_labels and label_map is None:
        raise VolumeError(f"case {volume.case_id}: no label file, but labels were requested (use --no_labels)")
    view_labels = None if label_map is None else transform.to_view(label_map)
    geometry = _geometry(volume, transform, options, labels, folders.file_ending)
    lo, hi = float(volume.image.min()), float(volume.image.max())
    scale = 1.0 if options.size is None else geometry.padded_size / options.size
    top = left = 0
    if geometry.padded_size is not None:
        h, w = geometry.in_plane_shape
        top, left = (geometry.padded_size - h) // 2, (geometry.padded_size - w) // 2
    entries = []
    for k, name in enumerate(geometry.slice_names):
        image2d = _normalise(view_slice(view_image, k), options.intensity, lo, hi)
        affine = slice_affine(transform.view_affine, k, scale, top, left)
        exported = forward_image(image2d, geometry.padded_size is not None, options.size)
        folders.write_image(name, _as_stored(exported, options.file_format), affine)
        labels2d = None if view_labels is None else view_slice(view_labels, k)
        if labels2d is not None and options.write_labels:
            folders.write_label(name, forward_labels(labels2d, geometry.padded_size is not None, options.size), affine)
        _count(labels2d, labels, report)
        if options.write_index:
            entries.append(_index_entry(folders, name, image2d, labels2d, labels, volume, options, geometry, k))
    geometry.save(folders.folder("geometry") / f"{volume.case_id}.json")
    report.cases += 1
    return entries


def _geometry(volume: Volume, transform: ViewTransform, options: RealDataOptions, labels: ExportLabels,
              file_ending: str) -> SliceGeometry:
    described = describe_volume(transform, options.orientation)
    h, w = described["in_plane_shape"]
    return SliceGeometry(
        case_id=volume.case_id,
        **described,
        padded_size=None if options.size is None else max(h, w),
        output_size=options.size,
        slice_names=[f"{volume.case_id}_s{k:03d}" for k in range(described["view_shape"][2])],
        file_ending=file_ending,
        intensity=options.intensity,
        labels=labels.ids,
        source_image=volume.source_image,
        source_label=volume.source_label,
    )


def _normalise(image2d: np.ndarray, intensity: Intensity, lo: float, hi: float) -> np.ndarray:
    if intensity == "slice":
        return min_max(image2d) * 255.0
    if intensity == "volume":
        return np.zeros_like(image2d, np.float32) if hi <= lo else (image2d - lo) / (hi - lo) * 255.0
    return image2d.astype(np.float32)


def _as_stored(image: np.ndarray, file_format: FileFormat) -> np.ndarray:
    if file_format == "png":
        return np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image.astype(np.float32)


def _count(labels2d: np.ndarray | None, labels: ExportLabels, report: ConversionReport) -> None:
    report.slices += 1
    if labels2d is None:
        return
    present = set(np.unique(labels2d).tolist()) - {0}
    if not present:
        report.empty_label_slices += 1
    for organ, organ_id in labels.ids.items():
        if organ_id in present:
            report.organ_slices[organ] += 1


def _index_entry(folders: SplitFolders, name: str, image2d: np.ndarray, labels2d: np.ndarray | None,
                 labels: ExportLabels, volume: Volume, options: RealDataOptions, geometry: SliceGeometry,
                 k: int) -> IndexEntry:
    root = folders.folder("conditional")
    image_path = root / "images" / f"{name}.png"
    write_gray(image_path, to_uint8(image2d))
    masks: list[Path | None] = []
    organs = []
    for i, (organ, organ_id) in enumerate(labels.ids.items()):
        mask = None if labels2d is None else labels2d == organ_id
        if mask is None or not mask.any():
            masks.append(None)
            continue
        masks.append(root / "masks" / f"{name}_mask{i}.png")
        write_gray(masks[-1], mask.astype(np.uint8) * 255)
        organs.append(organ)
    key = modality_key(options.modality or volume.modality or "")
    if not key:
        raise VolumeError(f"case {volume.case_id}: no modality for the conditional index; pass --modality")
    return IndexEntry(
        image_path=image_path,
        mask_paths=masks,
        modality=key,
        modality_attributes=_attributes(key),
        region=options.region,
        label=list(labels.organs),
        organs=organs,
        shape=(int(image2d.shape[0]), int(image2d.shape[1])),
        dataset=volume.dataset or options.dataset_name,
        patient_id=volume.patient_id or volume.case_id,
        slice_index=k,
        spacing=(*geometry.in_plane_spacing_mm, geometry.slice_spacing_mm),
    )


@lru_cache(maxsize=None)
def _attributes(key: str) -> str:
    return load_registry().attributes(key)


@dataclass
class VolumeInputs:
    """Where the volumes come from: exactly one of the five kinds."""

    jsonl: Sequence[Path] = ()
    image_dir: Path | None = None
    label_dir: Path | None = None
    label_names: Sequence[str] = ()
    msd_dir: Path | None = None
    chaos_root: Path | None = None
    promise12_dir: Sequence[Path] = ()
    sequence: str | None = None
    channel: int | None = None
    cases: Sequence[str] = ()
    modality: str | None = None

    def sources(self) -> list[VolumeSource]:
        given = [bool(self.jsonl), self.image_dir is not None, self.msd_dir is not None, self.chaos_root is not None,
                 bool(self.promise12_dir)]
        if sum(given) != 1:
            raise VolumeError("give exactly one input: --jsonl, --image_dir, --msd_dir, --chaos_root or --promise12_dir")
        if self.jsonl:
            sources = sources_from_jsonl(self.jsonl, self.channel)
        elif self.image_dir is not None:
            if not self.label_names:
                raise VolumeError("--image_dir needs --label_names (organ names of label values 1, 2, ...)")
            sources = sources_from_folder(self.image_dir, self.label_dir, self.label_names, self.channel,
                                          self.modality)
        elif self.msd_dir is not None:
            sources = sources_from_msd(self.msd_dir, self.channel, self.modality)
        elif self.promise12_dir:
            sources = promise12_sources(self.promise12_dir, self.modality)
        else:
            if self.sequence is None:
                raise VolumeError(f"--chaos_root needs --sequence ({', '.join(SEQUENCES)})")
            return chaos_sources(self.chaos_root, self.sequence, self.cases or None)
        return select_cases(sources, self.cases)


def prepare_real_data(inputs: VolumeInputs, out_root: Path | None, options: RealDataOptions) -> ConversionReport:
    """Find the volumes and convert them; ``out_root`` defaults to ``$nnUNet_raw``."""
    root = raw_root(out_root)
    return convert_real_volumes(inputs.sources(), root, options)
