"""The shared reverse-diffusion loop: where classifier-free guidance puts the ControlNet."""

from __future__ import annotations

from pathlib import Path

import torch

from mrgen.models import CONTROLNET, UNET, VAE, build_from_config, controlnet_from_unet, model_config, \
    sampling_scheduler, scheduler_config
from mrgen.models.sampling import denoise

TINY = Path(__file__).resolve().parents[1] / "ckpt" / "tiny"


def _models():
    torch.manual_seed(0)
    vae, unet = build_from_config(TINY, VAE), build_from_config(TINY, UNET)
    controlnet = controlnet_from_unet(unet, 1, tuple(model_config(TINY, CONTROLNET)["conditioning_embedding_out_channels"]))
    with torch.no_grad():  # zero convolutions would hide the ControlNet; give them weights
        for name, parameter in controlnet.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                parameter.normal_(std=0.1)
    return vae, unet, controlnet


def test_control_on_the_conditional_branch_only_leaves_the_unconditional_one_bare() -> None:
    vae, unet, controlnet = _models()
    batches: list[int] = []
    controlnet.register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    latents, context, null = torch.randn(2, 4, 16, 16), torch.randn(2, 77, 384), torch.randn(1, 77, 384)
    control = torch.rand(2, 1, 64, 64) * 2 - 1

    def sample(guidance: float, conditional_only: bool) -> torch.Tensor:
        scheduler = sampling_scheduler(scheduler_config(TINY))
        return denoise(unet, vae, scheduler, latents, context, null, 2, guidance, controlnet, control,
                       control_conditional_only=conditional_only)

    both, conditional = sample(3.0, False), sample(3.0, True)
    assert batches == [4, 4, 2, 2]
    assert not torch.allclose(both, conditional)
    torch.testing.assert_close(sample(1.0, True), sample(1.0, False))
