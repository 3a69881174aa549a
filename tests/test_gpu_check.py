"""scripts/gpu_check.py's code paths on the CPU (--dry-run); the real check needs a CUDA machine."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO


def test_gpu_check_dry_run_passes_every_check_on_the_cpu(tmp_path):
    out = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, str(REPO / "scripts/gpu_check.py"), "--dry-run", "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    table = done.stdout[done.stdout.index("| check |"):]
    for check in ("matmul bf16", "train unet bf16 grad-ckpt sdpa adamw", "train controlnet bf16 grad-ckpt sdpa adamw",
                  "synthesis", "SAM2 filter"):
        assert f"| {check}" in table, table
    assert "model_tflops" in table and "candidates 8" in table
