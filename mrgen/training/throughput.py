"""Timing the stages' optimizer steps on random data: samples/s, peak memory and model FLOP/s.

Used by ``scripts/bench_training.py`` (CPU and GPU throughput tables) and ``scripts/gpu_check.py`` (one call on a
CUDA machine). A step is the stage's full training step: forward, backward, gradient clipping and the optimizer
step; the UNet and ControlNet steps include the frozen VAE's encoding, as the original (no latent cache), and take
a precomputed text context, as training does (prompt embeddings are cached).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mrgen.config import TrainSection
from mrgen.models import build_from_config, controlnet_from_unet, model_config
from mrgen.training import optim
from mrgen.training.diffusion import set_attention
from mrgen.training.vae_stage import VAETrainingModule, kl_per_element

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STAGES = ("vae", "unet", "controlnet")


def make_step(stage: str, root: Path, batch: int, device: torch.device, precision: str = "no",
              checkpointing: bool = False, attention: str = "sdpa") -> tuple[torch.nn.Module, Callable[[], torch.Tensor]]:
    """(the trained model, a function computing one step's loss) for a stage built from the configs in ``root``."""
    vae = build_from_config(root, "vae").to(device)
    size = int(vae.config.sample_size)
    images = torch.rand(batch, 1, size, size, device=device) * 2 - 1
    autocast = torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "no")
    if stage == "vae":
        module = VAETrainingModule(vae)
        if checkpointing:
            vae.enable_gradient_checkpointing()

        def vae_step() -> torch.Tensor:
            with autocast:
                reconstruction, mean, logvar = module(images)
                return F.mse_loss(reconstruction.float(), images) + 1e-4 * kl_per_element(mean.float(), logvar.float())
        return vae, vae_step

    vae.requires_grad_(False).eval().to(DTYPES[precision])
    unet = build_from_config(root, "unet").to(device)
    set_attention(unet, attention)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim, device=device)
    timesteps = torch.randint(0, 1000, (batch,), device=device)
    trained = unet
    if stage == "controlnet":
        embedding = tuple(model_config(root, "controlnet")["conditioning_embedding_out_channels"])
        trained = controlnet_from_unet(unet, 1, embedding).to(device)
        set_attention(trained, attention)
        unet.requires_grad_(False).eval()
        condition = torch.rand(batch, 1, size, size, device=device) * 2 - 1
    if checkpointing:
        trained.enable_gradient_checkpointing()

    def diffusion_step() -> torch.Tensor:
        with torch.no_grad():
            latents = vae.encode(images.to(vae.dtype)).latent_dist.sample().float() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        noisy = latents + noise  # the noise level does not change the cost
        with autocast:
            if stage == "unet":
                prediction = unet(noisy, timesteps, context).sample
            else:
                down, mid = trained(noisy, timesteps, context, controlnet_cond=condition, return_dict=False)
                prediction = unet(noisy, timesteps, context, down_block_additional_residuals=down,
                                  mid_block_additional_residual=mid).sample
        return F.mse_loss(prediction.float(), noise)
    return trained, diffusion_step


def make_optimizer(model: torch.nn.Module, device: torch.device, eight_bit: bool = False) -> torch.optim.Optimizer:
    """The training stages' optimizer (mrgen.training.optim) at a small learning rate."""
    train = TrainSection(learning_rate=1e-5, use_8bit_adam=eight_bit)
    return optim.make_optimizer(model.parameters(), train, device)


def time_steps(model: torch.nn.Module, step: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer,
               device: torch.device, precision: str, steps: int, warmup: int) -> dict[str, float]:
    """Seconds per full optimizer step after ``warmup`` steps, and peak memory (CUDA: allocated; CPU: process
    RSS, which includes everything the process ever held)."""
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    started = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            started = time.perf_counter()
        scaler.scale(step()).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"s_per_step": elapsed / steps, "peak_gb": peak / 2**30}


def step_flops(model: torch.nn.Module, step: Callable[[], torch.Tensor]) -> int:
    """Model FLOPs of one forward + backward (PyTorch's FLOP counter: matmuls and convolutions), no update."""
    with FlopCounterMode(display=False) as counter:
        step().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int = 8192, repeats: int = 20) -> float:
    """Measured dense matmul throughput of the device: the reference that model FLOP/s are compared with."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12
