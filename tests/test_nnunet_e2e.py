"""nnU-Net 2D end to end on CPU: simulated T2-SPIR volumes -> raw dataset -> plan -> short training ->
predict -> evaluate_nib.py, with the lean worker settings, the CPU-lean plans and our short trainer."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mrgen.data.phantom import generate_phantom_dataset
from mrgen.nnunet.env import NnUNetPaths, lean_environment, plan_command, predict_command, train_command
from mrgen.nnunet.plans import LEAN_PLANS

REPO = Path(__file__).resolve().parents[1]
DATASET_ID = 3
NAME = "PhantomT2E2E"


def _run(command: list[str], env: dict[str, str], cwd: Path, timeout: int = 240) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, f"{command[:2]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_phantom_through_nnunet_cpu(tmp_path):
    generate_phantom_dataset(tmp_path / "phantom", cases=4, seed=0, size=64, modalities=["T2-SPIR"], slices=12,
                             test_fraction=0.25)
    paths = NnUNetPaths.under(tmp_path)
    paths.create()
    env = lean_environment(paths, "train")
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", MRGEN_NNUNET_EPOCHS="2", MRGEN_NNUNET_ITERATIONS="5",
               MRGEN_NNUNET_VAL_ITERATIONS="2", MRGEN_NNUNET_FINAL_VALIDATION="0", MRGEN_NNUNET_BATCH_SIZE="3")
    for split in ("train", "test"):
        _run([sys.executable, str(REPO / "Segmentation/prepare_real_data.py"), "--jsonl",
              str(tmp_path / "phantom" / f"volumes_T2-SPIR_{split}.jsonl"), "--split", split, "--dataset_id",
              str(DATASET_ID), "--dataset_name", NAME, "--mask2label", "CHAOSMR", "--size", "0"], env, tmp_path)
    dataset_dir = paths.raw / f"Dataset{DATASET_ID:03d}_{NAME}"

    _run(plan_command(DATASET_ID), lean_environment(paths, "plan", base=env), tmp_path)
    _run([sys.executable, str(REPO / "Segmentation/make_cpu_plans.py"), "-d", str(DATASET_ID)], env, tmp_path)
    log = _run(train_command(DATASET_ID, plans=LEAN_PLANS), env, tmp_path)  # both found by name by nnU-Net's CLI
    assert "MRGEN_NNUNET_BATCH_SIZE=3: batch size 3" in log
    assert "'features_per_stage': [32, 64, 128, 256]" in log and "'n_stages': 4" in log
    assert (paths.results / f"Dataset{DATASET_ID:03d}_{NAME}" / f"nnUNetTrainer_MRGenShort__{LEAN_PLANS}__2d").is_dir()
    prediction = tmp_path / "prediction"
    _run(predict_command(dataset_dir / "imagesTs", prediction, DATASET_ID, plans=LEAN_PLANS), env, tmp_path)
    table = _run([sys.executable, str(REPO / "Segmentation/evaluate_nib.py"), "--nnunet_name", str(DATASET_ID),
                  "--seg_dir", str(prediction), "--img_dir", "imagesTs", "--target_dataset", "CHAOSMR",
                  "--source_dataset", "CHAOSMR"], env, tmp_path)

    assert "liver" in table and "(union, not in mean)" in table
    summary = json.loads((prediction / "evaluation" / "summary.json").read_text())
    assert summary["mean_over"] == ["liver", "right kidney", "left kidney", "spleen"]
    assert summary["organs"]["liver"]["dice_cases"] == 1
    rows = (prediction / "evaluation" / "per_case.csv").read_text().splitlines()
    assert len(rows) == 1 + 5  # one test case, four organs and the kidney union
    case_id = rows[1].split(",")[0]
    for kind in ("gt", "pred", "image"):
        assert (prediction / "evaluation" / "nifti" / kind / f"{case_id}.nii.gz").is_file()
