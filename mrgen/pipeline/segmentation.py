"""nnU-Net experiments on CPU: export a training set, train the short trainer, predict real target test
volumes, evaluate in 3D. Each step is one documented command (Segmentation/*.py and nnU-Net's CLI)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence

from mrgen.nnunet.env import NnUNetPaths, dataset_folder_name, lean_environment, plan_command, predict_command, train_command
from mrgen.pipeline.config import SegmentationSection
from mrgen.pipeline.stages import run_command

REPO = Path(__file__).resolve().parents[2]
SEGMENTATION = REPO / "Segmentation"
LABELS = "CHAOSMR"


class NnUNetWork:
    """One nnU-Net folder tree (raw, preprocessed, results) under ``root``, with logs in ``root/logs``."""

    def __init__(self, root: Path, settings: SegmentationSection, seed: int, threads: int = 2):
        self.paths = NnUNetPaths.under(root)
        self.paths.create()
        self.logs = root / "logs"
        self.settings, self.seed, self.threads = settings, seed, threads

    def env(self, step: str) -> dict[str, str]:
        """The lean CPU environment plus the short trainer's length and seed (``MRGEN_NNUNET_*``)."""
        trainer = {"MRGEN_NNUNET_EPOCHS": str(self.settings.epochs), "MRGEN_NNUNET_ITERATIONS": str(self.settings.iterations),
                   "MRGEN_NNUNET_VAL_ITERATIONS": str(self.settings.val_iterations), "MRGEN_NNUNET_SEED": str(self.seed),
                   "MRGEN_NNUNET_BATCH_SIZE": str(self.settings.batch_size),
                   "MRGEN_NNUNET_FINAL_VALIDATION": "0"}
        return {**lean_environment(self.paths, step, threads=self.threads), **trainer, "HF_HUB_OFFLINE": "1"}

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

    def train(self, dataset_id: int, name: str) -> None:
        run_command(plan_command(dataset_id), self.env("plan"), self.logs / f"plan_{name}.log")
        command = train_command(dataset_id)
        if any((self.paths.results).glob(f"{dataset_folder_name(dataset_id, name)}/*/fold_all/checkpoint_latest.pth")):
            command.append("--c")  # a killed training continues
        run_command(command, self.env("train"), self.logs / f"train_{name}.log")

    def predict_and_evaluate(self, dataset_id: int, name: str, test_dataset: Path, out: Path) -> dict[str, Any]:
        predictions = out / "predictions"
        run_command(predict_command(test_dataset / "imagesTs", predictions, dataset_id), self.env("predict"),
                    self.logs / f"predict_{name}.log")
        evaluation = out / "evaluation"
        run_command([sys.executable, str(SEGMENTATION / "evaluate_nib.py"), "--nnunet_name", test_dataset.name,
                     "--seg_dir", str(predictions), "--target_dataset", LABELS, "--source_dataset", LABELS,
                     "--out", str(evaluation), "--no_nifti"], {**self.env("predict"), "nnUNet_raw": str(self.paths.raw)},
                    self.logs / f"evaluate_{name}.log")
        return json.loads((evaluation / "summary.json").read_text())


def organ_table(summaries: dict[str, dict[str, Any]], metric: str = "dice") -> str:
    """Markdown: one row per experiment, one column per organ and the mean (from evaluate_nib summaries)."""
    organs = next(iter(summaries.values()))["mean_over"]
    scale = 100.0 if metric == "dice" else 1.0
    lines = ["| training data | " + " | ".join(organs) + " | mean |", "|---" * (len(organs) + 2) + "|"]
    for name, summary in summaries.items():
        cells = [summary["organs"][o][metric] for o in organs]
        mean = summary["mean"][metric]
        lines.append(f"| {name} | " + " | ".join(_cell(c, scale) for c in cells) + f" | {_cell(mean, scale)} |")
    return "\n".join(lines)


def _cell(value: float | None, scale: float) -> str:
    return "n/a" if value is None else f"{value * scale:.1f}"
