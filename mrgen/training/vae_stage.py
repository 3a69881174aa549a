"""Stage 1: the 1-channel KL-VAE (reference 3.1, 3.5, 4.1).

Loss: MSE(reconstruction, input) + ``kld_weight`` x KL, the KL averaged over latent elements (per
sample over C, H, W, then over the batch), with the posterior sampled during training and its mode
used for validation. No perceptual or adversarial term, as the original.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import AutoencoderKL

from mrgen.config import VAEConfig
from mrgen.data.datasets import spread
from mrgen.models.builders import VAE, build_from_config, load_pretrained
from mrgen.training.data import image_text_datasets
from mrgen.training.harness import run_training
from mrgen.training.sample_keys import POSTERIOR, SAMPLE_KEY, keyed_normal
from mrgen.training.visuals import save_grid, to_unit

log = logging.getLogger(__name__)
SCALING_SAMPLE_IMAGES = 256


def kl_per_element(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, var) || N(0, 1)) averaged over every latent element of the batch."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()


class VAETrainingModule(torch.nn.Module):
    """The VAE behind one ``forward``, so distributed wrappers see the whole encode-sample-decode pass."""

    def __init__(self, vae: AutoencoderKL):
        super().__init__()
        self.vae = vae

    def forward(self, images: torch.Tensor,
                keys: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """With the samples' ``keys`` the posterior is sampled (training), else its mode is decoded."""
        posterior = self.vae.encode(images).latent_dist
        latents = posterior.mode()
        if keys is not None:
            noise = keyed_normal(keys, POSTERIOR, tuple(latents.shape[1:]), latents.device, latents.dtype)
            latents = posterior.mean + posterior.std * noise
        return self.vae.decode(latents).sample, posterior.mean, posterior.logvar


class VAEStage:
    name = VAE

    def __init__(self, config: VAEConfig, accelerator: Accelerator):
        self.config, self.accelerator = config, accelerator
        model = config.model
        self.trained_model: AutoencoderKL = (load_pretrained(model.init_from, VAE) if model.init_from
                                             else build_from_config(model.config_path, VAE))
        self.resolution = model.resolution or int(self.trained_model.config.sample_size)
        self.module = VAETrainingModule(self.trained_model)
        self.train_dataset, self.val_dataset = image_text_datasets(config.data, self.resolution,
                                                                   config.modality_attributes, config.data.augment)

    def loss(self, module: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        images = batch["image"]
        reconstruction, mean, logvar = module(images, batch[SAMPLE_KEY])
        mse = F.mse_loss(reconstruction.float(), images.float())
        return mse + self.config.train.kld_weight * kl_per_element(mean.float(), logvar.float())

    def _validation_images(self) -> torch.Tensor:
        return torch.stack([self.val_dataset[i]["image"] for i in spread(range(len(self.val_dataset)),
                                                                          self.config.validation.num_images)])

    def validate(self, model: AutoencoderKL, step: int, folder: Path) -> dict[str, float]:
        images = self._validation_images().to(self.accelerator.device)
        reconstruction = model.decode(model.encode(images).latent_dist.mode()).sample.float().clamp(-1, 1)
        mse_unit = F.mse_loss((reconstruction + 1) / 2, (images.float() + 1) / 2).item()  # on the [0, 1] scale
        psnr = 10 * math.log10(1.0 / max(mse_unit, 1e-12))
        save_grid(folder / f"step_{step:07d}.png",
                  [[to_unit(x) for x in images], [to_unit(x) for x in reconstruction]],
                  column_titles=[f"#{i}" for i in range(len(images))], row_titles=["input", "reconstruction"],
                  title=f"VAE step {step}: MSE {mse_unit:.5f} (0-1 scale), PSNR {psnr:.2f} dB")
        return {"mse": mse_unit, "psnr": psnr}

    @torch.no_grad()
    def estimated_scaling_factor(self, model: AutoencoderKL) -> float:
        """1 / std of posterior samples over up to SCALING_SAMPLE_IMAGES training images."""
        picks = spread(range(len(self.train_dataset)), SCALING_SAMPLE_IMAGES)
        generator = torch.Generator().manual_seed(self.config.seed)
        samples = []
        for start in range(0, len(picks), 32):
            images = torch.stack([self.train_dataset[i]["image"] for i in picks[start:start + 32]])
            posterior = model.encode(images.to(self.accelerator.device)).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator).to(posterior.mean.device)
            samples.append((posterior.mean + posterior.std * noise).float().cpu())
        return float(1.0 / torch.cat(samples).std())

    def export(self, model: AutoencoderKL, folder: Path) -> None:
        if self.config.train.estimate_scaling_factor:
            factor = self.estimated_scaling_factor(model)
            log.info("scaling_factor set to %.5f (1 / latent std; config had %s)", factor, model.config.scaling_factor)
            model.register_to_config(scaling_factor=factor)
        model.save_pretrained(folder / VAE)


def train_vae(config: VAEConfig, resume: str | None = None) -> Path:
    """Train the VAE; returns the pipeline folder (``<output_dir>/pipeline`` with ``vae/``)."""
    return run_training(config, lambda accelerator: VAEStage(config, accelerator), resume)
