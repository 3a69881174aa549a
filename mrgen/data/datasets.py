"""Torch datasets for the three training stages.

- ``ImageTextDataset`` (VAE and UNet stages): slices with their prompts, read from the original's
  Radiopaedia image-text JSON as it is, or from our conditional indexes.
- ``PairDataset`` (ControlNet stage): source-modality slices with their encoded organ masks, plus
  unannotated target-modality slices with an empty condition and the target prompt. Target slices are
  chosen without reading any target label: their mask fields and ``organs`` are dropped at load time
  (the original kept only target slices whose ground truth was non-empty).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from mrgen.data.index import IndexEntry, IndexValidationError, load_index, load_indexes
from mrgen.data.modalities import ModalityRegistry, load_registry
from mrgen.data.preprocess import MaskEncoding, preprocess_image, preprocess_mask
from mrgen.data.prompts import EMPTY_PROMPT, build_prompt, radiopaedia_modality_key
from mrgen.data.splits import held_out_patients
from mrgen.io.images import read_gray

log = logging.getLogger(__name__)

SPLITS = ("train", "test", "all")


@dataclass(frozen=True)
class TextSlice:
    """One image-text sample: a slice and the prompt the original would build for it."""

    image_path: Path
    prompt: str
    patient_key: str


T = TypeVar("T")


def spread(items: Sequence[T], count: int) -> list[T]:
    """Up to ``count`` items evenly spread over the sequence, its first and last included (fixed picks for
    validation and measurement, independent of any random state)."""
    picks = np.linspace(0, len(items) - 1, num=min(count, len(items))).round().astype(int)
    return [items[int(i)] for i in picks]


def _maybe_drop_prompt(prompt: str, probability: float) -> str:
    if probability > 0 and torch.rand(()).item() < probability:
        return EMPTY_PROMPT
    return prompt


def _load_image(path: Path, size: int) -> torch.Tensor:
    return torch.from_numpy(preprocess_image(read_gray(path), size))[None]


def _augment(image: torch.Tensor) -> torch.Tensor:
    """The original's VAE augmentation (flips p=0.2 each, a random rotation p=0.2), filled with black.

    The original rotated in [-1, 1] space with fill 0, i.e. mid-grey corners, and chained three
    rotations; one uniform rotation over +-180 degrees with fill -1 (black background) is used here.
    """
    if torch.rand(()) < 0.2:
        image = TF.vertical_flip(image)
    if torch.rand(()) < 0.2:
        image = TF.horizontal_flip(image)
    if torch.rand(()) < 0.2:
        angle = float(torch.empty(()).uniform_(-180.0, 180.0))
        image = TF.rotate(image, angle, interpolation=TF.InterpolationMode.BILINEAR, fill=-1.0)
    return image


def _radiopaedia_slices(path: Path, raw: list[Any], registry: ModalityRegistry) -> list[TextSlice]:
    """Entries of the original's Radiopaedia JSON: image_path, [aux_modality], image_modality, region, organs."""
    slices, problems = [], []
    for i, item in enumerate(raw):
        if not isinstance(item, dict) or "image_path" not in item:
            problems.append(f"entry {i}: field 'image_path': missing")
            continue
        key = radiopaedia_modality_key(item.get("image_modality"), item.get("aux_modality"))
        if key not in registry:
            problems.append(f"entry {i}: field 'aux_modality'/'image_modality': modality key {key!r} is not in "
                            f"{registry.source}; pass the original's full registry (modality_attributes=...)")
            continue
        image_path = Path(item["image_path"])
        image_path = image_path if image_path.is_absolute() else (path.parent / image_path).resolve()
        if not image_path.is_file():
            problems.append(f"entry {i}: field 'image_path': file {image_path} does not exist")
            continue
        prompt = build_prompt(registry, key, item.get("region"), item.get("organs"))
        # Radiopaedia paths are radiopaedia/<patient>/<case>/<volume>/<slice>.jpeg
        patient = str(item.get("patient_id") or (image_path.parents[2] if len(image_path.parents) > 2 else image_path.parent))
        slices.append(TextSlice(image_path, prompt, patient))
    if problems:
        raise IndexValidationError(path, problems)
    return slices


def _conditional_slices(path: Path, registry: ModalityRegistry) -> list[TextSlice]:
    entries = load_index(path, registry=registry)
    return [TextSlice(e.image_path, build_prompt(registry, e.modality, e.region, e.organs), e.patient_key)
            for e in entries]


def load_text_slices(index_path: str | os.PathLike, registry: ModalityRegistry) -> list[TextSlice]:
    """Read either schema; the Radiopaedia one is recognised by its ``image_modality`` field."""
    path = Path(index_path)
    if not path.is_file():
        raise FileNotFoundError(f"image-text index {path} does not exist (relative paths start at the working "
                                f"directory); set data.index_paths to your index (docs/data.md)")
    raw = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(raw, list) and raw and isinstance(raw[0], dict) and "modality" not in raw[0]:
        return _radiopaedia_slices(path, raw, registry)
    return _conditional_slices(path, registry)


class ImageTextDataset(Dataset):
    """Slices and prompts for the VAE and UNet stages.

    ``split`` selects patients (never list positions): ``test`` is a seeded ``test_fraction`` of the
    patients, ``train`` the rest, ``all`` everything. Prompt dropout (the classifier-free-guidance null
    prompt) and augmentation apply only to the train split.
    """

    def __init__(
        self,
        index_paths: Sequence[str | os.PathLike],
        size: int,
        split: str = "train",
        registry: ModalityRegistry | None = None,
        prompt_dropout: float = 0.1,
        augment: bool = False,
        test_fraction: float = 0.01,
        seed: int = 0,
    ):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        registry = registry or load_registry()
        slices = [s for p in index_paths for s in load_text_slices(p, registry)]
        held_out = held_out_patients((s.patient_key for s in slices), test_fraction, seed) if split != "all" else set()
        if split == "train":
            slices = [s for s in slices if s.patient_key not in held_out]
        elif split == "test":
            slices = [s for s in slices if s.patient_key in held_out]
        if not slices:
            raise ValueError(f"no slices in split {split!r} of {[str(p) for p in index_paths]}")
        self.slices = slices
        self.size = size
        self.training = split == "train"
        self.prompt_dropout = prompt_dropout if self.training else 0.0
        self.augment = augment and self.training

    def __len__(self) -> int:
        return len(self.slices)

    @property
    def prompts(self) -> list[str]:
        return sorted({s.prompt for s in self.slices} | {EMPTY_PROMPT})

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.slices[i]
        image = _load_image(item.image_path, self.size)
        if self.augment:
            image = _augment(image)
        return {"image": image, "prompt": _maybe_drop_prompt(item.prompt, self.prompt_dropout), "path": str(item.image_path)}


@dataclass
class PairConfig:
    """A source -> target modality pair: the ``data`` section of ``training_configs/controlnet/<pair>.yml``.

    Relative index paths resolve against ``data_root``. ``organs`` gives the condition's organ order;
    ``organ_weights`` the intensity codes of the original's single-channel encoding (CHAOS: liver 0.3,
    right kidney 0.5, left kidney 0.4, spleen 0.6). ``prompt_organs`` picks the prompt's organ text: the
    dataset's full ``label`` list (CHAOS, PanSeg, Prostate) or the slice's ``organs`` (LiQA, the simulated dataset).
    ``use_target_images: false`` trains without unannotated target slices (the paper's ablation).
    """

    name: str
    source_indexes: list[str]
    target_indexes: list[str]
    target_modality: str
    organs: list[str]
    organ_weights: list[float] = field(default_factory=list)
    prompt_organs: str = "label"
    inference_indexes: list[str] = field(default_factory=list)
    data_root: str = "."
    use_target_images: bool = True
    allow_outside_root: bool = False

    def __post_init__(self) -> None:
        if self.prompt_organs not in ("label", "organs"):
            raise ValueError(f"pair {self.name}: prompt_organs must be 'label' or 'organs', got {self.prompt_organs!r}")
        if not self.organs:
            raise ValueError(f"pair {self.name}: 'organs' must list at least one organ")
        if len(self.organ_weights) != len(self.organs):
            raise ValueError(f"pair {self.name}: {len(self.organs)} organs need {len(self.organs)} organ_weights "
                             f"(their intensity codes in the condition), got {self.organ_weights}")
        _ = self.encoding  # a weight outside (0, 1] fails here, when the config is read

    @property
    def encoding(self) -> MaskEncoding:
        return MaskEncoding(tuple(self.organ_weights))

    def resolve(self, index_path: str) -> Path:
        path = Path(index_path)
        return path if path.is_absolute() else Path(self.data_root) / path

    def load(self, paths: Sequence[str], annotations: bool = True) -> list[IndexEntry]:
        if not paths:
            return []
        return load_indexes([self.resolve(p) for p in paths], allow_outside_root=self.allow_outside_root,
                            annotations=annotations)


def pair_prompt(pair: PairConfig, registry: ModalityRegistry, entry: IndexEntry, modality: str) -> str:
    """The prompt for ``entry`` rendered in ``modality`` (the same builder for training and synthesis)."""
    organs = entry.label if pair.prompt_organs == "label" else entry.organs
    return build_prompt(registry, modality, entry.region, organs)


def load_condition(pair: PairConfig, entry: IndexEntry, size: int) -> np.ndarray:
    """The encoded organ masks of an annotated entry, in the pair's organ order."""
    masks = []
    for organ in pair.organs:
        path = entry.mask_path_for(organ) if organ in entry.label else None
        masks.append(None if path is None else preprocess_mask(read_gray(path), size))
    return pair.encoding.encode(masks, size)


class PairDataset(Dataset):
    """Source slices with masks and unannotated target slices, mixed as in the original's stage 3."""

    def __init__(self, pair: PairConfig, size: int, registry: ModalityRegistry | None = None,
                 prompt_dropout: float = 0.1, seed: int = 0):
        self.pair = pair
        self.size = size
        self.registry = registry or load_registry()
        self.registry.attributes(pair.target_modality)  # unknown target modality: fail now, not mid-training
        self.prompt_dropout = prompt_dropout
        self.sources = [e for e in pair.load(pair.source_indexes) if e.organs]
        self.targets = pair.load(pair.target_indexes, annotations=False) if pair.use_target_images else []
        if not self.sources:
            raise ValueError(f"pair {pair.name}: no annotated source slice in {pair.source_indexes}")
        for entry in self.sources:
            if entry.modality == pair.target_modality:
                raise ValueError(f"pair {pair.name}: source index entry {entry.image_path} is already in the target "
                                 f"modality {pair.target_modality!r}; source and target must differ")
        self.seed = seed
        log.info("pair %s: %d annotated source slices, %d unannotated target slices",
                 pair.name, len(self.sources), len(self.targets))

    @property
    def condition_channels(self) -> int:
        return self.pair.encoding.channels

    @property
    def prompts(self) -> list[str]:
        found = {pair_prompt(self.pair, self.registry, e, e.modality) for e in self.sources}
        found |= {pair_prompt(self.pair, self.registry, e, self.pair.target_modality) for e in self.sources}
        found |= {pair_prompt(self.pair, self.registry, e, e.modality) for e in self.targets}
        return sorted(found | {EMPTY_PROMPT})

    def __len__(self) -> int:
        return len(self.sources) + len(self.targets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        is_target = i >= len(self.sources)
        entry = self.targets[i - len(self.sources)] if is_target else self.sources[i]
        if is_target:
            condition = self.pair.encoding.empty(self.size)
        else:
            condition = load_condition(self.pair, entry, self.size)
        prompt = pair_prompt(self.pair, self.registry, entry, entry.modality)
        return {
            "image": _load_image(entry.image_path, self.size),
            "condition": torch.from_numpy(condition),
            "prompt": _maybe_drop_prompt(prompt, self.prompt_dropout),
            "is_target": is_target,
            "path": str(entry.image_path),
        }

    def validation_items(self, n: int) -> list[tuple[torch.Tensor, str, str, torch.Tensor]]:
        """``n`` source slices spread over the list: (condition, source prompt, target prompt, source image)."""
        items = []
        for entry in spread(self.sources, n):
            items.append((
                torch.from_numpy(load_condition(self.pair, entry, self.size)),
                pair_prompt(self.pair, self.registry, entry, entry.modality),
                pair_prompt(self.pair, self.registry, entry, self.pair.target_modality),
                _load_image(entry.image_path, self.size),
            ))
        return items
