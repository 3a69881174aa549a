"""Diffusers models from config folders and from trained folders, and their parameter counts.

A *config folder* (``ckpt/``, ``ckpt/tiny/``) holds ``vae/config.json``, ``unet/config.json``,
``controlnet/config.json`` and ``scheduler/scheduler_config.json``: new models are built from it with random
weights. A *pipeline folder* (the released MRGen checkpoints, or a stage's ``pipeline/`` output) holds the
same subfolders with ``save_pretrained`` weights. Every loader accepts either the root (``root/vae``) or
the component folder itself, so a released ``controlnet_model_zoo/<pair>/`` works too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, DDPMScheduler, ModelMixin,
                       UNet2DConditionModel)

log = logging.getLogger(__name__)

VAE, UNET, CONTROLNET, SCHEDULER = "vae", "unet", "controlnet", "scheduler"
MODEL_CONFIG = "config.json"
SCHEDULER_CONFIG = "scheduler_config.json"
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
_CLASSES: dict[str, type[ModelMixin]] = {VAE: AutoencoderKL, UNET: UNet2DConditionModel, CONTROLNET: ControlNetModel}


class ModelFolderError(FileNotFoundError):
    """A model folder lacks the files a component needs; the message names them."""


def component_dir(root: str | os.PathLike, component: str) -> Path:
    """``root/<component>`` if it holds the component's config, else ``root`` itself if it does."""
    root = Path(root)
    filename = SCHEDULER_CONFIG if component == SCHEDULER else MODEL_CONFIG
    for folder in (root / component, root):
        if (folder / filename).is_file() and _class_matches(folder / filename, component):
            return folder
    raise ModelFolderError(
        f"{root}: no {component} found; expected {root}/{component}/{filename} (a diffusers "
        f"{'scheduler' if component == SCHEDULER else _CLASSES[component].__name__} folder)"
        + ("" if root.exists() else f"; {root} does not exist")
    )


def _class_matches(config_file: Path, component: str) -> bool:
    if component == SCHEDULER:
        return True
    name = read_json(config_file).get("_class_name")
    return name is None or name == _CLASSES[component].__name__


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{path}: cannot read the JSON config ({err})") from err
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: expected a JSON object")
    return data


def model_config(root: str | os.PathLike, component: str) -> dict[str, Any]:
    return read_json(component_dir(root, component) / MODEL_CONFIG)


def scheduler_config(root: str | os.PathLike) -> dict[str, Any]:
    return read_json(component_dir(root, SCHEDULER) / SCHEDULER_CONFIG)


def has_weights(folder: str | os.PathLike) -> bool:
    return any((Path(folder) / name).is_file() for name in WEIGHT_FILES)


def build_from_config(root: str | os.PathLike, component: str) -> ModelMixin:
    """A new, randomly initialised VAE/UNet/ControlNet from ``root/<component>/config.json``."""
    return _CLASSES[component].from_config(model_config(root, component))


def build_empty(root: str | os.PathLike, component: str) -> ModelMixin:
    """The same model on the meta device: shapes and parameter counts without allocating memory."""
    with init_empty_weights():
        return build_from_config(root, component)


def load_pretrained(root: str | os.PathLike, component: str) -> ModelMixin:
    """Trained weights with stock diffusers ``from_pretrained`` (safetensors, or the .bin fallback)."""
    folder = component_dir(root, component)
    if not has_weights(folder):
        raise ModelFolderError(f"{folder}: has a config but no weights ({' or '.join(WEIGHT_FILES)}); train this "
                               f"component first or point to a folder that has them")
    try:
        model = _CLASSES[component].from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as err:  # safetensors' and diffusers' errors for damaged files
        raise ModelFolderError(f"{folder}: the weights cannot be read ({err}); the file is truncated or damaged "
                               f"(an interrupted copy or download?): copy it again or retrain this component") from err
    bad = [name for name, tensor in model.state_dict().items() if not torch.isfinite(tensor).all()]
    if bad:
        raise ModelFolderError(f"{folder}: {len(bad)} weight tensor(s) hold NaN or infinity (first: {bad[0]}); the "
                               f"training diverged or the file is damaged: use an earlier checkpoint or retrain")
    return model


def controlnet_from_unet(unet: UNet2DConditionModel, conditioning_channels: int,
                         embedding_channels: tuple[int, ...]) -> ControlNetModel:
    """A ControlNet whose encoder is a copy of the trained UNet's (the original's initialisation)."""
    return ControlNetModel.from_unet(unet, conditioning_channels=conditioning_channels,
                                     conditioning_embedding_out_channels=tuple(embedding_channels))


def noise_scheduler(config: dict[str, Any]) -> DDPMScheduler:
    """The training noise schedule (DDPM) from a scheduler config, as the original did."""
    return DDPMScheduler.from_config(config)


def sampling_scheduler(config: dict[str, Any]) -> DDIMScheduler:
    """The validation sampler (DDIM) from the same config."""
    return DDIMScheduler.from_config(config)


def vae_scale_factor(vae_config: dict[str, Any]) -> int:
    """Image pixels per latent pixel: one 2x downsampling between consecutive encoder blocks."""
    return 2 ** (len(vae_config["block_out_channels"]) - 1)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def copy_component(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Copy a model folder's files, hard-linking where the file system allows (no extra disk)."""
    source, destination = Path(source), Path(destination)
    destination.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        target = destination / item.name
        if item.is_dir():
            copy_component(item, target)
            continue
        target.unlink(missing_ok=True)
        try:
            os.link(item, target)
        except OSError:
            shutil.copy2(item, target)
