"""Mask-conditioned sampling for synthesis: the shared denoising loop (``mrgen.models.sampling``) with
per-candidate seeds (``mrgen.synthesis.seeds``), so any single sample can be regenerated exactly from its
recorded seed, and a count of the UNet evaluations spent. The mask reaches the UNet through a ControlNet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

from mrgen.models.sampling import denoise, forward_passes
from mrgen.synthesis.seeds import initial_noise

SCHEDULERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "ddim": lambda config: DDIMScheduler.from_config(config),
    "dpm-solver++": lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
    "unipc": lambda config: UniPCMultistepScheduler.from_config(config),
}


def make_scheduler(name: str, config: dict[str, Any]) -> Any:
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name](config)


class TextEncoder(Protocol):
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(B, tokens, width) token embeddings the UNet attends to."""
        ...


@dataclass
class MaskSampler:
    vae: Any
    unet: Any
    controlnet: Any
    text_encoder: TextEncoder
    scheduler: Any
    steps: int = 50
    guidance_scale: float = 7.0
    controlnet_scale: float = 1.0
    control_conditional_only: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    unet_evaluations: int = 0
    _contexts: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    def _context(self, prompt: str) -> torch.Tensor:
        if prompt not in self._contexts:
            with torch.no_grad():
                self._contexts[prompt] = self.text_encoder.encode([prompt]).to(self.device, self.dtype)
        return self._contexts[prompt]

    def latent_shape(self, size: int) -> tuple[int, int, int]:
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if size % factor:
            raise ValueError(f"image size {size} is not a multiple of the VAE's downsampling factor {factor}")
        return self.vae.config.latent_channels, size // factor, size // factor

    @torch.no_grad()
    def generate(self, condition: torch.Tensor, prompt: str, seeds: list[int]) -> torch.Tensor:
        """``condition`` (C, S, S) in [-1, 1] -> images (len(seeds), 1, S, S) in [-1, 1], on the CPU."""
        batch = len(seeds)
        latents = initial_noise(seeds, self.latent_shape(condition.shape[-1])).to(self.device, self.dtype)
        control = condition.to(self.device, self.dtype)[None].expand(batch, -1, -1, -1)
        images = denoise(self.unet, self.vae, self.scheduler, latents, self._context(prompt).expand(batch, -1, -1),
                         self._context(""), self.steps, self.guidance_scale, self.controlnet, control,
                         self.controlnet_scale, self.control_conditional_only)
        self.unet_evaluations += forward_passes(batch, self.steps, self.guidance_scale)
        return images


def make_mask_sampler(parts: Any, scheduler: str, steps: int, guidance_scale: float,
                      controlnet_scale: float = 1.0, control_conditional_only: bool = False,
                      device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> MaskSampler:
    """A sampler from loaded pipeline components (``mrgen.models.pipeline_folder.PipelineComponents``)."""
    if parts.unet is None or parts.scheduler_config is None:
        raise ValueError("the pipeline folder must hold vae/, unet/ and scheduler/")
    if parts.controlnet is None:
        raise ValueError("nothing conditions on the mask: give a ControlNet (controlnet/ in the pipeline folder or "
                         "--controlnet)")
    return MaskSampler(parts.vae, parts.unet, parts.controlnet, parts.text_encoder,
                       make_scheduler(scheduler, parts.scheduler_config), steps, guidance_scale, controlnet_scale,
                       control_conditional_only, torch.device(device), dtype)
