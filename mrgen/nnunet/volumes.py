"""Readers for real 3D volumes with organ labels: one ``VolumeSource`` per case, loaded on demand.

Supported inputs:

- a JSONL volume list, one object per line (the original's SAT style, and our simulated dataset's
  ``volumes_<MOD>_{train,test}.jsonl``): ``image``, ``mask``, ``label`` (organ names), ``modality``,
  ``dataset``, ``patient_id``; relative paths resolve against the JSONL file's folder;
- NIfTI image/label pairs found in folders (``X_image.nii.gz``/``X_label.nii.gz`` side by side, or
  ``imagesTr/X_0000.nii.gz`` + ``labelsTr/X.nii.gz``);
- a folder with an MSD-style ``dataset.json``: the Decathlon tasks (4D images: one channel picked) and AMOS22;
- the CHAOS MR release (DICOM series + PNG ground truth, see ``chaos``).

Label files are either an integer map (value ``i + 1`` is ``label[i]``) or multi-channel binary with the
channels on the last axis (channel ``i`` is ``label[i]``), as the original's SAT-format CHAOS labels are.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import nibabel as nib
import numpy as np

from mrgen.nnunet.labels import ExportLabels

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")


class VolumeError(ValueError):
    """A volume list, file or label is unusable; the message names the file and the fix."""


@dataclass
class Volume:
    case_id: str
    image: np.ndarray                 # 3D, float32
    affine: np.ndarray                # voxel -> RAS+ mm
    label_names: list[str]
    labels: np.ndarray | None         # integer map or (X, Y, Z, C) channels; None if unlabelled
    modality: str | None = None
    dataset: str | None = None
    patient_id: str | None = None
    source_image: str | None = None
    source_label: str | None = None

    def label_map(self, export: ExportLabels) -> np.ndarray | None:
        """The export's label ids (uint8); organs overlap to the larger id, as in the original."""
        if self.labels is None:
            return None
        out = np.zeros(self.image.shape, np.uint8)
        for organ, organ_id in export.ids.items():
            if organ not in self.label_names:
                raise VolumeError(
                    f"case {self.case_id}: organ {organ!r} of the mapping {export.source} is not among the "
                    f"volume's labels {self.label_names}; pass a mapping (--mask2label) that matches them"
                )
            out[self._organ_mask(self.label_names.index(organ))] = organ_id
        return out

    def _organ_mask(self, index: int) -> np.ndarray:
        if self.labels.ndim == 4:
            return self.labels[..., index] > 0.5
        return self.labels == index + 1


@dataclass
class VolumeSource:
    """A case that can be loaded; ``load`` reads the files."""

    case_id: str
    describe: str
    loader: Callable[[], Volume] = field(repr=False)
    patient_id: str | None = None

    def load(self) -> Volume:
        volume = self.loader()
        volume.case_id = self.case_id  # unique_case_ids may have renamed the case after the loader was made
        return volume


def strip_nifti_suffix(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def read_nifti_volume(image_path: Path, label_path: Path | None, case_id: str, label_names: Sequence[str],
                      channel: int | None = None, **meta) -> Volume:
    image_nii = _load_nifti(image_path)
    image = np.asarray(image_nii.dataobj, dtype=np.float32)
    if image.ndim == 4:
        if channel is None:
            raise VolumeError(f"{image_path}: 4D image of shape {image.shape}; pick a channel (--channel N)")
        if not 0 <= channel < image.shape[3]:
            raise VolumeError(f"{image_path}: channel {channel} requested, the image has {image.shape[3]}")
        image = image[..., channel]
    elif image.ndim != 3:
        raise VolumeError(f"{image_path}: expected a 3D (or 4D with --channel) image, got shape {image.shape}")
    labels = None
    if label_path is not None:
        labels = _read_labels(label_path, image.shape, len(label_names))
        _check_affines(image_nii, _load_nifti(label_path), image_path, label_path)
    return Volume(case_id, image, image_nii.affine.astype(float), list(label_names), labels,
                  source_image=str(image_path), source_label=None if label_path is None else str(label_path), **meta)


def _load_nifti(path: Path) -> nib.Nifti1Image:
    if not path.is_file():
        raise VolumeError(f"{path} does not exist")
    try:
        return nib.load(path)
    except Exception as err:  # nibabel raises several unrelated types for unreadable files
        raise VolumeError(f"{path}: not a readable NIfTI file ({err})") from err


def _read_labels(path: Path, image_shape: tuple[int, ...], num_names: int) -> np.ndarray:
    data = np.asarray(_load_nifti(path).dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape[:3] != tuple(image_shape):
        raise VolumeError(f"{path}: label shape {data.shape} does not match the image's {tuple(image_shape)}")
    if data.ndim == 4:
        if data.shape[3] != num_names:
            raise VolumeError(f"{path}: {data.shape[3]} label channels but {num_names} label names")
        return data.astype(np.float32)
    rounded = np.rint(data).astype(np.int32)
    if rounded.min() < 0 or rounded.max() > num_names:
        raise VolumeError(f"{path}: label values {rounded.min()}..{rounded.max()} but only {num_names} label names "
                          f"(value i+1 is label[i]); fix the 'label' list")
    return rounded


def _check_affines(image: nib.Nifti1Image, label: nib.Nifti1Image, image_path: Path, label_path: Path) -> None:
    if not np.allclose(image.affine, label.affine, atol=1e-3):
        log.warning("%s and %s have different affines; the image's is used for both", image_path, label_path)


def sources_from_jsonl(paths: Iterable[str | Path], channel: int | None = None) -> list[VolumeSource]:
    """One source per line of each JSONL volume list."""
    sources: list[VolumeSource] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise VolumeError(f"volume list {path} does not exist")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if line.strip():
                sources.append(_jsonl_source(path, number, line, channel))
    return unique_case_ids(sources)


def _jsonl_source(path: Path, number: int, line: str, channel: int | None) -> VolumeSource:
    where = f"{path}:{number}"
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise VolumeError(f"{where}: not valid JSON ({err})") from err
    for key in ("image", "label"):
        if key not in record:
            raise VolumeError(f"{where}: missing '{key}'; each line needs image, mask, label (organ names)")
    names = record["label"]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    image = _resolve(path.parent, record["image"], where)
    mask = _resolve(path.parent, record["mask"], where) if record.get("mask") else None
    case_id = strip_nifti_suffix(image.name).removesuffix("_image").removesuffix("_0000")
    meta = dict(modality=record.get("modality"), dataset=record.get("dataset"),
                patient_id=None if record.get("patient_id") is None else str(record["patient_id"]))

    def load(case_id: str = case_id) -> Volume:
        return read_nifti_volume(image, mask, case_id, names, channel, **meta)

    return VolumeSource(case_id, where, load, meta["patient_id"])


def _resolve(base: Path, value: str, where: str) -> Path:
    path = Path(value)
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        raise VolumeError(f"{where}: file {path} does not exist")
    return path


def sources_from_folder(image_dir: str | Path, label_dir: str | Path | None, label_names: Sequence[str],
                        channel: int | None = None, modality: str | None = None,
                        dataset: str | None = None) -> list[VolumeSource]:
    """NIfTI pairs: ``X_image``/``X_label`` in one folder, or ``X_0000``/``X`` (or ``X``/``X``) in two."""
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise VolumeError(f"image folder {image_dir} does not exist")
    label_dir = Path(label_dir) if label_dir is not None else None
    sources = []
    for image in sorted(p for p in image_dir.iterdir() if p.name.endswith(NIFTI_SUFFIXES)):
        stem = strip_nifti_suffix(image.name)
        if label_dir is None:
            if not stem.endswith("_image"):
                continue
            case_id = stem.removesuffix("_image")
            label = image_dir / image.name.replace("_image", "_label", 1)
        else:
            case_id = stem.removesuffix("_0000")
            label = label_dir / (case_id + image.name[len(stem):])
        if not label.is_file():
            raise VolumeError(f"{image}: no label file {label}")
        meta = dict(modality=modality, dataset=dataset)

        def load(image=image, label=label, case_id=case_id) -> Volume:
            return read_nifti_volume(image, label, case_id, label_names, channel, **meta)

        sources.append(VolumeSource(case_id, str(image), load))
    if not sources:
        raise VolumeError(f"{image_dir}: no NIfTI images found (expected *_image.nii.gz next to *_label.nii.gz, "
                          f"or images plus --label_dir)")
    return unique_case_ids(sources)


def sources_from_msd(task_dir: str | Path, channel: int | None, modality: str | None = None) -> list[VolumeSource]:
    """The training cases of a folder described by an MSD-style ``dataset.json`` (``labels``, ``training``): the
    Decathlon tasks (4D prostate: pick a ``channel``; 3D liver) and AMOS22, whose release uses the same file;
    label names from its ``labels``."""
    task_dir = Path(task_dir)
    meta_path = task_dir / "dataset.json"
    if not meta_path.is_file():
        raise VolumeError(f"{task_dir}: no dataset.json; is this a Medical Segmentation Decathlon task folder?")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    labels = {int(k): v for k, v in meta.get("labels", {}).items()}
    names = [labels[i] for i in sorted(labels) if i > 0]
    if sorted(i for i in labels if i > 0) != list(range(1, len(names) + 1)):
        raise VolumeError(f"{meta_path}: labels must be numbered 1..K, got {sorted(labels)}")
    sources = []
    for item in meta.get("training", []):
        image = _resolve(task_dir, item["image"], str(meta_path))
        label = _resolve(task_dir, item["label"], str(meta_path))
        case_id = strip_nifti_suffix(image.name) + ("" if channel is None else f"_ch{channel}")

        def load(image=image, label=label, case_id=case_id) -> Volume:
            return read_nifti_volume(image, label, case_id, names, channel, modality=modality,
                                     dataset=meta.get("name"))

        sources.append(VolumeSource(case_id, str(image), load))
    return unique_case_ids(sources)


def unique_case_ids(sources: list[VolumeSource]) -> list[VolumeSource]:
    """Prefix the patient id when file names repeat; an error if the ids are still not unique."""
    ids = [s.case_id for s in sources]
    if len(set(ids)) < len(ids):
        for source in sources:
            if source.patient_id:
                source.case_id = f"{source.patient_id}_{source.case_id}"
        ids = [s.case_id for s in sources]
    seen: dict[str, str] = {}
    for source in sources:
        if source.case_id in seen:
            raise VolumeError(f"case id {source.case_id!r} is used by both {seen[source.case_id]} and "
                              f"{source.describe}; give the files distinct names or patient ids")
        seen[source.case_id] = source.describe
    return sources


def select_cases(sources: list[VolumeSource], wanted: Sequence[str] | None) -> list[VolumeSource]:
    """The sources whose case id or patient id is in ``wanted`` (all when ``wanted`` is empty)."""
    if not wanted:
        return sources
    chosen = [s for s in sources if s.case_id in wanted or (s.patient_id is not None and s.patient_id in wanted)]
    found = {s.case_id for s in chosen} | {s.patient_id for s in chosen}
    missing = [w for w in wanted if w not in found]
    if missing:
        raise VolumeError(f"cases {missing} not found; available: {[s.case_id for s in sources][:20]}")
    return chosen
