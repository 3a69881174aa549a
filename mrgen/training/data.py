"""Datasets of the image-text stages (VAE and UNet), built from a config's ``data`` section."""

from __future__ import annotations

from mrgen.config import ImageTextData
from mrgen.data.datasets import ImageTextDataset
from mrgen.data.modalities import ModalityRegistry, load_registry


def registry_for(modality_attributes: str | None) -> ModalityRegistry | None:
    """The user's registry merged over the project's, or None for the project's own."""
    return load_registry(modality_attributes, merge_with_default=True) if modality_attributes else None


def image_text_datasets(data: ImageTextData, resolution: int, modality_attributes: str | None,
                        augment: bool = False) -> tuple[ImageTextDataset, ImageTextDataset]:
    """(train, validation): ``test_index_paths`` when given, else a patient-level split of ``index_paths``.

    Prompt dropout is applied by the training step, not the dataset, so that it draws from the
    checkpointed RNG and a resumed run repeats it exactly.
    """
    if not data.index_paths:
        raise ValueError("data.index_paths is empty: list the image-text index files to train on")
    common = dict(size=resolution, registry=registry_for(modality_attributes), prompt_dropout=0.0,
                  test_fraction=data.test_fraction, seed=data.split_seed)
    if data.test_index_paths:
        return (ImageTextDataset(data.index_paths, split="all", augment=augment, **common),
                ImageTextDataset(data.test_index_paths, split="all", **common))
    return (ImageTextDataset(data.index_paths, split="train", augment=augment, **common),
            ImageTextDataset(data.index_paths, split="test", **common))
