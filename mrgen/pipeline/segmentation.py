"""nnU-Net experiments on CPU: export a training set, train the short trainer, predict real target test
volumes, evaluate in 3D. Each step is one documented command (Segmentation/*.py and nnU-Net's CLI)."""

from __future__ import annotations

import json
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from mrgen.nnunet.env import NnUNetPaths, dataset_folder_name, lean_environment, plan_command, predict_command, train_command
from mrgen.nnunet.plans import write_lean_plans
from mrgen.pipeline.config import SegmentationSection
from mrgen.pipeline.stages import run_command

REPO = Path(__file__).resolve().parents[2]
SEGMENTATION = REPO / "Segmentation"
LABELS = "CHAOSMR"


def run_name(seed: int, run: str | None) -> str:
    """A training run's results folder name: ``run`` if given, else ``seed<seed>``."""
    return run or f"seed{seed}"


class NnUNetWork:
    """One nnU-Net folder tree (raw, preprocessed, results) under ``root``, with logs in ``root/logs``.

    Each training run has its own results folder, ``nnUNet_results/<run>`` (by default ``seed<seed>``), so one
    dataset, planned once, can be trained with several seeds or budgets side by side.
    """

    def __init__(self, root: Path, settings: SegmentationSection, threads: int = 2):
        self.paths = NnUNetPaths.under(root)
        self.paths.create()
        self.logs = root / "logs"
        self.settings, self.threads = settings, threads

    def env(self, step: str, seed: int = 0, run: str | None = None) -> dict[str, str]:
        """The lean CPU environment plus the short trainer's length and seed (``MRGEN_NNUNET_*``)."""
        trainer = {"MRGEN_NNUNET_EPOCHS": str(self.settings.epochs), "MRGEN_NNUNET_ITERATIONS": str(self.settings.iterations),
                   "MRGEN_NNUNET_VAL_ITERATIONS": str(self.settings.val_iterations), "MRGEN_NNUNET_SEED": str(seed),
                   "MRGEN_NNUNET_BATCH_SIZE": str(self.settings.batch_size),
                   "MRGEN_NNUNET_FINAL_VALIDATION": "0"}
        paths = replace(self.paths, results=self.paths.results / run_name(seed, run))
        return {**lean_environment(paths, step, threads=self.threads), **trainer, "HF_HUB_OFFLINE": "1"}

    def dataset(self, dataset_id: int, name: str) -> Path:
        return self.paths.raw / dataset_folder_name(dataset_id, name)

    def export_synthetic(self, json_files: Sequence[Path], dataset_id: int, name: str) -> Path:
        run_command([sys.executable, str(SEGMENTATION / "prepare_nnunet_data.py"), "--json_file", *map(str, json_files),
                     "--mask2label", LABELS, "--dataset_id", str(dataset_id), "--dataset_name", name,
                     "--out", str(self.paths.raw), "--overwrite"], self.env("plan"), self.logs / f"export_{name}.log")
        return self.dataset(dataset_id, name)

    def export_real(self, jsonl: Sequence[Path], split: str, dataset_id: int, name: str, size: int) -> Path:
        run_command([sys.executable, str(SEGMENTATION / "prepare_real_data.py"), "--jsonl", *map(str, jsonl),
                     "--split", split, "--dataset_id", str(dataset_id), "--dataset_name", name, "--mask2label", LABELS,
                     "--size", str(size), "--out", str(self.paths.raw), "--overwrite"],
                    self.env("plan"), self.logs / f"export_{name}_{split}.log")
        return self.dataset(dataset_id, name)

    def plan(self, dataset_id: int, name: str) -> None:
        """nnU-Net's planning and preprocessing, then the CPU-lean plans beside the stock ones."""
        run_command(plan_command(dataset_id), self.env("plan"), self.logs / f"plan_{name}.log")
        write_lean_plans(self.paths.preprocessed / dataset_folder_name(dataset_id, name))

    def train(self, dataset_id: int, name: str, seed: int = 0, run: str | None = None) -> None:
        """Train a planned dataset; a killed training continues from its latest checkpoint."""
        command = train_command(dataset_id, plans=self.settings.plans)
        results = self.paths.results / run_name(seed, run)
        if any(results.glob(f"{dataset_folder_name(dataset_id, name)}/*/fold_all/checkpoint_latest.pth")):
            command.append("--c")
        run_command(command, self.env("train", seed, run), self.logs / f"train_{name}_{run_name(seed, run)}.log")

    def plan_and_train(self, dataset_id: int, name: str, seed: int = 0) -> None:
        self.plan(dataset_id, name)
        self.train(dataset_id, name, seed)

    def predict(self, images: Path, predictions: Path, dataset_id: int, name: str, seed: int = 0,
                run: str | None = None) -> Path:
        """nnU-Net's prediction of every ``*_0000.png`` in ``images`` by the model ``train`` made."""
        run_command(predict_command(images, predictions, dataset_id, plans=self.settings.plans),
                    self.env("predict", seed, run), self.logs / f"predict_{name}_{run_name(seed, run)}.log")
        return predictions

    def predict_and_evaluate(self, dataset_id: int, name: str, test_dataset: Path, out: Path, seed: int = 0,
                             run: str | None = None) -> dict[str, Any]:
        predictions = self.predict(test_dataset / "imagesTs", out / "predictions", dataset_id, name, seed, run)
        evaluation = out / "evaluation"
        run_command([sys.executable, str(SEGMENTATION / "evaluate_nib.py"), "--nnunet_name", test_dataset.name,
                     "--seg_dir", str(predictions), "--target_dataset", LABELS, "--source_dataset", LABELS,
                     "--out", str(evaluation), "--no_nifti"], {**self.env("predict", seed, run), "nnUNet_raw": str(self.paths.raw)},
                    self.logs / f"evaluate_{name}_{run_name(seed, run)}.log")
        return json.loads((evaluation / "summary.json").read_text())


def organ_table(summaries: dict[str, dict[str, Any]], metric: str = "dice") -> str:
    """Markdown: one row per experiment, one column per organ and the mean (from evaluate_nib summaries, or their
    ``aggregate_seeds``: then each cell is the mean over seeds with the min-max range)."""
    organs = next(iter(summaries.values()))["mean_over"]
    scale = 100.0 if metric == "dice" else 1.0
    lines = ["| training data | " + " | ".join(organs) + " | mean |", "|---" * (len(organs) + 2) + "|"]
    for name, summary in summaries.items():
        spread = summary.get("spread", {})
        cells = [spread_cell(summary["organs"][o][metric], spread.get("organs", {}).get(o, {}).get(metric), scale)
                 for o in organs]
        mean = spread_cell(summary["mean"][metric], spread.get("mean", {}).get(metric), scale)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(lines)


def number_cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def percent_cell(value: float | None, scale: float = 100.0) -> str:
    """A fraction as a percentage with one decimal (``0.623`` -> ``62.3``), ``n/a`` for None."""
    return number_cell(None if value is None else value * scale, ".1f")


def spread_cell(value: float | None, spread: dict[str, float | None] | None, scale: float = 100.0) -> str:
    """``62.3`` or, over several seeds, ``62.3 (60.1-64.5)``: the mean and the min-max range."""
    if value is None or not spread or spread.get("min") is None or spread["min"] == spread["max"]:
        return percent_cell(value, scale)
    return f"{percent_cell(value, scale)} ({percent_cell(spread['min'], scale)}-{percent_cell(spread['max'], scale)})"


def _stats(values: Sequence[float | None]) -> dict[str, float | None]:
    """Mean, standard deviation, min and max over seeds (None where no seed has a value)."""
    present = [float(v) for v in values if v is not None and v == v]
    if not present:
        return {"mean": None, "std": None, "min": None, "max": None}
    return {"mean": statistics.fmean(present), "std": statistics.pstdev(present), "min": min(present), "max": max(present)}


def aggregate_seeds(summaries: Sequence[dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """evaluate_nib summaries of one training set trained with several seeds -> one summary of the same shape
    (``mean``, ``organs``, ``cases`` hold means over seeds) plus ``spread`` (std, min, max over seeds, for the mean
    and per organ) and ``seeds`` (each seed's mean and per-organ figures)."""
    first = summaries[0]
    metrics = list(first["mean"])
    organs = list(first["organs"])
    mean = {m: _stats([s["mean"][m] for s in summaries]) for m in metrics}
    per_organ = {o: {m: _stats([s["organs"][o][m] for s in summaries]) for m in metrics} for o in organs}
    cases = [{"case_id": case["case_id"],
              "organs": {o: {m: _stats([s["cases"][i]["organs"][o][m] for s in summaries])["mean"] for m in metrics}
                         for o in case["organs"]}}
             for i, case in enumerate(first["cases"])]
    return {
        "mean_over": first["mean_over"],
        "mean": {m: v["mean"] for m, v in mean.items()},
        "organs": {o: {m: v["mean"] for m, v in table.items()} for o, table in per_organ.items()},
        "spread": {"mean": mean, "organs": per_organ},
        "cases": cases,
        "seeds": [{"seed": seed, "mean": s["mean"], "organs": {o: s["organs"][o]["dice"] for o in organs}}
                  for seed, s in zip(seeds, summaries)],
    }
