"""Evaluate 2D slice predictions as 3D volumes in each case's original geometry.

For every case with a geometry sidecar (written by ``Segmentation/prepare_real_data.py``): the prediction
slices ``<case>_s<k>`` and the ground-truth slices are read, the resize and pad are undone, the slices are
stacked in their recorded order and reoriented back to the original voxel grid; metrics use that grid's real
spacing (``seg_metrics``). Organs are those of the target (ground-truth) mapping that the source
(prediction) mapping also names; a list of ids is their union (CHAOS "kidney" = right + left). Union organs
are reported but, by default, left out of the mean over organs, which would otherwise count the kidneys
twice. Aggregation: the mean over cases for each organ (NaN cases skipped), then the mean over organs.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from tqdm import tqdm

from mrgen.evaluation.seg_metrics import EmptyPolicy, OrganMetrics, organ_metrics
from mrgen.io.atomic import atomic_save, atomic_write_json, atomic_write_text
from mrgen.nnunet.geometry import GeometryError, SliceGeometry, slices_to_volume, voxel_spacing
from mrgen.nnunet.labels import EvaluationLabels
from mrgen.nnunet.raw_dataset import read_slice

log = logging.getLogger(__name__)

METRICS = ("dice", "hd95", "nsd")
SLICE_NAME = re.compile(r"^(?P<case>.+)_s(?P<index>\d+)$")
ENDINGS = (".nii.gz", ".png")


class EvaluationInputError(ValueError):
    """Predictions, ground truth and sidecars do not fit together; the message names the case and fix."""


@dataclass
class EvaluationOptions:
    tolerance_mm: float = 2.0
    empty_policy: EmptyPolicy = "exclude"
    include_unions_in_mean: bool = False
    write_nifti: bool = True


@dataclass
class CaseResult:
    case_id: str
    spacing_mm: list[float]
    organs: dict[str, OrganMetrics]


@dataclass
class EvaluationSummary:
    organs: dict[str, dict[str, float | int]]
    mean: dict[str, float]
    mean_over: list[str]
    unions: list[str]
    cases: list[CaseResult] = field(repr=False)
    settings: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return _nan_to_none({
            "mean": self.mean, "mean_over": self.mean_over, "unions": self.unions, "organs": self.organs,
            "settings": self.settings,
            "cases": [{"case_id": c.case_id, "spacing_mm": c.spacing_mm,
                       "organs": {o: asdict(m) for o, m in c.organs.items()}} for c in self.cases],
        })


def evaluate_folder(seg_dir: Path, gt_dir: Path, geometry_dir: Path, out_dir: Path, target: EvaluationLabels,
                    source: EvaluationLabels, options: EvaluationOptions,
                    img_dir: Path | None = None) -> EvaluationSummary:
    """Evaluate every case of ``geometry_dir``; write per_case.csv, summary.json and NIfTI volumes.

    ``target`` is the ground truth's label convention, ``source`` the prediction's."""
    geometries = _load_geometries(geometry_dir)
    predictions = _group_slices(seg_dir, "prediction")
    _check_cases(geometries, predictions, seg_dir, geometry_dir)
    organs = _evaluated_organs(target, source)
    results = []
    for case_id, geometry in tqdm(sorted(geometries.items()), desc="evaluate cases", unit="case"):
        pred = _stack(predictions[case_id], geometry, seg_dir, "prediction")
        gt = _stack(_slices_by_name(gt_dir, geometry, "ground truth"), geometry, gt_dir, "ground truth")
        results.append(_evaluate_case(case_id, gt, pred, geometry, organs, options))
        if options.write_nifti:
            _write_volumes(out_dir, geometry, gt, pred, img_dir)
    summary = summarise(results, organs, options, (target.source, source.source))
    write_results(summary, out_dir)
    return summary


def _load_geometries(geometry_dir: Path) -> dict[str, SliceGeometry]:
    if not geometry_dir.is_dir():
        raise EvaluationInputError(f"geometry folder {geometry_dir} does not exist; it is written by "
                                   f"Segmentation/prepare_real_data.py next to imagesTs (geometryTs)")
    geometries = {g.case_id: g for g in map(SliceGeometry.load, sorted(geometry_dir.glob("*.json")))}
    if not geometries:
        raise EvaluationInputError(f"{geometry_dir}: no geometry sidecars (*.json)")
    return geometries


def _group_slices(folder: Path, what: str) -> dict[str, dict[int, Path]]:
    if not folder.is_dir():
        raise EvaluationInputError(f"{what} folder {folder} does not exist")
    cases: dict[str, dict[int, Path]] = defaultdict(dict)
    for path in sorted(folder.iterdir()):
        ending = next((e for e in ENDINGS if path.name.endswith(e)), None)
        match = SLICE_NAME.match(path.name[: -len(ending)]) if ending else None
        if match:
            cases[match["case"]][int(match["index"])] = path
    if not cases:
        raise EvaluationInputError(f"{folder}: no {what} slices named <case>_s<index>.png or .nii.gz")
    return cases


def _check_cases(geometries: dict[str, SliceGeometry], predictions: dict[str, dict[int, Path]],
                 seg_dir: Path, geometry_dir: Path) -> None:
    missing = sorted(set(geometries) - set(predictions))
    if missing:
        raise EvaluationInputError(f"no predictions in {seg_dir} for cases {missing[:10]} listed in {geometry_dir}")
    unknown = sorted(set(predictions) - set(geometries))
    if unknown:
        raise EvaluationInputError(f"predictions in {seg_dir} for cases {unknown[:10]} that have no geometry sidecar "
                                   f"in {geometry_dir}; was --geometry_dir written for this test set?")
    for case_id, geometry in geometries.items():
        found = len(predictions[case_id])
        if found != geometry.num_slices:
            raise EvaluationInputError(f"case {case_id}: {found} prediction slices in {seg_dir}, but the case has "
                                       f"{geometry.num_slices} slices ({geometry_dir / (case_id + '.json')})")


def _slices_by_name(folder: Path, geometry: SliceGeometry, what: str) -> dict[int, Path]:
    if not folder.is_dir():
        raise EvaluationInputError(f"{what} folder {folder} does not exist")
    paths = {k: folder / f"{name}{geometry.file_ending}" for k, name in enumerate(geometry.slice_names)}
    missing = [p.name for p in paths.values() if not p.is_file()]
    if missing:
        present = sum(1 for p in paths.values() if p.is_file())
        raise EvaluationInputError(f"case {geometry.case_id}: {present} {what} slices in {folder}, but the case has "
                                   f"{geometry.num_slices}; missing e.g. {missing[:3]}")
    return paths


def _stack(paths: dict[int, Path], geometry: SliceGeometry, folder: Path, what: str) -> np.ndarray:
    expected = list(range(geometry.num_slices))
    if sorted(paths) != expected:
        raise EvaluationInputError(f"case {geometry.case_id}: {what} slice indices in {folder} are "
                                   f"{sorted(paths)[:5]}..., expected 0..{geometry.num_slices - 1}")
    try:
        return slices_to_volume([read_slice(paths[k]) for k in expected], geometry)
    except GeometryError as err:
        raise EvaluationInputError(f"{what} in {folder}: {err}") from err


def _evaluated_organs(target: EvaluationLabels, source: EvaluationLabels) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """organ -> (ground-truth ids, prediction ids), for organs both mappings name."""
    organs = {organ: (ids, source.ids_by_organ[organ])
              for organ, ids in target.ids_by_organ.items() if organ in source.ids_by_organ}
    if not organs:
        raise EvaluationInputError(f"the target mapping {target.source} and the source mapping {source.source} "
                                   f"share no organ names")
    return organs


def _evaluate_case(case_id: str, gt: np.ndarray, pred: np.ndarray, geometry: SliceGeometry,
                   organs: dict[str, tuple[tuple[int, ...], tuple[int, ...]]], options: EvaluationOptions) -> CaseResult:
    spacing = voxel_spacing(np.asarray(geometry.original_affine)).tolist()
    metrics = {organ: organ_metrics(np.isin(gt, gt_ids), np.isin(pred, pred_ids), spacing, options.tolerance_mm,
                                    options.empty_policy)
               for organ, (gt_ids, pred_ids) in organs.items()}
    return CaseResult(case_id, spacing, metrics)


def summarise(results: Sequence[CaseResult], organs: dict, options: EvaluationOptions,
              mappings: tuple[str, str] = ("", "")) -> EvaluationSummary:
    unions = [organ for organ, (gt_ids, _) in organs.items() if len(gt_ids) > 1]
    mean_over = [organ for organ in organs if options.include_unions_in_mean or organ not in unions]
    per_organ: dict[str, dict[str, float | int]] = {}
    for organ in organs:
        row: dict[str, float | int] = {}
        for metric in METRICS:
            values = [getattr(r.organs[organ], metric) for r in results]
            finite = [v for v in values if not math.isnan(v)]
            row[metric] = float(np.mean(finite)) if finite else math.nan
            row[f"{metric}_cases"] = len(finite)
        per_organ[organ] = row
    mean = {metric: _nanmean([per_organ[o][metric] for o in mean_over]) for metric in METRICS}
    settings = {"nsd_tolerance_mm": options.tolerance_mm, "empty_policy": options.empty_policy,
                "include_unions_in_mean": options.include_unions_in_mean,
                "target_labels": mappings[0], "source_labels": mappings[1]}
    return EvaluationSummary(per_organ, mean, mean_over, unions, list(results), settings)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def write_results(summary: EvaluationSummary, out_dir: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", "organ", *METRICS, "gt_voxels", "pred_voxels"])
    for case in summary.cases:
        for organ, m in case.organs.items():
            writer.writerow([case.case_id, organ, *(_fmt(getattr(m, k)) for k in METRICS), m.gt_voxels, m.pred_voxels])
    atomic_write_text(out_dir / "per_case.csv", buffer.getvalue())
    atomic_write_json(out_dir / "summary.json", summary.to_json())


def format_table(summary: EvaluationSummary) -> str:
    """The per-organ table printed by evaluate_nib.py."""
    lines = [f"{'organ':<16}{'DSC':>8}{'HD95 mm':>10}{'NSD':>8}{'cases':>7}"]
    for organ, row in summary.organs.items():
        tag = " (union, not in mean)" if organ in summary.unions and organ not in summary.mean_over else ""
        lines.append(f"{organ:<16}{row['dice']:>8.4f}{row['hd95']:>10.2f}{row['nsd']:>8.4f}{row['dice_cases']:>7}{tag}")
    m = summary.mean
    lines.append(f"{'mean':<16}{m['dice']:>8.4f}{m['hd95']:>10.2f}{m['nsd']:>8.4f}")
    lines.append(f"NSD tolerance {summary.settings['nsd_tolerance_mm']} mm; empty masks: "
                 f"{summary.settings['empty_policy']}; mean over {', '.join(summary.mean_over)}")
    return "\n".join(lines)


def _write_volumes(out_dir: Path, geometry: SliceGeometry, gt: np.ndarray, pred: np.ndarray,
                   img_dir: Path | None) -> None:
    affine = np.asarray(geometry.original_affine)
    volumes = {"gt": gt.astype(np.uint8), "pred": pred.astype(np.uint8)}
    if img_dir is not None:
        paths = {k: img_dir / f"{n}_0000{geometry.file_ending}" for k, n in enumerate(geometry.slice_names)}
        volumes["image"] = slices_to_volume([read_slice(paths[k]).astype(np.float32) for k in sorted(paths)],
                                            geometry, order=1).astype(np.float32)
    for kind, data in volumes.items():
        image = nib.Nifti1Image(data, affine)
        image.header.set_xyzt_units("mm")
        atomic_save(out_dir / "nifti" / kind / f"{geometry.case_id}.nii.gz", lambda tmp: nib.save(image, tmp))


def _fmt(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6f}"


def _nan_to_none(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_nan_to_none(v) for v in obj]
    return obj


def labels_from_dataset_json(path: Path) -> EvaluationLabels:
    """Single-id organs from an nnU-Net dataset.json (used when no mapping is named)."""
    if not path.is_file():
        raise EvaluationInputError(f"no label mapping given and no dataset.json at {path}; pass "
                                   f"--target_dataset/--source_dataset (e.g. CHAOSMR) or a mapping JSON")
    labels = json.loads(path.read_text(encoding="utf-8"))["labels"]
    return EvaluationLabels({name: (int(i),) for name, i in labels.items()
                            if name not in ("background", "ignore")}, str(path))


@dataclass
class EvaluationPaths:
    """Folders of one evaluation; relative ones also resolve against the nnU-Net dataset folder (as the
    original's ``--gt_dir labelsTs`` under ``nnUNet_raw/<name>``)."""

    seg_dir: Path
    gt_dir: Path | None = None
    img_dir: Path | None = None
    geometry_dir: Path | None = None
    out_dir: Path | None = None
    dataset_dir: Path | None = None

    def resolved(self) -> "EvaluationPaths":
        seg_dir = self._find(self.seg_dir)
        gt_dir = self._find(self.gt_dir) if self.gt_dir else self._default("labelsTs", "--gt_dir")
        base = self.dataset_dir or gt_dir.parent
        geometry_dir = self._find(self.geometry_dir) if self.geometry_dir else base / "geometryTs"
        img_dir = self._find(self.img_dir) if self.img_dir else None
        return EvaluationPaths(seg_dir, gt_dir, img_dir, geometry_dir, self.out_dir or seg_dir / "evaluation", base)

    def _find(self, path: Path) -> Path:
        if path.is_absolute() or path.exists() or self.dataset_dir is None:
            return path
        return self.dataset_dir / path

    def _default(self, name: str, flag: str) -> Path:
        if self.dataset_dir is None:
            raise EvaluationInputError(f"pass {flag} or --nnunet_name (the dataset folder under $nnUNet_raw)")
        return self.dataset_dir / name


def evaluate_dataset(paths: EvaluationPaths, target: EvaluationLabels | None, source: EvaluationLabels | None,
                     options: EvaluationOptions) -> EvaluationSummary:
    """Resolve folders and default mappings (the test dataset's dataset.json), then ``evaluate_folder``."""
    paths = paths.resolved()
    if target is None or source is None:
        default = labels_from_dataset_json(paths.dataset_dir / "dataset.json")
        target, source = target or default, source or default
    log.info("evaluating %s against %s (sidecars %s) -> %s", paths.seg_dir, paths.gt_dir, paths.geometry_dir,
             paths.out_dir)
    return evaluate_folder(paths.seg_dir, paths.gt_dir, paths.geometry_dir, paths.out_dir, target, source, options,
                           paths.img_dir)
