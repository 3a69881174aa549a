"""Atomic writes: the whole file or the old one, never half; the result has the mode the umask gives."""

from __future__ import annotations

import os
import stat

import pytest

from mrgen.io.atomic import atomic_path, atomic_write_text, remove_stale_temporaries


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "out.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == mode


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    atomic_write_text(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (tmp_path / "out.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_temporaries_of_a_killed_writer_are_removed_at_the_next_start(tmp_path):
    (tmp_path / "images").mkdir()
    stale = [tmp_path / ".manifest.jsonl.k3j9x2ab.tmp.jsonl", tmp_path / "images" / ".0001_T2.png.a8b7c6d5.tmp.png"]
    for path in stale:
        path.write_bytes(b"half")
    live = tmp_path / ".run_config.json.zz11yy22.tmp.json"  # another job's write in progress
    live.write_bytes(b"half")
    for path in stale:
        os.utime(path, (path.stat().st_atime - 3600, path.stat().st_mtime - 3600))
    kept = [tmp_path / "manifest.jsonl", tmp_path / "images" / "0001_T2.png", tmp_path / ".hidden"]
    for path in kept:
        path.write_bytes(b"whole")
    assert remove_stale_temporaries(tmp_path) == 2
    assert not any(p.exists() for p in stale) and all(p.exists() for p in [*kept, live])
