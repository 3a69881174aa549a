"""nnU-Net v2 paths, dataset folders, and the settings that make it usable on a 2-core machine.

nnU-Net reads three folders from the environment (``nnUNet_raw``, ``nnUNet_preprocessed``,
``nnUNet_results``) and finds trainers outside its package through ``nnUNet_extTrainer``: in nnunetv2 2.8.1
``recursive_find_trainer_class_by_name`` first searches ``nnunetv2.training.nnUNetTrainer`` and, when the
name is not there, imports every module of each folder listed (``os.pathsep``-separated) in
``nnUNet_extTrainer`` as a top-level module until one defines the class. Our trainer folder is therefore
``mrgen/nnunet/trainers``, whose modules import nothing from ``mrgen``.

Worker counts (feasibility 5.3): ``nnUNet_n_proc_DA=0`` selects the single-threaded augmenter (training
and prediction only, see ``lean_environment``) and ``nnUNet_def_n_proc=1`` keeps fingerprinting and export
pools at one worker (each worker re-imports torch); the CLI flags below do the same for planning and
prediction.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

TRAINER_DIR = Path(__file__).resolve().parent / "trainers"
SHORT_TRAINER = "nnUNetTrainer_MRGenShort"

PLAN_FLAGS = ("-np", "1", "-npfp", "1")
PREDICT_FLAGS = ("-npp", "1", "-nps", "1")
CPU_FLAGS = ("-device", "cpu")

Step = Literal["plan", "train", "predict"]
STEPS = ("plan", "train", "predict")

_DATASET_FOLDER = re.compile(r"^Dataset(\d{3})_(.+)$")


class NnUNetPathError(FileNotFoundError):
    """An nnU-Net folder is not configured or a dataset cannot be found."""


@dataclass(frozen=True)
class NnUNetPaths:
    raw: Path
    preprocessed: Path
    results: Path

    @classmethod
    def under(cls, root: str | os.PathLike) -> "NnUNetPaths":
        """The three folders as ``root/nnUNet_raw`` etc."""
        root = Path(root)
        return cls(root / "nnUNet_raw", root / "nnUNet_preprocessed", root / "nnUNet_results")

    def environment(self) -> dict[str, str]:
        return {"nnUNet_raw": str(self.raw), "nnUNet_preprocessed": str(self.preprocessed),
                "nnUNet_results": str(self.results)}

    def create(self) -> None:
        for folder in (self.raw, self.preprocessed, self.results):
            folder.mkdir(parents=True, exist_ok=True)


def lean_environment(paths: NnUNetPaths, step: Step = "train", base: Mapping[str, str] | None = None,
                     threads: int = 2) -> dict[str, str]:
    """The environment for one nnU-Net CLI step on a small CPU machine, with our trainer folder.

    ``nnUNet_n_proc_DA=0`` (single-threaded augmentation) is set for ``train`` and ``predict`` only: the
    2.8.1 planner passes the same value to ``torch.set_num_threads``, which rejects 0, so ``plan`` gets 1.
    ``base`` defaults to ``os.environ``; an existing ``nnUNet_extTrainer`` is kept after ours.
    """
    if step not in STEPS:
        raise ValueError(f"step must be one of {STEPS}, got {step!r}")
    env = dict(os.environ if base is None else base)
    env.update(paths.environment())
    ext = [str(TRAINER_DIR)] + [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p and p != str(TRAINER_DIR)]
    env.update(
        nnUNet_extTrainer=os.pathsep.join(ext),
        nnUNet_n_proc_DA="1" if step == "plan" else "0",
        nnUNet_def_n_proc="1",
        OMP_NUM_THREADS=str(threads),
        MKL_NUM_THREADS=str(threads),
    )
    return env


def nnunet_cli(name: str) -> str:
    """An nnU-Net console script of this Python's environment, found even when it is not on PATH."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def plan_command(dataset_id: int, configuration: str = "2d") -> list[str]:
    return [nnunet_cli("nnUNetv2_plan_and_preprocess"), "-d", str(dataset_id), "-c", configuration,
            "--verify_dataset_integrity", *PLAN_FLAGS]


def train_command(dataset_id: int, fold: str = "all", configuration: str = "2d",
                  trainer: str = SHORT_TRAINER, plans: str = "nnUNetPlans") -> list[str]:
    return [nnunet_cli("nnUNetv2_train"), str(dataset_id), configuration, fold, "-tr", trainer, "-p", plans, *CPU_FLAGS]


def predict_command(input_dir: Path, output_dir: Path, dataset_id: int, fold: str = "all",
                    configuration: str = "2d", trainer: str = SHORT_TRAINER, plans: str = "nnUNetPlans",
                    checkpoint: str = "checkpoint_final.pth") -> list[str]:
    return [nnunet_cli("nnUNetv2_predict"), "-i", str(input_dir), "-o", str(output_dir), "-d", str(dataset_id),
            "-c", configuration, "-f", fold, "-tr", trainer, "-p", plans, "-chk", checkpoint, "--disable_tta",
            *PREDICT_FLAGS, *CPU_FLAGS]


def raw_root(out: str | os.PathLike | None) -> Path:
    """``out`` if given, else ``$nnUNet_raw``; a clear error when neither is set."""
    if out is not None:
        return Path(out)
    value = os.environ.get("nnUNet_raw")
    if not value:
        raise NnUNetPathError(
            "no output folder: pass --out DIR or set the nnUNet_raw environment variable "
            "(export nnUNet_raw=/path/to/nnUNet_raw; see docs/segmentation.md)"
        )
    return Path(value)


def dataset_folder_name(dataset_id: int | str, name: str) -> str:
    number = int(dataset_id)
    if not 0 < number < 1000:
        raise NnUNetPathError(f"dataset id must be between 1 and 999 (nnU-Net uses 3 digits), got {dataset_id!r}")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name):
        raise NnUNetPathError(f"dataset name {name!r} may only contain letters, digits, '_' and '-'")
    return f"Dataset{number:03d}_{name}"


def dataset_dir(root: Path, dataset_id: int | str, name: str) -> Path:
    """``root/DatasetXXX_Name``; an error if another dataset already uses the same id there."""
    folder = dataset_folder_name(dataset_id, name)
    if root.is_dir():
        for other in root.iterdir():
            match = _DATASET_FOLDER.match(other.name)
            if match and int(match.group(1)) == int(dataset_id) and other.name != folder:
                raise NnUNetPathError(
                    f"{other} already uses dataset id {int(dataset_id):03d}; nnU-Net needs unique ids. "
                    f"Pick another --dataset_id or remove that folder"
                )
    return root / folder


def find_dataset(root: Path, name_or_id: str) -> Path:
    """A dataset folder under ``root`` by full name (``Dataset002_X``) or id (``2``/``002``)."""
    if (root / name_or_id).is_dir():
        return root / name_or_id
    if name_or_id.isdigit():
        matches = sorted(p for p in root.glob(f"Dataset{int(name_or_id):03d}_*") if p.is_dir())
        if len(matches) == 1:
            return matches[0]
    raise NnUNetPathError(f"no dataset {name_or_id!r} under {root}; expected a folder DatasetXXX_Name or its id")
