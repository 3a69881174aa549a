"""Measures of a synthesis run's candidates that the quality filter has no part in.

- Segmentation fidelity (``mrgen.evaluation.fidelity``): an nnU-Net trained on real target labels segments every
  candidate; per-organ Dice against the condition masks, for accepted and rejected candidates apart, each with
  its shuffled-mask floor; the ceiling is the same model on real held-out target slices with their own labels.
- Realism (``mrgen.evaluation.two_sample``): a classifier two-sample test of accepted and of rejected candidates
  against real target slices; the floor is real target slices of one half of the patients against the other
  half, the ceiling real source against real target slices.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mrgen.data.index import load_index
from mrgen.evaluation.fidelity import fidelity_with_floor, label_masks, organ_dice
from mrgen.evaluation.two_sample import classifier_two_sample_test
from mrgen.io.images import read_gray
from mrgen.pipeline.segmentation import NnUNetWork, number_cell, percent_cell
from mrgen.synthesis import manifest
from mrgen.synthesis.outputs import MERGED_MANIFEST

Slices = tuple[np.ndarray, list[str]]  # (N, H, W) uint8 images and each one's patient


def candidate_records(synthesis_dir: Path) -> list[dict[str, Any]]:
    """Every candidate of a finished synthesis run, with its ``accepted`` decision."""
    return manifest.read(Path(synthesis_dir) / MERGED_MANIFEST)


def organ_labels(dataset: Path) -> dict[str, int]:
    """Organ name -> label value of an nnU-Net raw dataset (background and the ignore label left out)."""
    labels = json.loads((Path(dataset) / "dataset.json").read_text())["labels"]
    return {name: int(value) for name, value in labels.items() if name not in ("background", "ignore")}


def candidate_inputs(records: Sequence[dict[str, Any]], folder: Path) -> Path:
    """Copy the candidates' images into an nnU-Net input folder (``c<number>_0000.png``, in record order)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for number, record in enumerate(records):
        shutil.copyfile(record["image_path"], folder / f"c{number:05d}_0000.png")
    return folder


def read_predictions(folder: Path, count: int) -> list[np.ndarray]:
    return [read_gray(folder / f"c{number:05d}.png") for number in range(count)]


def segmentation_fidelity(records: Sequence[dict[str, Any]], predictions: Sequence[np.ndarray],
                          labels: dict[str, int], seed: int = 0) -> dict[str, Any]:
    """Fidelity (own masks and floor) of the accepted and of the rejected candidates."""
    result: dict[str, Any] = {}
    for subset, keep in (("accepted", True), ("rejected", False)):
        chosen = [(r, p) for r, p in zip(records, predictions) if bool(r.get("accepted")) == keep]
        if not chosen:
            result[subset] = None
            continue
        names = list(chosen[0][0]["label"])
        masks = [manifest.condition_masks(r) for r, _ in chosen]
        result[subset] = fidelity_with_floor([p for _, p in chosen], masks, [labels[n] for n in names], names, seed)
    return result


def real_fidelity_ceiling(test_dataset: Path, predictions: Path, labels: dict[str, int]) -> dict[str, Any]:
    """The segmenter on real held-out target slices against their own labels (nnU-Net's test-set layout)."""
    names, values = list(labels), list(labels.values())
    label_files = sorted((Path(test_dataset) / "labelsTs").glob("*.png"))
    if not label_files:
        raise FileNotFoundError(f"{test_dataset}/labelsTs holds no PNG label slices")
    masks = [label_masks(read_gray(path), values) for path in label_files]
    predicted = [read_gray(Path(predictions) / path.name) for path in label_files]
    return organ_dice(predicted, masks, values, names)


def real_slices(index_path: Path) -> Slices:
    entries = load_index(index_path)
    return np.stack([read_gray(e.image_path) for e in entries]), [str(e.patient_id) for e in entries]


def candidate_slices(records: Sequence[dict[str, Any]]) -> Slices:
    if not records:
        return np.zeros((0, 1, 1), np.uint8), []
    return (np.stack([read_gray(r["image_path"]) for r in records]),
            [str(r["source"]["patient_id"]) for r in records])


def realism(records: Sequence[dict[str, Any]], real_target: Slices, seed: int = 0) -> dict[str, Any]:
    """Classifier two-sample AUC of the accepted and of the rejected candidates against real target slices."""
    result = {}
    for subset, keep in (("accepted", True), ("rejected", False)):
        chosen = [r for r in records if bool(r.get("accepted")) == keep]
        images, groups = candidate_slices(chosen)
        result[subset] = classifier_two_sample_test(images, real_target[0], groups, real_target[1], seed=seed).as_dict()
    return result


def realism_references(real_source: Slices, real_target: Slices, seed: int = 0) -> dict[str, Any]:
    """The two-sample test's floor (real target, half the patients against the other half) and ceiling (real
    source against real target)."""
    images, groups = real_target
    patients = sorted(set(groups))
    first_half = set(patients[::2])
    in_first = np.array([g in first_half for g in groups])
    floor = classifier_two_sample_test(images[in_first], images[~in_first], [g for g, f in zip(groups, in_first) if f],
                                       [g for g, f in zip(groups, in_first) if not f], seed=seed)
    ceiling = classifier_two_sample_test(real_source[0], images, real_source[1], groups, seed=seed)
    return {"floor": floor.as_dict(), "ceiling": ceiling.as_dict()}


@dataclass(frozen=True)
class ReferenceSegmenter:
    """An nnU-Net trained on real target labels (dataset ``dataset_id``/``name`` of ``work``, seed ``seed``) and its
    predictions of the real held-out test dataset."""

    work: NnUNetWork
    dataset_id: int
    name: str
    seed: int
    test_dataset: Path
    test_predictions: Path


def measure_synthesis_runs(runs: dict[str, Path], data: Path, source: str, target: str,
                           reference: ReferenceSegmenter | None, out: Path, seed: int = 0) -> dict[str, Any]:
    """Fidelity (when a reference segmenter is given) and realism of every synthesis run in ``runs`` (name ->
    its log folder), with the references; ``data`` is the simulated dataset (its ``Phantom_<modality>_train.json``
    give the real slices), ``out`` a work folder for the segmenter's inputs and predictions."""
    if not runs:
        return {"references": {}, "runs": {}}
    real_target = real_slices(data / f"Phantom_{target}_train.json")
    references: dict[str, Any] = {"realism": realism_references(real_slices(data / f"Phantom_{source}_train.json"),
                                                                real_target, seed)}
    labels = None
    if reference is not None:
        labels = organ_labels(reference.work.dataset(reference.dataset_id, reference.name))
        references["fidelity"] = real_fidelity_ceiling(reference.test_dataset, reference.test_predictions, labels)
    measured = {}
    for name, folder in runs.items():
        records = candidate_records(folder)
        accepted = sum(bool(r.get("accepted")) for r in records)
        measured[name] = {"candidates": {"accepted": accepted, "rejected": len(records) - accepted},
                          "realism": realism(records, real_target, seed)}
        if reference is not None and records:
            inputs = candidate_inputs(records, out / name / "images")
            predictions = reference.work.predict(inputs, out / name / "predictions", reference.dataset_id,
                                                 reference.name, reference.seed)
            measured[name]["fidelity"] = segmentation_fidelity(records, read_predictions(predictions, len(records)),
                                                               labels, seed)
    return {"references": references, "runs": measured}


def measures_table(measures: dict[str, Any], titles: dict[str, str] | None = None) -> str:
    """Markdown: segmentation fidelity (2D Dice %, per organ, own condition masks / shuffled-mask floor) and realism
    (classifier two-sample AUC) of each run's accepted and rejected candidates, with the references."""
    references, runs = measures.get("references", {}), measures.get("runs", {})
    fidelity_ref = references.get("fidelity") or {}
    organs = [o for o in fidelity_ref if o != "all"] + ["all"]
    lines = ["Independent measures of the synthetic data. Fidelity: an nnU-Net trained on real target labels segments "
             "each candidate; 2D Dice (%) against its condition masks / against another candidate's masks (floor). "
             "Realism: ROC AUC of a small CNN telling the candidates from real target slices (0.5: indistinguishable).",
             "", "| candidates | n | " + " | ".join(f"fidelity {o}" for o in organs) + " | realism AUC |",
             "|---" * (3 + len(organs)) + "|"]
    for name, run in runs.items():
        for subset in ("accepted", "rejected"):
            fidelity = (run.get("fidelity") or {}).get(subset)
            lines.append(f"| {(titles or {}).get(name, name)}: {subset} | {run['candidates'][subset]} | "
                         + " | ".join(_fidelity_cell(fidelity, o) for o in organs)
                         + f" | {number_cell(run['realism'][subset]['auc'], '.2f')} |")
    if fidelity_ref:
        cells = [percent_cell(fidelity_ref.get(o, {}).get("dice")) for o in organs]
        lines.append("| real target slices with their own labels (fidelity ceiling) | | " + " | ".join(cells) + " | |")
    realism_ref = references.get("realism", {})
    lines.append("| realism references: real target vs real target (floor) / real source vs real target (ceiling) | | "
                 + " | ".join("" for _ in organs) + f" | {number_cell(realism_ref.get('floor', {}).get('auc'), '.2f')} / "
                 f"{number_cell(realism_ref.get('ceiling', {}).get('auc'), '.2f')} |")
    return "\n".join(lines)


def _fidelity_cell(fidelity: dict[str, Any] | None, organ: str) -> str:
    if not fidelity or organ not in fidelity["own"]:
        return "n/a"
    own, floor = fidelity["own"][organ]["dice"], fidelity["floor"].get(organ, {}).get("dice")
    return f"{percent_cell(own)} / {percent_cell(floor)}"

