"""Stage bookkeeping: a finished stage leaves ``stages/<name>.json`` and is not redone; one line per stage.

A stage's result gets its compute time as ``stage_seconds`` (its own keys, a synthesis run's ``seconds`` among them,
are kept).

A stage killed half way has no marker and runs again; every stage is written to resume or to redo
its work idempotently (training resumes from its latest checkpoint, synthesis from its manifest,
nnU-Net training with ``--c``). A stage may run another inside it (a benchmark column runs the synthesis it
needs); each records only its own time, so the stages' times add up to the run's.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mrgen.io.atomic import atomic_write_json, remove_stale_temporaries

log = logging.getLogger(__name__)


class StageRunner:
    def __init__(self, out: Path, names: Sequence[str]):
        self.folder = out / "stages"
        if self.folder.is_dir():
            remove_stale_temporaries(self.folder)  # markers half-written by a killed run
        self.names = list(names)
        self.results: dict[str, dict[str, Any]] = {}
        self._inner_seconds: list[float] = []  # per running stage, the time spent in stages run inside it

    def run(self, name: str, work: Callable[[], Mapping[str, Any] | None]) -> dict[str, Any]:
        marker = self.folder / f"{name}.json"
        position = f"[{self.names.index(name) + 1}/{len(self.names)}] {name}"
        if marker.is_file():
            result = json.loads(marker.read_text())
            log.info("%s: finished earlier (%.1f s), skipped", position, result["stage_seconds"])
        else:
            log.info("%s: running", position)
            started = time.perf_counter()
            self._inner_seconds.append(0.0)
            try:
                result = dict(work() or {})
            finally:
                inner = self._inner_seconds.pop()
            elapsed = time.perf_counter() - started
            if self._inner_seconds:
                self._inner_seconds[-1] += elapsed
            result["stage_seconds"] = elapsed - inner
            atomic_write_json(marker, result)
            log.info("%s: done in %.1f s", position, result["stage_seconds"])
        self.results[name] = result
        return result

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Compute time of every finished stage, whether it ran in this invocation or an earlier one (a resumed
        run's skipped stages included, and the ones it had no need to look at)."""
        markers = {name: self.folder / f"{name}.json" for name in self.names}
        return {name: json.loads(marker.read_text())["stage_seconds"] for name, marker in markers.items() if marker.is_file()}

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds.values())


def run_command(command: Sequence[str], env: Mapping[str, str] | None = None, log_file: Path | None = None) -> None:
    """Run a CLI step; on failure the error names the command and where its output is."""
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as sink:
            completed = subprocess.run(list(command), env=None if env is None else dict(env), stdout=sink, stderr=subprocess.STDOUT)
    else:
        completed = subprocess.run(list(command), env=None if env is None else dict(env))
    if completed.returncode != 0:
        where = f"; its output is in {log_file}" if log_file is not None else ""
        raise RuntimeError(f"command failed with exit code {completed.returncode}: {' '.join(command)}{where}")
