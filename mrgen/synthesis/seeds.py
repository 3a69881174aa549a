"""Per-candidate seeds: a pure function of (global seed, mask entry, try index), recorded with each sample."""

from __future__ import annotations

import hashlib

import torch


def candidate_seed(global_seed: int, mask_index: int, try_index: int) -> int:
    digest = hashlib.sha256(f"mrgen:{global_seed}:{mask_index}:{try_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: valid for torch.Generator.manual_seed


def initial_noise(seeds: list[int], shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """One latent per seed, drawn on the CPU so the same seed gives the same noise on any device."""
    return torch.stack([torch.randn(shape, generator=torch.Generator("cpu").manual_seed(s), dtype=dtype) for s in seeds])
