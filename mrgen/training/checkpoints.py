"""Checkpoint folders that are complete or absent, never half-written.

A checkpoint is written into ``checkpoints/.tmp-checkpoint-<step>`` and renamed to
``checkpoints/checkpoint-<step>`` only once every file is in place; the rename is atomic, so a run
killed mid-save leaves at most a ``.tmp-`` folder, which ``latest`` never picks and the next start
removes. Old checkpoints are renamed to ``.trash-`` before deletion for the same reason.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import yaml

from mrgen.config import flatten

log = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TEMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
LATEST = "latest"


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step}"


def list_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def checkpoint_step(path: str | os.PathLike) -> int:
    match = CHECKPOINT_PATTERN.match(Path(path).name)
    if not match:
        raise ValueError(f"{path} is not a checkpoint-<step> folder")
    return int(match.group(1))


class ResumeError(ValueError):
    """``--resume`` names no checkpoint, or one made with settings the restored state would silently override."""


def resolve_resume(resume: str | None, root: str | os.PathLike) -> Path | None:
    """``latest`` -> the newest complete checkpoint (None if there is none yet); a path -> that folder. Without
    ``resume``, a folder that already holds checkpoints is refused: a new run there would mix its checkpoints with
    the earlier run's."""
    if not resume:
        found = list_checkpoints(root)
        if found:
            raise ResumeError(f"{Path(root).parent} holds the checkpoints of an earlier run (newest: {found[-1].name}): "
                              f"continue it with --resume latest, or train into another output_dir")
        return None
    if resume == LATEST:
        found = list_checkpoints(root)
        return found[-1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise ResumeError(f"--resume {resume}: no such checkpoint folder (use --resume latest for the newest "
                                f"one under {root})")
    return path


CONFIG_FILE = "config.yaml"  # the training config a checkpoint was made with
# settings a resumed run may change: they decide how often things happen and where, not what is learned
# (max_train_steps: the schedule is rebuilt from the config and only its step count is restored)
CHANGEABLE_ON_RESUME = {"name", "output_dir", "train.max_train_steps", "train.checkpointing_steps",
                        "train.checkpoints_total_limit", "train.validation_steps", "train.log_every_steps",
                        "train.dataloader_num_workers", "train.num_threads"}


def check_resume_config(checkpoint: Path, config: Mapping[str, Any]) -> None:
    """Refuse to resume ``checkpoint`` with a config that differs from its own outside ``CHANGEABLE_ON_RESUME``
    and ``validation.*``: the restored optimizer, scheduler and data order would silently keep the old values."""
    saved_path = Path(checkpoint) / CONFIG_FILE
    if not saved_path.is_file():
        log.warning("%s holds no %s (an older checkpoint): cannot check that the config is unchanged", checkpoint,
                    CONFIG_FILE)
        return
    saved = flatten(yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {})
    current = flatten(yaml.safe_load(yaml.safe_dump(dict(config))))  # the same YAML round trip (tuples -> lists)
    changed = sorted(k for k in saved.keys() | current.keys() if saved.get(k) != current.get(k)
                     and k not in CHANGEABLE_ON_RESUME and not k.startswith("validation."))
    if changed:
        differences = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in changed)
        raise ResumeError(
            f"--resume {checkpoint}: the config differs from the checkpoint's in settings its restored state would "
            f"override ({differences}). Put those settings back, or train into a new output_dir without --resume")


def _rng_state_globals() -> list[Any]:
    """What a NumPy RNG state (in accelerate's random_states_*.pkl) needs beyond tensors and plain data."""
    import numpy as np

    reconstruct = np.zeros(1).__reduce__()[0]  # how NumPy pickles an array (numpy._core.multiarray._reconstruct)
    return [reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def check_safe_to_unpickle(checkpoint: Path) -> None:
    """accelerate's ``load_state`` unpickles ``*.pkl``/``*.bin`` with ``weights_only=False``, so a checkpoint folder from
    elsewhere could run code. Each file must first load with ``weights_only=True`` (tensors, plain data and NumPy
    RNG arrays only); then the unrestricted load that follows can build nothing else."""
    for path in sorted(Path(checkpoint).glob("*.pkl")) + sorted(Path(checkpoint).glob("*.bin")):
        try:
            with torch.serialization.safe_globals(_rng_state_globals()):
                torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises UnpicklingError, RuntimeError, ... for what it will not load
            raise ResumeError(f"--resume: {path} holds more than tensors and plain data ({str(err)[:200]}); refusing "
                              f"to unpickle it, since it could run code. Resume only from checkpoints you made") from None


def remove_incomplete(root: str | os.PathLike) -> None:
    """Delete what killed saves and rotations left behind."""
    root = Path(root)
    if not root.is_dir():
        return
    for path in root.iterdir():
        if path.name.startswith((TEMP_PREFIX, TRASH_PREFIX)):
            log.info("removing incomplete checkpoint folder %s", path)
            shutil.rmtree(path, ignore_errors=True)


def temp_dir_for(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"{TEMP_PREFIX}{checkpoint_name(step)}"


def commit(temp: Path, step: int) -> Path:
    """Rename a fully written ``temp`` folder into place (replacing a stale one of the same step)."""
    final = temp.parent / checkpoint_name(step)
    if final.exists():
        _discard(final)
    os.replace(temp, final)
    return final


def rotate(root: str | os.PathLike, keep: int | None) -> None:
    """Keep the ``keep`` newest complete checkpoints."""
    if keep is None:
        return
    found = list_checkpoints(root)
    for old in found[: max(0, len(found) - keep)]:
        log.info("removing old checkpoint %s (checkpoints_total_limit %d)", old, keep)
        _discard(old)


def _discard(path: Path) -> None:
    trash = path.parent / f"{TRASH_PREFIX}{path.name}"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def write_folder_atomically(destination: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Run ``write(tmp_folder)`` and rename the result onto ``destination`` (replacing it)."""
    destination = Path(destination)
    temp = destination.parent / f"{TEMP_PREFIX}{destination.name}"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    write(temp)
    if destination.exists():
        _discard(destination)
    os.replace(temp, destination)
