"""Stage 2: the text-conditioned latent-diffusion UNet, trained from scratch (reference 3.2, 4.3).

Frozen VAE and text encoder; latents are posterior samples times ``scaling_factor``; epsilon-prediction
MSE at timesteps drawn uniformly (or by the ``cubic`` option); 10 % of prompts replaced by the empty
prompt for classifier-free guidance.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers import UNet2DConditionModel

from mrgen.config import UNetConfig
from mrgen.data.datasets import spread
from mrgen.data.prompts import EMPTY_PROMPT
from mrgen.models.builders import (UNET, VAE, build_from_config, load_pretrained, noise_scheduler,
                                   sampling_scheduler, vae_scale_factor)
from mrgen.models.pipeline_folder import TextEncoderSpec, export_frozen, write_text_encoder
from mrgen.training.diffusion import (training_schedule, write_scheduler, Latents, Noiser, check_width, freeze, generate, require_pretrained_path,
                                      set_attention, shared_prompt_embeddings, training_dataset,
                                      weight_dtype)
from mrgen.training.data import image_text_datasets
from mrgen.training.harness import run_training
from mrgen.training.visuals import save_grid, to_unit

log = logging.getLogger(__name__)


class UNetStage:
    name = UNET

    def __init__(self, config: UNetConfig, accelerator: Accelerator, output_dir: Path):
        self.config, self.accelerator = config, accelerator
        model, train = config.model, config.train
        self.pretrained = require_pretrained_path(model, "UNet", "the trained vae/")
        dtype = weight_dtype(accelerator)
        self.vae = freeze(load_pretrained(self.pretrained, VAE), accelerator.device, dtype)
        self.trained_model: UNet2DConditionModel = (load_pretrained(model.init_from, UNET) if model.init_from
                                                    else build_from_config(model.config_path, UNET))
        set_attention(self.trained_model, model.attention)
        self.module = self.trained_model
        if self.trained_model.config.in_channels != self.vae.config.latent_channels:
            raise ValueError(f"the UNet takes {self.trained_model.config.in_channels} channels but the VAE makes "
                             f"{self.vae.config.latent_channels}-channel latents; use matching configs")
        self.resolution = model.resolution or int(self.vae.config.sample_size)
        self.latent_size = self.resolution // vae_scale_factor(self.vae.config)
        self.scheduler_config = training_schedule(self.pretrained, model)
        self.noise_scheduler = noise_scheduler(self.scheduler_config)

        if train.cache_latents and config.data.augment:
            raise ValueError("train.cache_latents and data.augment exclude each other: cached latents are of the "
                             "unaugmented images")
        train_set, self.val_dataset = image_text_datasets(config.data, self.resolution, config.modality_attributes,
                                                          config.data.augment)
        encoder_path = Path(model.text_encoder_path) if model.text_encoder_path else None
        self.text_spec = TextEncoderSpec(model.text_encoder, encoder_path)
        self.validation_prompts = self._validation_prompts()
        self.prompts = shared_prompt_embeddings(accelerator, self.text_spec,
                                                train_set.prompts + self.validation_prompts, dtype)
        check_width(self.trained_model.config, self.prompts, self.text_spec)
        self.train_dataset = training_dataset(train_set, self.vae, train, accelerator, output_dir, self.resolution)
        self.noiser = Noiser(Latents(self.vae, cached=train.cache_latents), self.noise_scheduler, self.prompts, train)

    def _validation_prompts(self) -> list[str]:
        if self.config.validation.prompts:
            return list(self.config.validation.prompts)
        found = [p for p in self.val_dataset.prompts if p != EMPTY_PROMPT]
        return spread(found, self.config.validation.num_images)

    def loss(self, module: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        noisy, timesteps, target, context = self.noiser(batch)
        prediction = module(noisy, timesteps, encoder_hidden_states=context).sample
        return self.noiser.loss(prediction, target)

    def _real_image_for(self, prompt: str) -> torch.Tensor | None:
        for i, item in enumerate(self.val_dataset.slices):
            if item.prompt == prompt:
                return self.val_dataset[i]["image"]
        return None

    def validate(self, model: UNet2DConditionModel, step: int, folder: Path) -> dict[str, float]:
        validation = self.config.validation
        prompts = self.validation_prompts
        if not prompts:
            return {}
        samples = generate(model, self.vae, sampling_scheduler(self.scheduler_config), self.prompts(prompts),
                           self.prompts([EMPTY_PROMPT]), self.latent_size, validation.num_inference_steps,
                           validation.guidance_scale, seed=self.config.seed)
        real = [self._real_image_for(p) for p in prompts]
        blank = torch.full((1, self.resolution, self.resolution), -1.0)
        save_grid(folder / f"step_{step:07d}.png",
                  [[to_unit(x if x is not None else blank) for x in real], [to_unit(x) for x in samples]],
                  column_titles=prompts, row_titles=["real (test split)", "sample"],
                  title=f"UNet step {step}: DDIM {validation.num_inference_steps} steps, CFG {validation.guidance_scale}")
        return {}

    def export(self, model: UNet2DConditionModel, folder: Path) -> None:
        model.save_pretrained(folder / UNET)
        export_frozen(self.pretrained, folder, (VAE,))
        write_scheduler(folder, self.scheduler_config)
        write_text_encoder(folder, self.text_spec)


def train_unet(config: UNetConfig, resume: str | None = None) -> Path:
    """Train the UNet; returns the pipeline folder (``vae/``, ``unet/``, ``scheduler/``, text encoder record)."""
    output_dir = Path(config.output_dir)
    return run_training(config, lambda accelerator: UNetStage(config, accelerator, output_dir), resume)
