"""scripts/soak_kill.py in miniature: synthesis and training killed with SIGKILL and restarted end as an
uninterrupted run does (the full soak: 10 synthesis kills, 5 training kills, see the script)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO


def test_killed_and_restarted_runs_end_as_uninterrupted_ones(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "scripts/soak_kill.py"), "--synthesis_kills", "2",
                           "--training_kills", "2", "--work", str(tmp_path / "soak")],
                          capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    result = json.loads(done.stdout[done.stdout.index("{"):])
    synthesis, training = result["synthesis"], result["training"]
    assert synthesis["kills"] == 2 and synthesis["lost"] == synthesis["duplicated"] == 0
    assert synthesis["images_identical"] == synthesis["images"] > 0 and synthesis["accepted_set_identical"]
    assert training["kills"] == 2 and training["max_weight_difference"] <= 1e-6
