"""Mask-conditioned sampling: VAE + UNet + ControlNet + a scheduler, classifier-free guidance batched.

The conditional and unconditional branches run in one forward pass (the batch is doubled); the
ControlNet sees the same mask in both halves, as in the original (guess mode off). Every candidate's
initial noise comes from its own seed (``mrgen.synthesis.seeds``), so any single sample can be
regenerated exactly from its recorded seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

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
class ControlNetSampler:
    vae: Any
    unet: Any
    controlnet: Any
    text_encoder: TextEncoder
    scheduler: Any
    steps: int = 50
    guidance_scale: float = 7.0
    controlnet_scale: float = 1.0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    unet_evaluations: int = 0
    _contexts: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def uses_guidance(self) -> bool:
        return self.guidance_scale > 1.0

    @property
    def evaluations_per_sample(self) -> int:
        """UNet (+ ControlNet) forward passes one candidate costs."""
        return self.steps * (2 if self.uses_guidance else 1)

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
        size = condition.shape[-1]
        batch = len(seeds)
        latents = initial_noise(seeds, self.latent_shape(size)).to(self.device, self.dtype)
        self.scheduler.set_timesteps(self.steps, device=self.device)
        latents = latents * self.scheduler.init_noise_sigma
        control = condition.to(self.device, self.dtype)[None].expand(batch, -1, -1, -1)
        context = self._context(prompt).expand(batch, -1, -1)
        if self.uses_guidance:
            context = torch.cat([self._context("").expand(batch, -1, -1), context])
            control = torch.cat([control, control])
        for t in self.scheduler.timesteps:
            model_input = torch.cat([latents, latents]) if self.uses_guidance else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            down, mid = self.controlnet(model_input, t, encoder_hidden_states=context, controlnet_cond=control,
                                        conditioning_scale=self.controlnet_scale, return_dict=False)
            noise = self.unet(model_input, t, encoder_hidden_states=context, down_block_additional_residuals=down,
                              mid_block_additional_residual=mid, return_dict=False)[0]
            self.unet_evaluations += model_input.shape[0]
            if self.uses_guidance:
                unconditional, conditional = noise.chunk(2)
                noise = unconditional + self.guidance_scale * (conditional - unconditional)
            latents = self.scheduler.step(noise, t, latents, return_dict=False)[0]
        images = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        return images.float().clamp(-1, 1).cpu()
