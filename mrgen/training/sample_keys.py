"""Random numbers keyed by the training sample, not by the process.

Every random draw of a training step (augmentation and prompt dropout in the dataset, the VAE posterior sample,
the diffusion noise, the timestep, the classifier-free-guidance prompt dropout) comes from a generator seeded by
(run seed, epoch, dataset index, purpose). A sample therefore gets the same numbers whichever process loads it and
whatever the per-process batch is, so N processes at batch B / N train what one process trains at batch B (up to
the floating-point order of the gradient all-reduce), and a resumed run draws what the uninterrupted one drew.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

SAMPLE_KEY = "sample_key"  # the batch field holding each sample's key

# what a keyed draw is for: each purpose has its own stream
DATASET, POSTERIOR, NOISE, TIMESTEP, PROMPT_DROPOUT = range(5)


def mix(*values: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing: nearby inputs give unrelated seeds)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _generator(key: int, purpose: int) -> torch.Generator:
    return torch.Generator().manual_seed(mix(key, purpose))


def keyed_normal(keys: torch.Tensor, purpose: int, shape: tuple[int, ...], device: torch.device,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(len(keys), *shape) standard normal numbers, each sample's from its own key."""
    draws = [torch.randn(shape, generator=_generator(int(key), purpose)) for key in keys.tolist()]
    return torch.stack(draws).to(device, dtype)


def keyed_uniform(keys: torch.Tensor, purpose: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(len(keys),) uniform numbers in [0, 1), each sample's from its own key."""
    return torch.stack([torch.rand((), generator=_generator(int(key), purpose)) for key in keys.tolist()]).to(device)


class KeyedDataset(Dataset):
    """A training set whose items carry their key and whose own random draws come from it."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        key = mix(self.seed, self.epoch, index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix(key, DATASET))
            item = self.dataset[index]
        return {**item, SAMPLE_KEY: key}
