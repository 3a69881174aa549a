"""Stage 3: the mask-conditioned ControlNet for one source -> target pair (reference 3.3, 4.4, 4.5).

The ControlNet starts as a copy of the trained UNet's encoder (``ControlNetModel.from_unet``); the UNet,
VAE and text encoder stay frozen (the UNet is moved to the device, never prepared). Batches mix
source-modality slices with their encoded organ masks and unannotated target-modality slices with an
empty (all -1) condition and the target prompt (``PairDataset``). Loss: the UNet's epsilon (or v) MSE with the
ControlNet's residuals added.

With ``self_training.enabled`` (ours, docs/mask_following.md) the frozen UNet, steered by organ-word attention
(``mrgen.models.organ_attention``), first renders training source masks in the target modality
(``mrgen.training.self_samples``); the ones whose every organ the offline segmenter finds near its mask join the pairs
as annotated target-modality slices, with the segmented organ regions as their masks, so the ControlNet learns the
target look of the organs it places.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import ControlNetModel, UNet2DConditionModel

from mrgen.config import ControlNetConfig
from mrgen.data.datasets import PairDataset, load_condition, spread
from mrgen.data.preprocess import preprocess_image, signed_to_uint8
from mrgen.data.prompts import EMPTY_PROMPT
from mrgen.filtering.mask_following import derangement, mask_following
from mrgen.io.atomic import atomic_write_json
from mrgen.io.images import read_gray
from mrgen.models.builders import (
    CONTROLNET,
    UNET,
    VAE,
    controlnet_from_unet,
    load_pretrained,
    model_config,
    noise_scheduler,
    sampling_scheduler,
    vae_scale_factor,
)
from mrgen.models.organ_attention import OrganAttention
from mrgen.models.pipeline_folder import (
    TextEncoderSpec,
    export_frozen,
    text_encoder_spec,
    write_text_encoder,
)
from mrgen.training.data import registry_for
from mrgen.training.diffusion import (
    Latents,
    Noiser,
    check_width,
    freeze,
    generate,
    predicted_x0,
    require_pretrained_path,
    set_attention,
    shared_prompt_embeddings,
    training_dataset,
    training_schedule,
    weight_dtype,
    write_scheduler,
)
from mrgen.training.harness import run_training
from mrgen.training.self_samples import SELF_SAMPLES_DIR, SelfSamplePairs, SelfSampler, kept_self_samples
from mrgen.training.visuals import (
    colour_masks,
    outline_masks,
    overlay_masks,
    save_grid,
    to_unit,
)

log = logging.getLogger(__name__)
COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "grey")
PAIR_FILE = "pair.json"
MASK_USAGE_TIME = 0.8  # fraction of the training timesteps at which validation measures the mask's use


def text_encoder_of(pretrained: Path, kind: str, path: str | None) -> TextEncoderSpec:
    """The encoder the UNet was trained with; the config may relocate it but not change its kind."""
    recorded = text_encoder_spec(pretrained)
    if recorded.kind != kind:
        raise ValueError(f"model.text_encoder is {kind!r} but the UNet in {pretrained} was trained with "
                         f"{recorded.kind!r}; the ControlNet must use the UNet's text encoder")
    return TextEncoderSpec(kind, Path(path) if path else recorded.path)


def controlled_prediction(controlnet: torch.nn.Module, unet: UNet2DConditionModel, noisy: torch.Tensor,
                          timesteps: torch.Tensor, context: torch.Tensor, condition: torch.Tensor,
                          dtype: torch.dtype) -> torch.Tensor:
    """The UNet's noise prediction with the ControlNet's residuals added (the UNet runs in ``dtype``)."""
    down, mid = controlnet(noisy, timesteps, encoder_hidden_states=context, controlnet_cond=condition,
                           return_dict=False)
    return unet(noisy.to(dtype), timesteps, encoder_hidden_states=context,
                down_block_additional_residuals=[d.to(dtype) for d in down],
                mid_block_additional_residual=mid.to(dtype)).sample


class ControlNetStage:
    name = CONTROLNET

    def __init__(self, config: ControlNetConfig, accelerator: Accelerator, output_dir: Path):
        if config.data is None:
            raise ValueError("the ControlNet stage needs a data: section (the source/target pair); see "
                             "training_configs/controlnet/*.yml")
        self.config, self.accelerator, self.pair = config, accelerator, config.data
        model, train = config.model, config.train
        self.pretrained = require_pretrained_path(model, "ControlNet", "the trained vae/ and unet/")
        if config.self_training.enabled and train.cache_latents:
            raise ValueError("train.cache_latents is not supported with self_training.enabled (the self-samples are "
                             "not in the latent cache); set it to false")
        self.dtype = weight_dtype(accelerator)
        self.vae = freeze(load_pretrained(self.pretrained, VAE), accelerator.device, self.dtype)
        self.resolution = model.resolution or int(self.vae.config.sample_size)
        self.latent_size = self.resolution // vae_scale_factor(self.vae.config)
        dataset = PairDataset(self.pair, self.resolution, registry_for(config.modality_attributes),
                              prompt_dropout=0.0, seed=config.seed)
        unet = load_pretrained(self.pretrained, UNET)
        self.trained_model: ControlNetModel = self._make_controlnet(unet, dataset.condition_channels)
        self.module = self.trained_model
        self.unet = freeze(unet, accelerator.device, self.dtype)
        for network in (self.unet, self.trained_model):
            set_attention(network, model.attention)
        self.scheduler_config = training_schedule(self.pretrained, model)
        self.text_spec = text_encoder_of(self.pretrained, model.text_encoder, model.text_encoder_path)
        self.prompts = shared_prompt_embeddings(accelerator, self.text_spec, dataset.prompts, self.dtype)
        check_width(self.unet.config, self.prompts, self.text_spec)
        self.validation_items = dataset.validation_items(config.validation.num_images)
        following = config.validation.mask_following_images
        self.following_items = dataset.validation_items(following) if following > 1 else []
        self.real_reference: dict[str, float] | None = None  # computed at the first validation
        if config.self_training.enabled:
            self.train_dataset = self._with_self_samples(dataset, output_dir / SELF_SAMPLES_DIR)
        else:
            self.train_dataset = training_dataset(dataset, self.vae, train, accelerator, output_dir, self.resolution)
        self.noiser = Noiser(Latents(self.vae, cached=train.cache_latents), noise_scheduler(self.scheduler_config),
                             self.prompts, train)

    def _with_self_samples(self, dataset: PairDataset, folder: Path) -> SelfSamplePairs:
        """The pairs plus the kept self-samples, rendered by the frozen UNet under organ-word attention (on the main
        process; the UNet's attention processors are restored afterwards)."""
        options = self.config.self_training
        attention = OrganAttention(self.unet, self.text_spec.load_tokenizer(), self.pair.organs, options.organ_weight,
                                   int(self.scheduler_config["num_train_timesteps"]))
        sampler = SelfSampler(attention, self.vae, self.prompts, self.scheduler_config, options, self.config.seed)
        with attention:
            kept = kept_self_samples(sampler, self.accelerator, folder, dataset, self.resolution)
        return SelfSamplePairs(dataset, kept, self.pair, options.share)

    def _make_controlnet(self, unet, condition_channels: int) -> ControlNetModel:
        model = self.config.model
        if model.init_from:
            controlnet = load_pretrained(model.init_from, CONTROLNET)
        else:
            embedding = tuple(model_config(model.config_path, CONTROLNET)["conditioning_embedding_out_channels"])
            controlnet = controlnet_from_unet(unet, condition_channels, embedding)
        if controlnet.config.conditioning_channels != condition_channels:
            raise ValueError(f"the ControlNet takes {controlnet.config.conditioning_channels} condition channels but "
                             f"the intensity-coded mask has {condition_channels}")
        embedding_factor = 2 ** (len(controlnet.config.conditioning_embedding_out_channels) - 1)
        if embedding_factor != vae_scale_factor(self.vae.config):
            raise ValueError(f"the ControlNet's conditioning embedding downsamples {embedding_factor}x but the VAE "
                             f"{vae_scale_factor(self.vae.config)}x; conditioning_embedding_out_channels needs "
                             f"log2(factor) + 1 entries")
        return controlnet

    def loss(self, module: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        noisy, timesteps, target, context = self.noiser(batch)
        condition = batch["condition"].to(noisy.device)
        prediction = controlled_prediction(module, self.unet, noisy, timesteps, context, condition, self.dtype)
        return self.noiser.loss(prediction, target)

    def _samples(self, model: ControlNetModel, prompts: list[str], control: torch.Tensor) -> torch.Tensor:
        validation = self.config.validation
        return generate(self.unet, self.vae, sampling_scheduler(self.scheduler_config), self.prompts(prompts),
                        self.prompts([EMPTY_PROMPT]), self.latent_size, validation.num_inference_steps,
                        validation.guidance_scale, seed=self.config.seed, controlnet=model, control=control,
                        conditioning_scale=validation.conditioning_scale,
                        control_conditional_only=validation.control_conditional_only)

    def validate(self, model: ControlNetModel, step: int, folder: Path) -> dict[str, float]:
        """Per mask: the condition, the source slice, and samples with the source and the target prompt."""
        conditions = torch.stack([item[0] for item in self.validation_items])
        control = conditions.to(self.accelerator.device)
        source = self._samples(model, [item[1] for item in self.validation_items], control)
        target = self._samples(model, [item[2] for item in self.validation_items], control)
        rows = []
        for (condition, _, _, image), src, tgt in zip(self.validation_items, source, target):
            masks = self.pair.encoding.decode(condition.numpy(), len(self.pair.organs))
            shape = masks[0].shape
            rows.append([colour_masks(masks, shape), overlay_masks(to_unit(image), masks),
                         outline_masks(to_unit(src), masks), to_unit(tgt), outline_masks(to_unit(tgt), masks)])
        legend = ", ".join(f"{organ} {COLOUR_NAMES[i % len(COLOUR_NAMES)]}" for i, organ in enumerate(self.pair.organs))
        save_grid(folder / f"step_{step:07d}.png", rows,
                  column_titles=["condition mask", "source slice + mask", "sample, source prompt",
                                 f"sample, target prompt ({self.pair.target_modality})", "target sample + outlines"],
                  title=f"{self.pair.name} ControlNet step {step} ({legend}); DDIM "
                        f"{self.config.validation.num_inference_steps}, CFG {self.config.validation.guidance_scale}")
        if len(self.following_items) < 2:
            return {}
        usage = self._mask_usage(model)
        if self.real_reference is None:
            self.real_reference = self._real_target_reference()
        return {**usage, **self._mask_following(model, step, folder, usage), **self.real_reference}

    @torch.no_grad()
    def _mask_usage(self, model: ControlNetModel) -> dict[str, float]:
        """Without sampling: the controlled UNet's error on the clean latent of the validation source slices at
        t = 0.8 T (where the layout is still open), with their own masks and with shuffled ones. A ControlNet
        that uses its mask has a clearly lower error with its own; the two are equal at step 0."""
        items, device, scheduler = self.following_items, self.accelerator.device, self.noiser.scheduler
        images = torch.stack([item[3] for item in items]).to(device, self.vae.dtype)
        latents = self.vae.encode(images).latent_dist.mean.float() * self.vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(self.config.seed)).to(device)
        timesteps = torch.full((len(items),), int(MASK_USAGE_TIME * scheduler.config.num_train_timesteps), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        context = self.prompts([item[1] for item in items])
        conditions = torch.stack([item[0] for item in items]).to(device)
        errors = []
        for condition in (conditions, conditions[derangement(len(items), np.random.default_rng(self.config.seed))]):
            prediction = controlled_prediction(model, self.unet, noisy, timesteps, context, condition, self.dtype)
            errors.append(F.mse_loss(predicted_x0(scheduler, noisy, timesteps, prediction.float()), latents).item())
        return {"mask_x0_mse": errors[0], "mask_x0_mse_shuffled": errors[1]}

    def _mask_following(self, model: ControlNetModel, step: int, folder: Path,
                        usage: dict[str, float]) -> dict[str, float]:
        """Target-prompt samples scored against their own masks and against shuffled ones (the floor)."""
        conditions = torch.stack([item[0] for item in self.following_items])
        samples = self._samples(model, [item[2] for item in self.following_items],
                                conditions.to(self.accelerator.device))
        organs = len(self.pair.organs)
        result = mask_following([signed_to_uint8(sample[0].numpy()) for sample in samples],
                                [self.pair.encoding.decode(c.numpy(), organs) for c in conditions],
                                self.pair.organs, seed=self.config.seed)
        with open(folder / "mask_following.md", "a", encoding="utf-8") as table:
            table.write(f"\n## step {step} ({len(samples)} target-prompt samples)\n\n{result.table()}\n\n"
                        f"Clean-latent error of the source slices at t = {MASK_USAGE_TIME:g} T: {usage['mask_x0_mse']:.4f} "
                        f"with their own masks, {usage['mask_x0_mse_shuffled']:.4f} with shuffled masks (lower with "
                        f"their own: the ControlNet uses the mask).\n")
        own, floor = result.own["all"], result.floor["all"]
        return {"mask_iou": own.mean_iou, "mask_iou_floor": floor.mean_iou,
                "mask_fraction_above_0.7": own.fraction_above, "mask_fraction_above_0.7_floor": floor.fraction_above,
                "mask_fraction_brighter": own.fraction_brighter}

    def _real_target_reference(self) -> dict[str, float]:
        """Real annotated target slices (``validation.target_reference_indexes``) scored as the samples are: the
        ceiling of the fraction above 0.7 and the target's polarity. Empty without such indexes."""
        entries = [e for e in self.pair.load(self.config.validation.target_reference_indexes)
                   if set(e.organs) & set(self.pair.organs)]
        if len(entries) < 2:
            return {}
        chosen = spread(entries, len(self.following_items))
        organs = len(self.pair.organs)
        result = mask_following([signed_to_uint8(preprocess_image(read_gray(e.image_path), self.resolution))
                                 for e in chosen],
                                [self.pair.encoding.decode(load_condition(self.pair, e, self.resolution), organs)
                                 for e in chosen], self.pair.organs, seed=self.config.seed)
        real = result.own["all"]
        return {"mask_fraction_above_0.7_real": real.fraction_above, "mask_fraction_brighter_real": real.fraction_brighter}

    def export(self, model: ControlNetModel, folder: Path) -> None:
        model.save_pretrained(folder / CONTROLNET)
        export_frozen(self.pretrained, folder, (VAE, UNET))
        write_scheduler(folder, self.scheduler_config)
        write_text_encoder(folder, self.text_spec)
        atomic_write_json(folder / PAIR_FILE, dataclasses.asdict(self.pair))



def train_controlnet(config: ControlNetConfig, resume: str | None = None) -> Path:
    """Train a pair's ControlNet; returns its pipeline folder (``controlnet/`` plus the frozen models)."""
    output_dir = Path(config.output_dir)
    return run_training(config, lambda accelerator: ControlNetStage(config, accelerator, output_dir), resume)
