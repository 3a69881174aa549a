"""scripts/train_zoo.py on a fresh clone: the committed zoo's finished stages are taken, not trained again."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def load_train_zoo():
    spec = importlib.util.spec_from_file_location("train_zoo", REPO / "scripts" / "train_zoo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_vae_and_unet_become_the_runs_later_stages_start_from(tmp_path: Path) -> None:
    train_zoo, committed, out, work = load_train_zoo(), REPO / "zoo" / "phantom", tmp_path / "zoo", tmp_path / "work"
    for part in ("vae", "unet", "scheduler"):
        shutil.copytree(committed / part, out / part)
    shutil.copy2(committed / "text_encoder.json", out / "text_encoder.json")

    train_zoo.restore_from_zoo(work, out)

    unet = load_file(work / "unet" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    fp16 = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(unet[k].dtype == torch.float32 and torch.equal(unet[k], fp16[k].float()) for k in fp16)
    assert (work / "unet" / "pipeline" / "vae" / "config.json").is_file()
    assert (work / "unet" / "pipeline" / "scheduler" / "scheduler_config.json").is_file()
    assert not train_zoo.todo("vae", work, out) and not train_zoo.todo("unet", work, out)
    assert train_zoo.todo("controlnet_T1-InPhase_to_T2-SPIR", work, out)
