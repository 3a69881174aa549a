"""Before the parts of a synthesis run are merged: did every part finish, and were they all made by one run?

A run split over cluster jobs (``--num_parts N --part_id K``) leaves one ``.done`` marker per finished part (the
settings it ran with) and one manifest per part and worker process. Merging a run with a part missing, or with a part made with another
``--num_parts`` or other sampling settings, would give a dataset that silently differs from a single run's; this is
refused with every problem named.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mrgen.synthesis import manifest
from mrgen.synthesis.outputs import RunLayout
from mrgen.synthesis.seeds import candidate_seed

PART_FILE = re.compile(r"part-(\d+)-of-(\d+)(?:-rank-\d+)?\.(jsonl|done)$")
# what every candidate must share with run_config.json
SAMPLING_KEYS = ("modality", "scheduler", "steps", "guidance_scale", "controlnet_scale", "control_conditional_only",
                 "checkpoint_sha256")
# run_config.json keys that may differ between parts: paths and process counts per machine, and what only the
# selection at the merge uses
MAY_DIFFER = {"part_id", "processes", "num_gpus", "log_dir", "ckpt", "controlnet", "thresholds", "selection",
              "top_k", "relax", "keep_relaxed", "sample_per_mask"}
MAX_LISTED = 10


class PartsError(ValueError):
    """The recorded parts cannot be merged; the message lists why and what to do."""


def check_parts(layout: RunLayout, run_config: dict[str, Any]) -> None:
    parts = run_config["num_parts"]
    problems = _foreign_files(layout.manifest_dir, parts) + _missing_parts(layout, parts)
    problems += _setting_problems(layout, run_config) + _record_problems(layout.manifest_dir, run_config)
    if problems:
        listed = problems[:MAX_LISTED] + ([f"... and {len(problems) - MAX_LISTED} more"] if len(problems) > MAX_LISTED else [])
        raise PartsError(f"{layout.root}: cannot merge the parts of this run:\n  - " + "\n  - ".join(listed))


def _foreign_files(folder: Path, parts: int) -> list[str]:
    problems = []
    for path in sorted(folder.glob("part-*")):
        match = PART_FILE.match(path.name)
        if match and int(match.group(2)) != parts:
            problems.append(f"{path} was written with --num_parts {int(match.group(2))}, this run has {parts}: "
                            f"it belongs to another run; remove it, or merge into a new --log_dir")
    return problems


def _missing_parts(layout: RunLayout, parts: int) -> list[str]:
    missing = [k for k in range(parts) if not layout.part_done(k, parts).is_file()]
    if not missing:
        return []
    listed = ", ".join(str(k) for k in missing)
    return [f"part(s) {listed} of {parts} have not finished (no {layout.part_done(missing[0], parts).name}): run "
            f"them (again: they resume) with --num_parts {parts} --part_id <k>, then --merge"]


def _setting_problems(layout: RunLayout, run_config: dict[str, Any]) -> list[str]:
    parts, problems = run_config["num_parts"], []
    for part in range(parts):
        marker = layout.part_done(part, parts)
        if not marker.is_file():
            continue
        try:
            settings = json.loads(marker.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            problems.append(f"{marker} does not record the part's settings (an older version wrote it): run part {part} "
                            f"again (it resumes)")
            continue
        differing = sorted(k for k in set(settings) | set(run_config)
                           if k not in MAY_DIFFER and settings.get(k) != run_config.get(k))
        if differing:
            problems.append(f"part {part} ran with other settings than run_config.json: {', '.join(differing)}")
    return problems


def _record_problems(folder: Path, run_config: dict[str, Any]) -> list[str]:
    parts = run_config["num_parts"]
    problems = []
    for path in sorted(folder.glob("*.jsonl")):
        match = PART_FILE.match(path.name)
        if match is None or int(match.group(2)) != parts:
            continue
        part = int(match.group(1))
        for record in manifest.read(path):
            problem = _record_problem(record, part, parts, run_config)
            if problem:
                problems.append(f"{path.name}: mask {record.get('mask_index')} {problem}")
                break  # one line per file
    return problems


def _record_problem(record: dict[str, Any], part: int, parts: int, run_config: dict[str, Any]) -> str | None:
    index = record["mask_index"]
    if index % parts != part:
        return f"belongs to part {index % parts} of {parts}, not to this file's part {part}"
    if record.get("type") != "candidate":
        return None
    differing = [k for k in SAMPLING_KEYS if record.get(k) != run_config.get(k)]
    if differing:
        return f"was sampled with other settings than run_config.json: {', '.join(differing)}"
    if record["seed"] != candidate_seed(run_config["seed"], index, record["try"]):
        return f"was sampled with another --seed than run_config.json's {run_config['seed']}"
    return None
