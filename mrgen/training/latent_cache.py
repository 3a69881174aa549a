"""Latent caching for the stages that keep the VAE frozen (``train.cache_latents: true``).

Each training image is encoded once; the posterior mean and standard deviation are stored (float16)
in safetensors shards of ``SHARD_SIZE`` items under the cache folder, and every step draws a fresh
sample ``mean + std * noise`` from them, the same distribution the original sampled by re-encoding.
Shards are built in parallel by all processes, are resumable (finished shards are kept), and are read
lazily, so the cache never has to fit in memory. ``manifest.json`` records the dataset size, image
size and a fingerprint of the VAE; any change rebuilds the cache. Every item also records its image
path, checked when read, so a changed index cannot silently pair images with the wrong latents.

Images are still read for their prompts and conditions; what the cache saves is the VAE encoder pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import AutoencoderKL
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from mrgen.io.atomic import atomic_path, atomic_write_json

log = logging.getLogger(__name__)

SHARD_SIZE = 1024
MANIFEST = "manifest.json"


def vae_fingerprint(vae: AutoencoderKL) -> str:
    """A hash of the VAE's config and encoder weights: which VAE produced the cached latents."""
    digest = hashlib.sha256(json.dumps(dict(vae.config), sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.encoder.state_dict().items()) + sorted(vae.quant_conv.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


class LatentCache:
    def __init__(self, folder: Path, size: int):
        self.folder = Path(folder)
        self.size = size
        self._handles: dict[int, Any] = {}
        self._paths: dict[int, list[str]] = {}

    @staticmethod
    def shard_file(folder: Path, shard: int) -> Path:
        return folder / f"latents_{shard:05d}.safetensors"

    @classmethod
    def build(cls, folder: str | Path, dataset: Dataset, vae: AutoencoderKL, accelerator: Accelerator,
              resolution: int, batch_size: int, num_workers: int = 0) -> "LatentCache":
        folder = Path(folder)
        manifest = {"items": len(dataset), "resolution": resolution, "vae": vae_fingerprint(vae),
                    "shard_size": SHARD_SIZE}
        if accelerator.is_main_process:
            _reset_if_stale(folder, manifest)
        accelerator.wait_for_everyone()
        shards = range((len(dataset) + SHARD_SIZE - 1) // SHARD_SIZE)
        mine = [s for s in shards if s % accelerator.num_processes == accelerator.process_index
                and not cls.shard_file(folder, s).is_file()]
        for shard in tqdm(mine, desc="caching latents", unit="shard", disable=not mine):
            _encode_shard(folder, shard, dataset, vae, batch_size, num_workers)
        accelerator.wait_for_everyone()
        return cls(folder, len(dataset))

    def _open(self, shard: int):
        if shard not in self._handles:
            path = self.shard_file(self.folder, shard)
            handle = safe_open(str(path), framework="pt")
            self._handles[shard] = handle
            self._paths[shard] = json.loads(handle.metadata()["paths"])
        return self._handles[shard]

    def get(self, index: int, expected_path: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of item ``index``, float32."""
        shard, offset = divmod(index, SHARD_SIZE)
        handle = self._open(shard)
        if self._paths[shard][offset] != expected_path:
            raise RuntimeError(f"latent cache {self.folder} is stale: item {index} was {self._paths[shard][offset]}, "
                               f"now {expected_path}; delete the folder to rebuild it")
        mean = handle.get_slice("mean")[offset:offset + 1][0].float()
        std = handle.get_slice("std")[offset:offset + 1][0].float()
        return mean, std

    def __getstate__(self) -> dict[str, Any]:  # open file handles do not cross into dataloader workers
        return {"folder": self.folder, "size": self.size, "_handles": {}, "_paths": {}}


def _reset_if_stale(folder: Path, manifest: dict[str, Any]) -> None:
    path = folder / MANIFEST
    if path.is_file() and json.loads(path.read_text()) == manifest:
        return
    if folder.exists():
        log.info("latent cache %s was built for another dataset or VAE; rebuilding it", folder)
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    atomic_write_json(path, manifest)


@torch.no_grad()
def _encode_shard(folder: Path, shard: int, dataset: Dataset, vae: AutoencoderKL, batch_size: int,
                  num_workers: int) -> None:
    start = shard * SHARD_SIZE
    indices = list(range(start, min(len(dataset), start + SHARD_SIZE)))
    # its own generator: without one, every DataLoader iterator draws a worker seed from torch's global generator,
    # so building the cache (or finding it built) would change every random number the training draws after it
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(shard))
    means, stds, paths = [], [], []
    for batch in loader:
        images = batch["image"].to(device=vae.device, dtype=vae.dtype)
        posterior = vae.encode(images).latent_dist
        means.append(posterior.mean.to(torch.float16).cpu())
        stds.append(posterior.std.to(torch.float16).cpu())
        paths.extend(batch["path"])
    tensors = {"mean": torch.cat(means).contiguous(), "std": torch.cat(stds).contiguous()}
    with atomic_path(LatentCache.shard_file(folder, shard)) as tmp:
        save_file(tensors, str(tmp), metadata={"paths": json.dumps(paths)})


class CachedLatentDataset(Dataset):
    """The stage's dataset with ``latent_mean``/``latent_std`` in place of the image."""

    def __init__(self, base: Dataset, cache: LatentCache):
        self.base, self.cache = base, cache

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        del item["image"]
        item["latent_mean"], item["latent_std"] = self.cache.get(index, item["path"])
        return item
