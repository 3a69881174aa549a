"""What the UNet and ControlNet stages share: frozen models, latents, timesteps, prompts, sampling."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from diffusers import (AutoencoderKL, ControlNetModel, DDIMScheduler, DDPMScheduler, ModelMixin,
                       UNet2DConditionModel)

from mrgen.config import DiffusionModelSection, DiffusionTrainSection
from mrgen.data.prompts import EMPTY_PROMPT
from mrgen.io.atomic import atomic_write_json
from mrgen.models.builders import SCHEDULER, SCHEDULER_CONFIG, ModelFolderError, scheduler_config
from mrgen.models.pipeline_folder import TextEncoderSpec
from mrgen.models.sampling import denoise
from mrgen.models.text_encoders import PromptEmbeddings
from mrgen.training.latent_cache import CachedLatentDataset, LatentCache
from mrgen.training.sample_keys import (NOISE, POSTERIOR, PROMPT_DROPOUT, SAMPLE_KEY, TIMESTEP, keyed_normal,
                                       keyed_uniform)

log = logging.getLogger(__name__)


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """The dtype of frozen models: half precision under mixed precision, as the original."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def freeze(model: ModelMixin, device: torch.device, dtype: torch.dtype) -> ModelMixin:
    """Frozen, eval mode, on the device; never passed through ``accelerator.prepare``."""
    model.requires_grad_(False)
    model.eval()
    model.to(device)
    return model if model.dtype == dtype else model.to(dtype=dtype)


def set_attention(model: ModelMixin, attention: str) -> None:
    if attention == "xformers":
        model.enable_xformers_memory_efficient_attention()  # raises with install advice if xformers is absent


def require_pretrained_path(model: DiffusionModelSection, stage: str, needs: str) -> Path:
    if not model.pretrained_model_path:
        raise ValueError(f"{stage} stage: model.pretrained_model_path is required: a pipeline folder holding {needs} "
                         f"(a previous stage's <output_dir>/pipeline, or the released MRGen checkpoints)")
    return Path(model.pretrained_model_path)


def sample_timesteps(u: torch.Tensor, num_train_timesteps: int, mode: str) -> torch.Tensor:
    """Timesteps from uniform numbers ``u`` in [0, 1): ``uniform`` over {0..T-1} (the original), or ``cubic``:
    t = (1 - u^3) T, biased to high noise."""
    fraction = u if mode == "uniform" else 1.0 - u ** 3
    return (fraction * num_train_timesteps).long().clamp(max=num_train_timesteps - 1)


def drop_prompts(prompts: Sequence[str], probability: float, u: torch.Tensor) -> list[str]:
    """The classifier-free-guidance null prompt where the sample's uniform number ``u`` is below ``probability``."""
    return [EMPTY_PROMPT if v < probability else p for p, v in zip(prompts, u.tolist())]


def shared_prompt_embeddings(accelerator: Accelerator, spec: TextEncoderSpec, prompts: Sequence[str],
                             dtype: torch.dtype) -> PromptEmbeddings:
    """Encode every prompt once on the main process and hand the table to all processes, on device."""
    spec.check()  # on every process, so a bad folder is an error everywhere rather than a hang
    payload: list[Any] = [None]
    if accelerator.is_main_process:
        encoder = spec.load().to(accelerator.device)
        table = PromptEmbeddings.encode(encoder, sorted(set(prompts) | {EMPTY_PROMPT}))
        log.info("encoded %d distinct prompts with %s (%d wide)", len(table.index), spec.kind, encoder.width)
        payload = [(list(table.index), table.embeddings)]
        del encoder
    if accelerator.num_processes > 1:
        broadcast_object_list(payload)
    names, embeddings = payload[0]
    return PromptEmbeddings(names, embeddings).to(accelerator.device, dtype)


def check_width(unet_config: dict[str, Any], table: PromptEmbeddings, spec: TextEncoderSpec) -> None:
    if unet_config["cross_attention_dim"] != table.width:
        raise ValueError(f"the UNet's cross_attention_dim is {unet_config['cross_attention_dim']} but the {spec.kind} "
                         f"text encoder is {table.width} wide; use a model config made for it (ckpt/tiny for minilm "
                         f"(384), ckpt for biomedclip (768))")


class Latents:
    """Scaled training latents: a posterior sample of the frozen VAE, or of its cached posterior."""

    def __init__(self, vae: AutoencoderKL, cached: bool):
        self.vae, self.cached = vae, cached
        self.scaling_factor = float(vae.config.scaling_factor)

    def __call__(self, batch: dict[str, Any]) -> torch.Tensor:
        if self.cached:
            mean = batch["latent_mean"].to(self.vae.device)
            std = batch["latent_std"].to(self.vae.device)
        else:
            with torch.no_grad():
                posterior = self.vae.encode(batch["image"].to(device=self.vae.device, dtype=self.vae.dtype)).latent_dist
            mean, std = posterior.mean.float(), posterior.std.float()
        noise = keyed_normal(batch[SAMPLE_KEY], POSTERIOR, tuple(mean.shape[1:]), mean.device)
        return (mean + std * noise) * self.scaling_factor


class Noiser:
    """(noisy latents, timesteps, regression target, prompt context) for a batch: the forward process both stages
    share. The target is the noise for an epsilon-prediction schedule, the velocity for a v-prediction one."""

    def __init__(self, latents: Latents, scheduler: DDPMScheduler, prompts: PromptEmbeddings,
                 train: DiffusionTrainSection):
        self.latents, self.scheduler, self.prompts, self.train = latents, scheduler, prompts, train

    def __call__(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        keys = batch[SAMPLE_KEY]
        latents = self.latents(batch)
        noise = keyed_normal(keys, NOISE, tuple(latents.shape[1:]), latents.device)
        timesteps = sample_timesteps(keyed_uniform(keys, TIMESTEP, latents.device),
                                     self.scheduler.config.num_train_timesteps, self.train.timestep_sampling)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        context = self.prompts(drop_prompts(batch["prompt"], self.train.prompt_dropout,
                                            keyed_uniform(keys, PROMPT_DROPOUT)))
        velocity = self.scheduler.config.prediction_type == "v_prediction"
        target = self.scheduler.get_velocity(latents, noise, timesteps) if velocity else noise
        return noisy, timesteps, target, context

    def loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The MSE to the epsilon or v target, in fp32 (the original's loss)."""
        return F.mse_loss(prediction.float(), target.float())


def alpha_bar_at(scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """The cumulative signal fraction alpha_bar_t of each timestep, float32 on the timesteps' device."""
    return scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()


def predicted_x0(scheduler: DDPMScheduler, noisy: torch.Tensor, timesteps: torch.Tensor,
                 prediction: torch.Tensor) -> torch.Tensor:
    """The clean latent implied by a model output (epsilon or v, as the scheduler says)."""
    alpha_bar = alpha_bar_at(scheduler, timesteps).view(-1, 1, 1, 1)
    if scheduler.config.prediction_type == "v_prediction":
        return alpha_bar.sqrt() * noisy - (1 - alpha_bar).sqrt() * prediction
    return (noisy - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()


def training_schedule(pretrained: Path, model: DiffusionModelSection) -> dict[str, Any]:
    """The scheduler config a stage trains with: the pretrained pipeline's when it has one (the ControlNet stage),
    else the config folder's (the UNet stage), with ``model.prediction_type`` applied.

    Only the UNet stage may change the prediction type: a ControlNet must predict what its UNet predicts.
    """
    try:
        config, inherited = dict(scheduler_config(pretrained)), True
    except ModelFolderError:
        config, inherited = dict(scheduler_config(model.config_path)), False
    wanted = model.prediction_type
    if wanted and wanted != config["prediction_type"]:
        if inherited:
            raise ValueError(f"model.prediction_type is {wanted!r} but the UNet in {pretrained} was trained with "
                             f"{config['prediction_type']!r}; leave model.prediction_type unset here")
        config["prediction_type"] = wanted
    return config


def write_scheduler(folder: Path, config: dict[str, Any]) -> None:
    atomic_write_json(folder / SCHEDULER / SCHEDULER_CONFIG, config)


def training_dataset(dataset, vae: AutoencoderKL, train: DiffusionTrainSection, accelerator: Accelerator,
                     output_dir: Path, resolution: int):
    """The dataset as-is, or wrapped with cached latents when ``cache_latents`` is on."""
    if not train.cache_latents:
        return dataset
    folder = Path(train.latent_cache_dir) if train.latent_cache_dir else output_dir / "latent_cache"
    cache = LatentCache.build(folder, dataset, vae, accelerator, resolution, batch_size=train.train_batch_size,
                              num_workers=train.dataloader_num_workers)
    return CachedLatentDataset(dataset, cache)


def generate(
    unet: UNet2DConditionModel,
    vae: AutoencoderKL,
    scheduler: DDIMScheduler,
    context: torch.Tensor,
    null_context: torch.Tensor,
    latent_size: int,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    controlnet: ControlNetModel | None = None,
    control: torch.Tensor | None = None,
    conditioning_scale: float = 1.0,
    control_conditional_only: bool = False,
) -> torch.Tensor:
    """DDIM samples with classifier-free guidance for validation figures: (B, 1, H, W) in [-1, 1], on CPU.

    The noise comes from its own seeded generator, so figures at different steps are comparable and the
    training RNG is untouched.
    """
    shape = (context.shape[0], unet.config.in_channels, latent_size, latent_size)
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(context.device)
    return denoise(unet, vae, scheduler, latents, context, null_context, num_inference_steps, guidance_scale,
                   controlnet, control, conditioning_scale, control_conditional_only)
