"""Writing the simulated dataset: NIfTI volumes, PNG slices and masks, conditional indexes, volume lists, the
image-text index, the dataset card and the preview picture."""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from tqdm import tqdm

from mrgen import viz
from mrgen.data.index import IndexEntry, save_index
from mrgen.data.modalities import load_registry
from mrgen.data.phantom.anatomy import ORGANS
from mrgen.data.phantom.cases import PhantomCase, simulate_case, split_cases
from mrgen.data.phantom.geometry import DEFAULT_SIZE, DEFAULT_SLICES, Geometry
from mrgen.data.phantom.physics import FAT_T1_MS, FAT_T2_MS, SEQUENCES, TISSUES, Tissue
from mrgen.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from mrgen.io.images import write_gray

log = logging.getLogger(__name__)

DATASET_NAME = "Phantom_MRI"
REGION = "Upper Abdominal Region"
MODALITY_KEYS: dict[str, str] = {
    "T1-InPhase": "T1 in-phase Abdomen MRI",
    "T1-OutPhase": "T1 out-of-phase Abdomen MRI",
    "T2-SPIR": "T2 SPIR Abdomen MRI",
    "T1": "T1 Abdomen MRI",
    "T2": "T2 Abdomen MRI",
}
AUX_MODALITY: dict[str, str] = {name: key.removesuffix(" Abdomen MRI") for name, key in MODALITY_KEYS.items()}
DEFAULT_MODALITIES: tuple[str, ...] = ("T1-InPhase", "T1-OutPhase", "T2-SPIR")
DISPLAY_PERCENTILE = 99.5
PREVIEW_SLICE_FRACTIONS = (0.2, 0.4, 0.6, 0.8)


def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz file's bytes with a zero gzip timestamp, so equal data give equal bytes."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def display_uint8(volume: np.ndarray) -> np.ndarray:
    """Per-volume robust scaling: 0 .. the 99.5th percentile -> 0 .. 255."""
    high = float(np.percentile(volume, DISPLAY_PERCENTILE))
    if high <= 0:
        return np.zeros(volume.shape, np.uint8)
    return np.round(np.clip(volume / high, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass
class CaseFiles:
    case_id: str
    modality: str
    split: str
    geometry: Geometry
    image_nii: Path
    label_nii: Path
    slice_images: list[Path] = field(default_factory=list)
    slice_masks: list[list[Path]] = field(default_factory=list)
    slice_organs: list[list[str]] = field(default_factory=list)


def write_case(out: Path, case: PhantomCase, split: str) -> CaseFiles:
    geometry = case.anatomy.geometry
    volume_dir = out / "volumes" / case.modality
    files = CaseFiles(case.case_id, case.modality, split, geometry,
                      volume_dir / f"{case.case_id}_image.nii.gz", volume_dir / f"{case.case_id}_label.nii.gz")
    affine = geometry.affine()
    atomic_write_bytes(files.image_nii, nifti_gz_bytes(case.image, affine))
    atomic_write_bytes(files.label_nii, nifti_gz_bytes(case.labels, affine))
    pixels = display_uint8(case.image)
    slice_dir = out / "slices" / case.modality / case.case_id
    for k in range(geometry.slices):
        stem = slice_dir / f"{case.case_id}_s{k:03d}"
        write_gray(stem.with_name(stem.name + ".png"), np.ascontiguousarray(pixels[:, :, k].T))
        label_slice = case.labels[:, :, k].T
        masks = []
        for i in range(len(ORGANS)):
            mask_path = stem.with_name(f"{stem.name}_mask{i}.png")
            write_gray(mask_path, np.where(label_slice == i + 1, 255, 0).astype(np.uint8))
            masks.append(mask_path)
        files.slice_images.append(stem.with_name(stem.name + ".png"))
        files.slice_masks.append(masks)
        files.slice_organs.append([name for i, name in enumerate(ORGANS) if (label_slice == i + 1).any()])
    return files


def _index_entries(files: CaseFiles, attributes: str) -> list[IndexEntry]:
    size = files.geometry.size
    return [
        IndexEntry(
            image_path=image, mask_paths=list(masks), modality=MODALITY_KEYS[files.modality],
            modality_attributes=attributes, region=REGION, label=list(ORGANS), organs=organs, shape=(size, size),
            dataset=DATASET_NAME, patient_id=files.case_id, slice_index=k, spacing=tuple(files.geometry.spacing()),
            volume_nii_path=files.image_nii, mask_nii_path=files.label_nii,
        )
        for k, (image, masks, organs) in enumerate(zip(files.slice_images, files.slice_masks, files.slice_organs))
    ]


def _image_text_entries(files: CaseFiles, out: Path) -> list[dict]:
    return [
        {
            "image_path": image.relative_to(out).as_posix(),
            "image_modality": "MRI",
            "aux_modality": AUX_MODALITY[files.modality],
            "region": REGION,
            "organs": ", ".join(organs),
            "patient_id": files.case_id,
        }
        for image, organs in zip(files.slice_images, files.slice_organs)
    ]


def _volume_record(files: CaseFiles, out: Path) -> dict:
    return {
        "image": files.image_nii.relative_to(out).as_posix(),
        "mask": files.label_nii.relative_to(out).as_posix(),
        "label": list(ORGANS),
        "modality": MODALITY_KEYS[files.modality],
        "dataset": DATASET_NAME,
        "patient_id": files.case_id,
        "spacing": files.geometry.spacing(),
    }


def _write_jsonl(path: Path, records: Sequence[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records))


def _preview_row(case: PhantomCase) -> list[np.ndarray]:
    pixels = display_uint8(case.image)
    row = []
    for fraction in PREVIEW_SLICE_FRACTIONS:
        k = min(case.image.shape[2] - 1, int(round(fraction * (case.image.shape[2] - 1))))
        image = np.ascontiguousarray(pixels[:, :, k].T)
        row += [image, viz.overlay(image, case.labels[:, :, k].T)]
    return row


def _dataset_card(seed: int, size: int, slices: int, modalities: Sequence[str], cases: int,
                  all_files: dict[str, list[CaseFiles]]) -> str:
    lines = [
        "# Phantom_MRI: simulated abdominal MRI",
        "",
        "Procedural upper-abdominal volumes with random anatomy per case, rendered through MR signal equations by",
        "`mrgen.data.phantom` (see that module's docstring for the geometry convention). No patient data.",
        "",
        f"- seed: {seed}",
        f"- cases per modality: {cases} (each modality has its own, unpaired, anatomy)",
        f"- in-plane size: {size} x {size} px; slices per volume: {slices}",
        "- field of view 360-400 mm (per case), slice stack covering 175-195 mm (slice thickness = coverage / slices)",
        "- modalities: " + ", ".join(f"{m} (`{MODALITY_KEYS[m]}`)" for m in modalities),
        "",
        "## Labels",
        "",
        "| id | organ |",
        "|---|---|",
        "| 0 | background |",
        *[f"| {i + 1} | {name} |" for i, name in enumerate(ORGANS)],
        "",
        "Mask file `_mask<i>.png` holds label id i + 1 (0/255).",
        "",
        "## Tissues (1.5 T, before the per-case jitter of T1/T2/T2* +-8 %, PD +-3 %; bile T1 800-3000 ms per case)",
        "",
        "| tissue | water T1 ms | water T2 ms | T2* ms | PD | fat fraction |",
        "|---|---|---|---|---|---|",
        *[f"| {t.name.lower()} | {p.t1:g} | {p.t2:g} | {p.t2star:g} | {p.pd:g} | "
          f"{'0-0.15 per case' if t is Tissue.LIVER else f'{p.fat_fraction:g}'} |" for t, p in TISSUES.items()],
        "",
        f"Fat component: T1 {FAT_T1_MS:g} ms, apparent T2 {FAT_T2_MS:g} ms. Flowing blood is scaled by 0.03-0.1 on spin",
        "echo (flow void) and 0.3-0.8 on gradient echo.",
        "",
        "## Sequences",
        "",
        "| modality | sequence | TR ms | TE ms | flip | fat |",
        "|---|---|---|---|---|---|",
        *[f"| {m} | {s.description} | {s.tr_ms:g} | {s.te_ms:g} | {s.flip_deg:g} | "
          f"{'suppressed to 2-6 %' if s.fat_suppressed else ('opposed phase' if s.fat_phase else 'in phase')} |"
          for m, s in SEQUENCES.items() if m in modalities],
        "",
        "Signal: spoiled GRE PD sin(a)(1-E1)/(1-cos(a)E1) exp(-TE/T2*); (T)SE PD (1-exp(-TR/T1)) exp(-TE/T2); water",
        "and fat separately, W + F exp(i phi), averaged in complex form over a 2x supersampled grid, then Gaussian",
        "partial-volume blur, a smooth multiplicative bias field, and Rician noise (SNR 14-30 per case).",
        "",
        "## Files",
        "",
        "```",
        "volumes/<MOD>/<case_id>_image.nii.gz      float32 magnitude image, data (W, H, D), axis codes L, P, S",
        "volumes/<MOD>/<case_id>_label.nii.gz      uint8 label map, same affine",
        "slices/<MOD>/<case_id>/<case_id>_s<kkk>.png          uint8 slice (0..99.5th percentile of the volume)",
        "slices/<MOD>/<case_id>/<case_id>_s<kkk>_mask<i>.png  0/255 organ mask, i = label id - 1",
        "Phantom_<MOD>_{train,test,all}.json     conditional dataset index (paths relative to this folder)",
        "image_text_{train,test}.json            image-text index (Radiopaedia schema), all modalities",
        "volumes_<MOD>_{train,test}.jsonl        one volume per line (image, mask, label, modality, ...)",
        "phantom.json                            machine-readable summary; preview.png: a look at each modality",
        "```",
        "",
        "## Split (by case)",
        "",
        *[f"- {m}: test = {', '.join(f.case_id for f in all_files[m] if f.split == 'test') or 'none'}" for m in modalities],
        "",
    ]
    return "\n".join(lines)


def _summary(seed: int, size: int, slices: int, modalities: Sequence[str], test_fraction: float,
             all_files: dict[str, list[CaseFiles]]) -> dict:
    return {
        "generator": "mrgen.data.phantom",
        "dataset": DATASET_NAME,
        "seed": seed,
        "size": size,
        "slices": slices,
        "test_fraction": test_fraction,
        "modalities": list(modalities),
        "modality_keys": {m: MODALITY_KEYS[m] for m in modalities},
        "label_names": {str(i + 1): name for i, name in enumerate(ORGANS)},
        "spacing_order": "row_mm, col_mm, slice_mm",
        "cases": {
            m: [{"case_id": f.case_id, "split": f.split, "spacing": f.geometry.spacing(),
                 "fov_mm": round(f.geometry.fov_mm, 2)}
                for f in all_files[m]]
            for m in modalities
        },
    }


def _check_arguments(cases: int, seed: int, size: int, modalities: Sequence[str], slices: int,
                     test_fraction: float) -> None:
    unknown = [m for m in modalities if m not in SEQUENCES]
    if unknown:
        raise ValueError(f"unknown phantom modalities {unknown}; choose from {', '.join(SEQUENCES)}")
    if not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be a non-empty list without repeats, got {list(modalities)}")
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    if slices < 4:
        raise ValueError(f"slices must be at least 4, got {slices}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    registry = load_registry()
    missing = [MODALITY_KEYS[m] for m in modalities if MODALITY_KEYS[m] not in registry]
    if missing:
        raise ValueError(f"modality keys {missing} are not in the registry {registry.source}")


def generate_phantom_dataset(
    out: str | Path,
    cases: int = 4,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    slices: int = DEFAULT_SLICES,
    test_fraction: float = 0.25,
) -> Path:
    """Write the simulated dataset under ``out`` (layout in the module's README card); return ``out``."""
    out = Path(out)
    modalities = list(modalities)
    _check_arguments(cases, seed, size, modalities, slices, test_fraction)
    registry = load_registry()
    all_files: dict[str, list[CaseFiles]] = {m: [] for m in modalities}
    preview_rows = []
    image_text: dict[str, list[dict]] = {"train": [], "test": []}
    log.info("phantom: %d case(s) x %d modalities, %d px, %d slices -> %s", cases, len(modalities), size, slices, out)
    with tqdm(total=cases * len(modalities), desc="phantom cases", unit="case") as bar:
        for modality in modalities:
            splits = split_cases(seed, modality, cases, test_fraction)
            for index in range(cases):
                case = simulate_case(seed, modality, index, size, slices)
                files = write_case(out, case, splits[index])
                all_files[modality].append(files)
                image_text[files.split] += _image_text_entries(files, out)
                if index == 0:
                    preview_rows.append(_preview_row(case))
                bar.update(1)
    for modality in modalities:
        attributes = registry.attributes(MODALITY_KEYS[modality])
        by_split = {s: [e for f in all_files[modality] if f.split == s for e in _index_entries(f, attributes)]
                    for s in ("train", "test")}
        save_index(by_split["train"], out / f"Phantom_{modality}_train.json")
        save_index(by_split["test"], out / f"Phantom_{modality}_test.json")
        save_index([e for f in all_files[modality] for e in _index_entries(f, attributes)],
                   out / f"Phantom_{modality}_all.json")
        for split in ("train", "test"):
            _write_jsonl(out / f"volumes_{modality}_{split}.jsonl",
                         [_volume_record(f, out) for f in all_files[modality] if f.split == split])
    atomic_write_json(out / "image_text_train.json", image_text["train"])
    atomic_write_json(out / "image_text_test.json", image_text["test"])
    atomic_write_json(out / "phantom.json", _summary(seed, size, slices, modalities, test_fraction, all_files))
    atomic_write_text(out / "README.md", _dataset_card(seed, size, slices, modalities, cases, all_files))
    titles = [t for f in PREVIEW_SLICE_FRACTIONS for t in (f"{int(f * 100)}% up", "+ labels")]
    viz.save_grid(preview_rows, out / "preview.png", titles=titles, row_labels=modalities)
    log.info("phantom dataset written to %s", out)
    return out
