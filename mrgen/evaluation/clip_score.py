"""CLIP-I and CLIP-T of generated images with BiomedCLIP (or any open_clip model) loaded from local files.

As the original's ``evaluate_diffusion_CLIPscore.py`` (reference 8.3): CLIP-I is the cosine similarity
between the image embeddings of a generated image and its original, CLIP-T between a generated image and
its prompt (tokenised with context length 256, BiomedCLIP's), each averaged over items, with no x100 scale
and no clipping at 0.

Loading never touches the network. The model is given either as a folder in open_clip's ``local-dir``
layout (``open_clip_config.json``, ``open_clip_model.safetensors`` or ``open_clip_pytorch_model.bin``, and,
for a Hugging Face text tower such as BiomedCLIP's PubMedBERT, the tokenizer files and the BERT
``config.json``) or as a config file plus a weights file. The BERT config is looked up in the tokenizer
folder, then at ``text_cfg.hf_model_name`` if that is a folder, then in the Hugging Face cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image
from tqdm import tqdm

log = logging.getLogger(__name__)

CONTEXT_LENGTH = 256
WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "open_clip_model.bin")
CONFIG_NAME = "open_clip_config.json"


class ClipModelMissing(FileNotFoundError):
    """A file the local CLIP model needs is not there."""


@dataclass
class ClipModel:
    model: torch.nn.Module
    preprocess: Any
    tokenizer: Any
    device: str


@dataclass(frozen=True)
class ClipItem:
    generated: Path
    original: Path | None = None
    prompt: str | None = None


@dataclass(frozen=True)
class ClipReport:
    clip_i: float | None
    clip_t: float | None
    items: int


def load_clip(model_dir: str | Path | None = None, config: str | Path | None = None,
              weights: str | Path | None = None, context_length: int = CONTEXT_LENGTH,
              device: str = "cpu") -> ClipModel:
    """An open_clip model from ``model_dir`` (local-dir layout) or from ``config`` + ``weights``."""
    import open_clip

    config_path, weights_path, tokenizer_dir = _resolve_files(model_dir, config, weights)
    raw = json.loads(config_path.read_text(encoding="utf-8"))
    model_cfg = dict(raw.get("model_cfg", raw))
    text_cfg = dict(model_cfg["text_cfg"])
    if "hf_model_name" in text_cfg:
        text_cfg["hf_model_name"] = _local_text_config(text_cfg["hf_model_name"], tokenizer_dir, config_path)
        text_cfg["hf_tokenizer_name"] = str(tokenizer_dir)
    model_cfg["text_cfg"] = text_cfg
    name = _register(open_clip, model_cfg, config_path)
    preprocess_cfg = raw.get("preprocess_cfg", {})
    model, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=str(weights_path), pretrained_text=False, device=device,
        **{f"image_{key}": preprocess_cfg[key] for key in ("mean", "std", "interpolation", "resize_mode")
           if key in preprocess_cfg},
    )
    if "hf_tokenizer_name" in text_cfg:
        tokenizer = open_clip.tokenizer.HFTokenizer(str(tokenizer_dir), context_length=context_length)
    else:
        tokenizer = open_clip.get_tokenizer(name, context_length=context_length)
    return ClipModel(model.eval(), preprocess, tokenizer, device)


def _resolve_files(model_dir, config, weights) -> tuple[Path, Path, Path]:
    if model_dir is not None:
        folder = Path(str(model_dir).removeprefix("local-dir:"))
        if not folder.is_dir():
            raise ClipModelMissing(f"CLIP model folder {folder} does not exist")
        config_path = folder / CONFIG_NAME
        weights_path = next((folder / n for n in WEIGHT_NAMES if (folder / n).is_file()), None)
        if weights_path is None:
            raise ClipModelMissing(f"{folder}: no weights file ({', '.join(WEIGHT_NAMES)})")
    elif config is not None and weights is not None:
        config_path, weights_path, folder = Path(config), Path(weights), Path(config).parent
    else:
        raise ClipModelMissing("give a CLIP model folder (--clip_dir), or --clip_config and --clip_weights; for "
                               "BiomedCLIP download microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224 on a "
                               "machine with network access")
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ClipModelMissing(f"CLIP model file {path} does not exist")
    return config_path, weights_path, folder


def _local_text_config(hf_name: str, tokenizer_dir: Path, config_path: Path) -> str:
    if (tokenizer_dir / "config.json").is_file():
        return str(tokenizer_dir)
    if Path(hf_name).is_dir() and (Path(hf_name) / "config.json").is_file():
        return hf_name
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(hf_name, "config.json")
    if isinstance(cached, str):
        return str(Path(cached).parent)
    raise ClipModelMissing(
        f"{config_path}: the text tower {hf_name!r} needs its config.json offline; put that file (and the "
        f"tokenizer files) into {tokenizer_dir}, or have {hf_name} in the Hugging Face cache"
    )


def _register(open_clip, model_cfg: dict, config_path: Path) -> str:
    """Make open_clip know the config under a name derived from its content."""
    name = "mrgen-local-" + hashlib.sha1(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
    if name not in open_clip.list_models():
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}.json"
            path.write_text(json.dumps(model_cfg), encoding="utf-8")
            open_clip.add_model_config(path)
    if name not in open_clip.list_models():
        raise ValueError(f"{config_path}: open_clip did not accept the model config (needs embed_dim, vision_cfg, "
                         f"text_cfg)")
    return name


@torch.no_grad()
def encode_images(clip: ClipModel, paths: Sequence[Path], batch_size: int = 16) -> torch.Tensor:
    features = []
    for start in tqdm(range(0, len(paths), batch_size), desc="CLIP image features", unit="batch",
                      disable=len(paths) <= batch_size):
        batch = [clip.preprocess(_rgb(p)) for p in paths[start:start + batch_size]]
        features.append(clip.model.encode_image(torch.stack(batch).to(clip.device)).float())
    return torch.nn.functional.normalize(torch.cat(features), dim=-1)


@torch.no_grad()
def encode_texts(clip: ClipModel, prompts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
    features = []
    for start in range(0, len(prompts), batch_size):
        tokens = clip.tokenizer(list(prompts[start:start + batch_size])).to(clip.device)
        features.append(clip.model.encode_text(tokens).float())
    return torch.nn.functional.normalize(torch.cat(features), dim=-1)


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def clip_scores(clip: ClipModel, items: Sequence[ClipItem], batch_size: int = 16) -> ClipReport:
    """Mean CLIP-I over items with an original, mean CLIP-T over items with a prompt."""
    if not items:
        raise ValueError("no items to score")
    clip_i = clip_t = None
    with_original = [it for it in items if it.original is not None]
    if with_original:
        generated = encode_images(clip, [it.generated for it in with_original], batch_size)
        originals = encode_images(clip, [it.original for it in with_original], batch_size)
        clip_i = float((generated * originals).sum(dim=-1).mean())
    with_prompt = [it for it in items if it.prompt is not None]
    if with_prompt:
        generated = encode_images(clip, [it.generated for it in with_prompt], batch_size)
        texts = encode_texts(clip, [it.prompt for it in with_prompt])
        clip_t = float((generated * texts).sum(dim=-1).mean())
    log.info("CLIP-I %s, CLIP-T %s over %d items", clip_i, clip_t, len(items))
    return ClipReport(clip_i, clip_t, len(items))


def items_from_results_json(path: str | Path) -> list[ClipItem]:
    """The generation results JSON: entries with ``image_path`` (generated), ``original_path``, ``prompt``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results JSON {path} does not exist")
    raw = json.loads(path.read_text(encoding="utf-8"))
    items = []
    for i, entry in enumerate(raw):
        if "image_path" not in entry:
            raise ValueError(f"{path}: entry {i}: no 'image_path' (the generated image)")
        prompt = entry.get("prompt")
        items.append(ClipItem(
            generated=_resolve(path, entry["image_path"], i),
            original=_resolve(path, entry["original_path"], i) if entry.get("original_path") else None,
            prompt=prompt[0] if isinstance(prompt, list) else prompt,
        ))
    return items


def items_from_folders(generated_dir: str | Path, real_dir: str | Path) -> list[ClipItem]:
    """Generated and real images paired by file name (CLIP-I only)."""
    generated_dir, real_dir = Path(generated_dir), Path(real_dir)
    pairs = [ClipItem(p, real_dir / p.name) for p in sorted(generated_dir.glob("*.png")) if (real_dir / p.name).is_file()]
    if not pairs:
        raise FileNotFoundError(f"no PNG in {generated_dir} has a namesake in {real_dir}")
    return pairs


def _resolve(json_path: Path, value: str, i: int) -> Path:
    path = Path(value)
    path = path if path.is_absolute() else json_path.parent / path
    if not path.is_file():
        raise FileNotFoundError(f"{json_path}: entry {i}: image {path} does not exist")
    return path



def evaluate_clip_scores(results_json: str | Path | None, generated_dir: str | Path | None,
                         real_dir: str | Path | None, model_dir: str | Path | None = None,
                         config: str | Path | None = None, weights: str | Path | None = None,
                         context_length: int = CONTEXT_LENGTH, batch_size: int = 16, device: str = "cpu") -> ClipReport:
    """Items from the results JSON (or folders paired by name), the local model, then the scores."""
    items = items_from_results_json(results_json) if results_json is not None else items_from_folders(generated_dir, real_dir)
    clip = load_clip(model_dir, config, weights, context_length, device)
    return clip_scores(clip, items, batch_size)
