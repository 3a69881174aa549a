"""The pipeline folder: the trained models of a run, in the released MRGen layout.

```
<folder>/vae/                      AutoencoderKL          (every stage)
<folder>/unet/                     UNet2DConditionModel   (UNet and ControlNet stages)
<folder>/controlnet/               ControlNetModel        (ControlNet stage)
<folder>/scheduler/                scheduler_config.json  (UNet and ControlNet stages)
<folder>/text_encoder.json         {"kind": "minilm" | "biomedclip", "path": folder of the BiomedCLIP files}
<folder>/text_encoder_BiomedCLIP/, tokenizer_BiomedCLIP/   (biomedclip from the released layout)
```

Each model subfolder is a stock diffusers ``save_pretrained`` folder (safetensors). The released
checkpoints have no ``text_encoder.json``; a folder without one is read as BiomedCLIP in the released
layout. Their ControlNets live apart (``controlnet_model_zoo/<pair>/``): pass that folder as
``controlnet_path``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from transformers import PreTrainedTokenizerBase

from mrgen.io.atomic import atomic_write_json
from mrgen.models.builders import (CONTROLNET, UNET, VAE, ModelFolderError, component_dir,
                                   copy_component, load_pretrained, read_json, scheduler_config)
from mrgen.models.text_encoders import (OPEN_CLIP_CONFIG, RELEASED_ENCODER_DIR, RELEASED_TOKENIZER_DIR,
                                        TextEncoder, TextEncoderError, check_text_encoder,
                                        load_text_encoder, load_tokenizer)

log = logging.getLogger(__name__)

TEXT_ENCODER_FILE = "text_encoder.json"
OPEN_CLIP_DIR = "biomedclip_open_clip"


@dataclass(frozen=True)
class TextEncoderSpec:
    """Which text encoder a UNet was trained with; ``path`` only for ``biomedclip``."""

    kind: str
    path: Path | None = None

    def check(self) -> None:
        check_text_encoder(self.kind, self.path)

    def load(self) -> TextEncoder:
        return load_text_encoder(self.kind, self.path)

    def load_tokenizer(self) -> PreTrainedTokenizerBase:
        return load_tokenizer(self.kind, self.path)


@dataclass
class PipelineComponents:
    vae: AutoencoderKL
    unet: UNet2DConditionModel | None
    controlnet: ControlNetModel | None
    scheduler_config: dict[str, Any] | None
    text_encoder: TextEncoder | None


def text_encoder_spec(folder: str | os.PathLike) -> TextEncoderSpec:
    """The encoder recorded in ``text_encoder.json``; the released layout when there is none."""
    folder = Path(folder)
    record = folder / TEXT_ENCODER_FILE
    if record.is_file():
        data = read_json(record)
        kind = data.get("kind")
        path = data.get("path")
        return TextEncoderSpec(kind, None if path is None else (folder / path).resolve())
    if (folder / RELEASED_ENCODER_DIR).is_dir():
        return TextEncoderSpec("biomedclip", folder.resolve())
    raise TextEncoderError(f"{folder}: no {TEXT_ENCODER_FILE} and no {RELEASED_ENCODER_DIR}/; cannot tell which text "
                           f"encoder this UNet was trained with")


def write_text_encoder(folder: str | os.PathLike, spec: TextEncoderSpec) -> None:
    """Record the encoder in ``folder``; BiomedCLIP files are linked in, so the folder stands alone."""
    folder = Path(folder)
    relative: str | None = None
    if spec.kind == "biomedclip":
        source = Path(spec.path)
        if (source / OPEN_CLIP_CONFIG).is_file():
            copy_component(source, folder / OPEN_CLIP_DIR)
            relative = OPEN_CLIP_DIR
        else:
            root = source.parent if source.name == RELEASED_ENCODER_DIR else source
            for name in (RELEASED_ENCODER_DIR, RELEASED_TOKENIZER_DIR):
                copy_component(root / name, folder / name)
            relative = "."
    atomic_write_json(folder / TEXT_ENCODER_FILE, {"kind": spec.kind, "path": relative})


def load_pipeline_components(
    folder: str | os.PathLike,
    controlnet_path: str | os.PathLike | None = None,
    with_text_encoder: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PipelineComponents:
    """Everything a synthesis run needs from a pipeline folder, frozen and in eval mode.

    ``controlnet_path`` defaults to ``folder/controlnet`` when present; the UNet, scheduler and ControlNet are
    ``None`` when the folder has none (a VAE-stage output).
    """
    folder = Path(folder)
    vae = load_pretrained(folder, VAE)
    unet = _optional(folder, UNET)
    controlnet = load_pretrained(controlnet_path, CONTROLNET) if controlnet_path else _optional(folder, CONTROLNET)
    try:
        sched = scheduler_config(folder)
    except ModelFolderError:
        sched = None
    encoder = text_encoder_spec(folder).load() if with_text_encoder and unet is not None else None
    for model in (vae, unet, controlnet):
        if model is not None:
            model.requires_grad_(False).eval().to(device)
            if model.dtype != dtype:  # casting to the dtype a model already has makes diffusers warn
                model.to(dtype=dtype)
    if encoder is not None:
        encoder.to(device)
    return PipelineComponents(vae, unet, controlnet, sched, encoder)


def _optional(folder: Path, component: str):
    try:
        component_dir(folder, component)
    except ModelFolderError:
        return None
    return load_pretrained(folder, component)


def export_frozen(source_root: str | os.PathLike, destination: str | os.PathLike, components: tuple[str, ...]) -> None:
    """Link the frozen components a stage used into its pipeline folder, unchanged."""
    for component in components:
        copy_component(component_dir(source_root, component), Path(destination) / component)

