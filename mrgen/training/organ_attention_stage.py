"""Stage 3b: organ-word attention, self-trained on its own target-modality samples (docs/mask_following.md).

The renderer of the target-look self-samples the self-trained ControlNet learns from (stage 3c,
``self_training.organ_attention``). Starting from the trained UNet
with the organ-word bias attached untrained (``mrgen.models.organ_attention``, every layer's ``w`` at
``organ_attention.initial_weight``):

1. *self-samples*: ``organ_attention.self_samples`` annotated training source masks are rendered with the
   **target** prompt and the bias (DPM-Solver++, classifier-free guidance); the offline segmenter scores each
   against its masks and the ones whose organs' mean IoU reaches ``organ_attention.min_iou`` are kept. They are
   written in chunks under ``<output_dir>/self_samples/`` (``mrgen.training.self_samples``; a killed run keeps
   the finished chunks), with a picture of kept and rejected samples.
2. *training*: the UNet's cross-attention layers (or the whole UNet) and ``w`` learn, through the shared loop
   (``mrgen.training.harness``), the usual diffusion loss on batches that are half kept self-samples (target
   prompt, biased by their masks) and half real unannotated target slices (target prompt, unbiased, so the
   look stays anchored to real target images). The source slices themselves are never trained on: a model
   taught placement from source images ties it to the source look and prompt.

The pipeline folder holds ``unet/`` (trained), ``organ_attention/`` (the weights ``w``), ``vae/``, ``scheduler/``,
``text_encoder.json`` and ``pair.json``. It is not a synthesis checkpoint: organ attention alone accepted 0 of 252
candidates on the downstream benchmark and was removed as a synthesis path.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import Dataset

from mrgen.config import OrganAttentionConfig
from mrgen.data.datasets import PairDataset
from mrgen.data.preprocess import signed_to_uint8
from mrgen.data.prompts import EMPTY_PROMPT
from mrgen.filtering.mask_following import mask_following
from mrgen.io.atomic import atomic_write_json
from mrgen.models.builders import ORGAN_ATTENTION, UNET, VAE, load_pretrained, noise_scheduler, sampling_scheduler, \
    vae_scale_factor
from mrgen.models.organ_attention import OrganAttention, OrganAttentionWeights, new_organ_attention_weights
from mrgen.models.pipeline_folder import export_frozen, write_text_encoder
from mrgen.training.controlnet_stage import PAIR_FILE, text_encoder_of
from mrgen.training.data import registry_for
from mrgen.training.diffusion import (Latents, Noiser, check_width, drop_prompts, freeze, generate,
                                      require_pretrained_path, shared_prompt_embeddings, training_schedule,
                                      weight_dtype, write_scheduler)
from mrgen.training.harness import run_training
from mrgen.training.sample_keys import PROMPT_DROPOUT, SAMPLE_KEY, keyed_uniform
from mrgen.training.self_samples import SELF_SAMPLES_DIR, SelfSampler, kept_self_samples, organ_masks
from mrgen.training.visuals import colour_masks, outline_masks, save_grid, to_unit

log = logging.getLogger(__name__)


class BiasedUNet(torch.nn.Module):
    """UNet and organ-attention weights as the one prepared module; ``forward`` biases by the batch's masks."""

    def __init__(self, attention: OrganAttention):
        super().__init__()
        self.unet, self.weights = attention.unet, attention.weights
        self.attention = attention

    def forward(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                biased_prompts: list[str | None], masks: torch.Tensor) -> torch.Tensor:
        with self.attention.conditioned(biased_prompts, masks):
            return self.unet(noisy, timesteps, encoder_hidden_states=context).sample


class SelfTrainingDataset(Dataset):
    """Kept self-samples and real target slices, one to one: index ``2k`` a self-sample, ``2k + 1`` a target
    slice, each list cycled up to the longer one."""

    def __init__(self, samples: dict[str, np.ndarray], targets: PairDataset, organs: int, size: int):
        self.samples, self.targets = samples, targets
        self.n_self, self.n_target = len(samples["images"]), len(targets.targets)
        if self.n_self == 0:
            raise ValueError("no self-sample reached organ_attention.min_iou; lower it or sample more masks")
        if self.n_target == 0:
            raise ValueError(f"pair {targets.pair.name}: organ attention needs unannotated target slices "
                             f"(data.target_indexes, data.use_target_images=true)")
        self.empty_masks = torch.zeros(organs, size, size, dtype=torch.bool)

    def __len__(self) -> int:
        return 2 * max(self.n_self, self.n_target)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i % 2 == 0:
            k = (i // 2) % self.n_self
            image = torch.from_numpy(self.samples["images"][k]).float()[None] / 127.5 - 1.0
            return {"image": image, "prompt": str(self.samples["prompts"][k]), "biased": True,
                    "organ_masks": torch.from_numpy(self.samples["masks"][k])}
        item = self.targets[len(self.targets.sources) + (i // 2) % self.n_target]
        return {"image": item["image"], "prompt": item["prompt"], "biased": False, "organ_masks": self.empty_masks}


class OrganAttentionStage:
    name = UNET  # the trained model (its cross-attention layers); w is a companion

    def __init__(self, config: OrganAttentionConfig, accelerator: Accelerator, output_dir: Path):
        if config.data is None:
            raise ValueError("the organ attention stage needs a data: section (the source/target pair); see "
                             "training_configs/organ_attention/*.yml")
        self.config, self.accelerator, self.pair = config, accelerator, config.data
        self.options = options = config.organ_attention
        model, train = config.model, config.train
        self.pretrained = require_pretrained_path(model, "organ attention", "the trained vae/ and unet/")
        if train.cache_latents:
            raise ValueError("train.cache_latents is not supported by the organ attention stage: half of every batch "
                             "is this run's own samples; set it to false")
        self.dtype = weight_dtype(accelerator)
        self.vae = freeze(load_pretrained(self.pretrained, VAE), accelerator.device, self.dtype)
        self.resolution = model.resolution or int(self.vae.config.sample_size)
        self.latent_size = self.resolution // vae_scale_factor(self.vae.config)
        self.scheduler_config = training_schedule(self.pretrained, model)
        self.text_spec = text_encoder_of(self.pretrained, model.text_encoder, model.text_encoder_path)
        start = model.init_from or self.pretrained
        unet = load_pretrained(start, UNET).to(accelerator.device)
        weights = load_pretrained(model.init_from, ORGAN_ATTENTION) if model.init_from else \
            new_organ_attention_weights(unet, options.initial_weight)
        self.weights: OrganAttentionWeights = weights.to(accelerator.device)
        self.attention = OrganAttention(unet, self.weights, self.text_spec.load_tokenizer(), self.pair.organs,
                                        self.scheduler_config["num_train_timesteps"])
        self._select_trained(unet)
        self.trained_model = unet
        self.module = BiasedUNet(self.attention)
        self.companions = {ORGAN_ATTENTION: (self.weights, options.weight_learning_rate)}

        pairs = PairDataset(self.pair, self.resolution, registry_for(config.modality_attributes), prompt_dropout=0.0,
                            seed=config.seed)
        self.prompts = shared_prompt_embeddings(accelerator, self.text_spec, pairs.prompts, self.dtype)
        check_width(unet.config, self.prompts, self.text_spec)
        kept = self._self_samples(pairs, output_dir / SELF_SAMPLES_DIR)
        self.train_dataset = SelfTrainingDataset(kept, pairs, len(self.pair.organs), self.resolution)
        self.noiser = Noiser(Latents(self.vae, cached=False), noise_scheduler(self.scheduler_config), self.prompts,
                             dataclasses.replace(train, prompt_dropout=0.0))
        self.validation_items = pairs.validation_items(max(config.validation.num_images,
                                                           config.validation.mask_following_images))

    def _select_trained(self, unet) -> None:
        trains_all = self.options.trained == "unet"
        unet.requires_grad_(False)
        for name, parameter in unet.named_parameters():
            if trains_all or ".attn2." in name:
                parameter.requires_grad_(True)
        self.weights.requires_grad_(True)
        unet.train()

    def _self_samples(self, pairs: PairDataset, folder: Path) -> dict[str, np.ndarray]:
        """Rendered with the untrained bias, kept by their organs' mean IoU."""
        sampler = SelfSampler(self.attention, self.vae, self.prompts, self.scheduler_config, self.options,
                              self.config.seed)
        threshold = self.options.min_iou
        return kept_self_samples(sampler, self.accelerator, folder, pairs, self.resolution,
                                 lambda samples: samples["iou"] >= threshold, f"mean organ IoU >= {threshold:g}")

    # ----- training --------------------------------------------------------------------------------------
    def loss(self, module: torch.nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        # the same keyed draw as the noiser's own dropout, so it drops exactly these prompts
        prompts = drop_prompts(batch["prompt"], self.config.train.prompt_dropout,
                               keyed_uniform(batch[SAMPLE_KEY], PROMPT_DROPOUT))
        noisy, timesteps, target, context = self.noiser(batch)
        biased = [p if b and p != EMPTY_PROMPT else None for p, b in zip(prompts, batch["biased"].tolist())]
        prediction = module(noisy.to(self.dtype), timesteps, context, biased, batch["organ_masks"])
        return self.noiser.loss(prediction, target)

    def _samples(self, prompts: list[str], masks: np.ndarray) -> torch.Tensor:
        validation = self.config.validation
        with self.attention.conditioned(prompts, masks):
            return generate(self.trained_model, self.vae, sampling_scheduler(self.scheduler_config),
                            self.prompts(prompts), self.prompts([EMPTY_PROMPT]), self.latent_size,
                            validation.num_inference_steps, validation.guidance_scale, seed=self.config.seed)

    def validate(self, model, step: int, folder: Path) -> dict[str, float]:
        """Training source masks rendered with the target prompt: a grid, and scored against their own and
        against shuffled masks (mrgen.filtering.mask_following)."""
        items = self.validation_items
        masks = np.stack([organ_masks(self.pair, item[0].numpy()) for item in items])
        samples = self._samples([item[2] for item in items], masks)
        shown = self.config.validation.num_images
        rows = [[colour_masks(list(m), m.shape[-2:]), to_unit(s), outline_masks(to_unit(s), list(m))]
                for m, s in list(zip(masks, samples))[:shown]]
        save_grid(folder / f"step_{step:07d}.png", rows,
                  column_titles=["condition mask", f"sample ({self.pair.target_modality})", "with outlines"],
                  title=f"{self.pair.name} organ attention step {step}, w = "
                        f"{', '.join(f'{w:.1f}' for w in self.weights.weight.tolist())}")
        if len(items) < 2 or self.config.validation.mask_following_images < 2:
            return {}
        result = mask_following([signed_to_uint8(s[0].numpy()) for s in samples], [list(m) for m in masks],
                                self.pair.organs, seed=self.config.seed)
        with open(folder / "mask_following.md", "a", encoding="utf-8") as table:
            table.write(f"\n## step {step} ({len(samples)} target-prompt samples)\n\n{result.table()}\n")
        own, floor = result.own["all"], result.floor["all"]
        return {"mask_iou": own.mean_iou, "mask_iou_floor": floor.mean_iou,
                "mask_fraction_above_0.7": own.fraction_above, "mask_fraction_above_0.7_floor": floor.fraction_above,
                "mask_fraction_brighter": own.fraction_brighter}

    def export(self, model, folder: Path) -> None:
        model.save_pretrained(folder / UNET)
        self.weights.save_pretrained(folder / ORGAN_ATTENTION)
        export_frozen(self.pretrained, folder, (VAE,))
        write_scheduler(folder, self.scheduler_config)
        write_text_encoder(folder, self.text_spec)
        atomic_write_json(folder / PAIR_FILE, dataclasses.asdict(self.pair))


def train_organ_attention(config: OrganAttentionConfig, resume: str | None = None) -> Path:
    """Self-train a pair's organ-word attention; returns its pipeline folder."""
    output_dir = Path(config.output_dir)
    return run_training(config, lambda accelerator: OrganAttentionStage(config, accelerator, output_dir), resume)
