"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A killed process therefore leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator


TEMP_MARK = ".tmp"  # atomic_path's temporaries: ".<name>.<random>.tmp<suffix>" beside their target


def remove_stale_temporaries(folder: str | os.PathLike, min_age_s: float = 600.0) -> int:
    """Delete the temporaries that writers killed mid-write left under ``folder``; the number removed.

    Only those untouched for ``min_age_s``: a live write takes milliseconds, and another job (a cluster part) may
    be writing into the same folder right now."""
    cutoff = time.time() - min_age_s
    stale = [p for p in Path(folder).rglob(f".*{TEMP_MARK}*")
             if p.name.startswith(".") and p.is_file() and p.stat().st_mtime < cutoff]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it onto ``path``.

    ``suffix`` defaults to the target's full suffix (``.nii.gz`` stays ``.nii.gz``) so libraries
    that pick a format from the file name still do the right thing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{TEMP_MARK}{suffix}", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_current_umask())  # mkstemp makes 0600 files; the result gets an ordinary file's mode
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=True) + "\n")


def atomic_save(path: str | os.PathLike, save: Callable[[Path], None]) -> None:
    """Run ``save(tmp_path)`` (any library's writer) and move the result onto ``path``."""
    with atomic_path(path) as tmp:
        save(tmp)
