"""Reconstruction quality of a diffusers ``AutoencoderKL`` on the slices of an index.

Slices come from a conditional index or the Radiopaedia image-text JSON (``mrgen.data.datasets``), are
preprocessed like training (``preprocess_image``: min-max, centred pad, resize, [-1, 1]), encoded, and
decoded from the posterior's **mode** by default (the original sampled it, which adds noise to the
measurement; ``posterior="sample"`` with a seed reproduces that choice). Metrics are per image
(``image_metrics``) and averaged over images; the original averaged per-batch means and computed PSNR over
a whole batch array, which weighs images the same only when batches are full.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from mrgen.data.datasets import ImageTextDataset
from mrgen.evaluation.image_metrics import SsimWindow, reconstruction_metrics
from mrgen.io.atomic import atomic_write_json

log = logging.getLogger(__name__)


@dataclass
class VaeEvalOptions:
    size: int = 512
    batch_size: int = 4
    posterior: Literal["mode", "sample"] = "mode"
    ssim_window: SsimWindow = 7
    split: Literal["test", "all"] = "test"
    test_fraction: float = 0.01
    max_images: int | None = None
    seed: int = 0
    device: str = "cpu"


@dataclass
class VaeEvalReport:
    means: dict[str, float]
    images: int
    options: dict
    per_image: list[dict] = field(repr=False)


def load_vae(path: str | Path):
    """An ``AutoencoderKL`` from its folder, or from a pipeline folder with a ``vae/`` subfolder."""
    from diffusers import AutoencoderKL

    path = Path(path)
    if (path / "vae" / "config.json").is_file():
        return AutoencoderKL.from_pretrained(path, subfolder="vae")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no AutoencoderKL (no config.json, nor vae/config.json); pass the "
                                f"folder written by save_pretrained")
    return AutoencoderKL.from_pretrained(path)


@torch.no_grad()
def evaluate_vae(vae, index_paths: Sequence[str | Path], options: VaeEvalOptions) -> VaeEvalReport:
    dataset = ImageTextDataset(index_paths, options.size, split=options.split, prompt_dropout=0.0,
                               test_fraction=options.test_fraction, seed=options.seed)
    if options.max_images is not None:
        dataset = Subset(dataset, range(min(options.max_images, len(dataset))))
    loader = DataLoader(dataset, batch_size=options.batch_size, shuffle=False, num_workers=0)
    vae = vae.to(options.device).eval()
    generator = torch.Generator(device=options.device).manual_seed(options.seed)
    rows = []
    for batch in tqdm(loader, desc="VAE reconstruction", unit="batch"):
        images = batch["image"].to(options.device, dtype=vae.dtype)
        # an RGB VAE (e.g. Stable Diffusion's) sees the gray slice on three channels; its output is averaged back
        inputs = images.repeat(1, vae.config.in_channels, 1, 1) if vae.config.in_channels != 1 else images
        posterior = vae.encode(inputs).latent_dist
        latents = posterior.mode() if options.posterior == "mode" else posterior.sample(generator=generator)
        recon = vae.decode(latents).sample.mean(dim=1).clamp(-1.0, 1.0).float().cpu().numpy()
        originals = images[:, 0].float().cpu().numpy()
        for path, original, decoded in zip(batch["path"], originals, recon):
            metrics = reconstruction_metrics(original, decoded, options.ssim_window)
            rows.append({"path": path, **asdict(metrics)})
    means = {k: _mean([r[k] for r in rows]) for k in ("l1", "mse", "psnr", "ssim")}
    return VaeEvalReport(means, len(rows), asdict(options), rows)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def evaluate_vae_folder(vae_dir: str | Path, index_paths: Sequence[str | Path], out_json: str | Path | None,
                        options: VaeEvalOptions) -> VaeEvalReport:
    """Load the VAE, evaluate, and write the report (means, options, per-image rows) as JSON."""
    report = evaluate_vae(load_vae(vae_dir), index_paths, options)
    if out_json is not None:
        atomic_write_json(out_json, asdict(report))
    log.info("VAE on %d images: %s", report.images, report.means)
    return report
