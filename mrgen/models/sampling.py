"""The reverse diffusion loop shared by validation figures and synthesis.

Classifier-free guidance runs the unconditional and conditional branches in one batched forward. An
optional ControlNet sees the same condition in both halves (the original's setting), or, with
``control_conditional_only``, only the conditional half, so that the guidance scale amplifies the mask's
effect together with the prompt's (as diffusers' guess mode does, without its per-block residual ramp).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel


@torch.no_grad()
def denoise(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler: Any,
    latents: torch.Tensor,
    context: torch.Tensor,
    null_context: torch.Tensor,
    num_inference_steps: int,
    guidance_scale: float,
    controlnet: ControlNetModel | None = None,
    control: torch.Tensor | None = None,
    conditioning_scale: float = 1.0,
    control_conditional_only: bool = False,
) -> torch.Tensor:
    """Initial noise ``latents`` (B, C, h, w) -> decoded images (B, 1, H, W) in [-1, 1], float32 on the CPU."""
    guided = guidance_scale > 1.0
    embeddings = torch.cat([null_context.expand_as(context), context]) if guided else context
    half = len(latents) if guided and control_conditional_only else 0  # where the ControlNet's part of the batch starts
    if control is not None and guided and not half:
        control = torch.cat([control, control])
    scheduler.set_timesteps(num_inference_steps, device=latents.device)
    latents = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(torch.cat([latents, latents]) if guided else latents, t)
        extra: dict[str, Any] = {}
        if controlnet is not None:
            down, mid = controlnet(model_input[half:], t, encoder_hidden_states=embeddings[half:],
                                   controlnet_cond=control, conditioning_scale=conditioning_scale, return_dict=False)
            if half:
                down, mid = [_pad_unconditional(r) for r in down], _pad_unconditional(mid)
            extra = {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
        noise = unet(model_input, t, encoder_hidden_states=embeddings, return_dict=False, **extra)[0]
        if guided:
            unconditional, conditional = noise.chunk(2)
            noise = unconditional + guidance_scale * (conditional - unconditional)
        latents = scheduler.step(noise, t, latents, return_dict=False)[0]
    images = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return images.float().clamp(-1.0, 1.0).cpu()


def _pad_unconditional(residual: torch.Tensor) -> torch.Tensor:
    """A residual for the conditional half only -> the batched one (zeros for the unconditional half)."""
    return torch.cat([torch.zeros_like(residual), residual])


def forward_passes(batch: int, num_inference_steps: int, guidance_scale: float) -> int:
    """UNet evaluations ``denoise`` spends on ``batch`` samples, counted per sample (the ControlNet runs as often,
    or half as often with ``control_conditional_only``)."""
    return batch * num_inference_steps * (2 if guidance_scale > 1.0 else 1)
