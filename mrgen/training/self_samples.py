"""Self-samples: training source masks rendered in the *target* modality by the trained UNet under organ-word
attention (``mrgen.models.organ_attention``), each organ segmented by the offline filter's segmenter inside its mask's
box.

The ControlNet stage with ``self_training.enabled`` trains on the ones whose every organ reaches
``self_training.min_organ_iou`` as *annotated target-modality* pairs, with the segmenter's organ regions as their
masks: the organs then sit exactly where the image has them, which the source masks they were drawn from only
roughly say (docs/mask_following.md).

Files under ``<output_dir>/self_samples/``: ``chunk_XXXXX.npz`` (``CHUNK`` masks each, written whole, so a killed
run keeps its finished chunks and renders only the rest) with ``index`` (position in the pair's source list),
``images`` (uint8), ``masks`` and ``regions`` ((organs, S, S) bool: the source masks and the segmented regions),
``organ_iou`` (organs; 0 where the slice lacks the organ), ``iou`` (mean over present organs) and ``prompts``;
``summary.json``; ``examples.png`` (kept and rejected ones).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mrgen.config import SelfTrainingSection
from mrgen.data.datasets import PairConfig, PairDataset, load_condition, pair_prompt
from mrgen.data.preprocess import signed_to_uint8
from mrgen.data.prompts import EMPTY_PROMPT
from mrgen.filtering.offline import OfflineFilter
from mrgen.io.atomic import atomic_write_json
from mrgen.models.builders import vae_scale_factor
from mrgen.models.organ_attention import OrganAttention, stack_organ_masks
from mrgen.models.sampling import denoise
from mrgen.synthesis.sampler import make_scheduler
from mrgen.synthesis.seeds import candidate_seed, initial_noise
from mrgen.training.visuals import colour_masks, outline_masks, save_grid

log = logging.getLogger(__name__)
SELF_SAMPLES_DIR = "self_samples"
CHUNK = 50  # self-sample masks per file


def organ_masks(pair: PairConfig, condition: np.ndarray) -> np.ndarray:
    """An encoded condition -> (organs, S, S) bool, all False for an organ the slice lacks."""
    return stack_organ_masks(pair.encoding.decode(condition, len(pair.organs)), condition.shape[-2:])


def segment_organs(image: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each present organ segmented inside its mask's box: ((organs, S, S) regions, (organs,) IoU with the mask)."""
    segmented, scores = OfflineFilter().segment_organs(image, list(masks))
    regions = np.stack([np.zeros_like(m) if r is None else r.astype(masks.dtype) for r, m in zip(segmented, masks)])
    return regions, np.asarray(scores.organ_iou, np.float32)


def mean_present_iou(ious: np.ndarray, masks: np.ndarray) -> float:
    values = [v for v, m in zip(ious, masks) if m.any()]
    return float(np.mean(values)) if values else 0.0


def all_organs_reach(samples: dict[str, np.ndarray], threshold: float) -> np.ndarray:
    """(N,) bool: every organ a self-sample's slice has reaches ``threshold`` IoU."""
    present = samples["masks"].any(axis=(2, 3))
    return np.where(present, samples["organ_iou"] >= threshold, True).all(axis=1) & present.any(axis=1)


@dataclass
class SelfSampler:
    """Renders and scores self-samples with a UNet biased by organ attention."""

    attention: OrganAttention
    vae: Any
    prompts: Callable[[list[str]], torch.Tensor]  # prompt strings -> embeddings (the stage's table)
    scheduler_config: dict[str, Any]
    options: SelfTrainingSection
    seed: int

    def render(self, folder: Path, pairs: PairDataset, resolution: int) -> dict[str, np.ndarray]:
        """Render the chunks ``folder`` lacks (a seeded choice of ``options.self_samples`` source masks); all of them."""
        chunks = self._chunks(len(pairs.sources))
        todo = [c for c in range(len(chunks)) if not chunk_path(folder, c).is_file()]
        for c in sorted(set(range(len(chunks))) - set(todo)):
            if not np.array_equal(np.load(chunk_path(folder, c))["index"], chunks[c]):
                raise ValueError(f"{chunk_path(folder, c)} holds other masks than self_samples="
                                 f"{self.options.self_samples} and seed {self.seed} pick; delete {folder} or use "
                                 f"another output_dir")
        if todo:
            folder.mkdir(parents=True, exist_ok=True)
            bar = tqdm(total=sum(len(chunks[c]) for c in todo), desc="self-samples", unit="mask")
            for c in todo:
                write_chunk(chunk_path(folder, c), self._render_chunk(chunks[c], pairs, resolution, bar))
            bar.close()
        return load_self_samples(folder, len(chunks))

    def _chunks(self, sources: int) -> list[np.ndarray]:
        picks = np.random.default_rng(self.seed).permutation(sources)[:self.options.self_samples]
        return [picks[i:i + CHUNK] for i in range(0, len(picks), CHUNK)]

    @torch.no_grad()
    def _render_chunk(self, chunk: np.ndarray, pairs: PairDataset, resolution: int, bar: tqdm) -> dict[str, np.ndarray]:
        pair, unet, options = pairs.pair, self.attention.unet, self.options
        scheduler = make_scheduler("dpm-solver++", self.scheduler_config)
        latent_size = resolution // vae_scale_factor(self.vae.config)
        records: dict[str, list] = {key: [] for key in ("index", "images", "masks", "regions", "organ_iou", "iou",
                                                         "prompts")}
        for start in range(0, len(chunk), options.sampling_batch):
            batch = [int(i) for i in chunk[start:start + options.sampling_batch]]
            entries = [pairs.sources[i] for i in batch]
            masks = np.stack([organ_masks(pair, load_condition(pair, e, resolution)) for e in entries])
            prompts = [pair_prompt(pair, pairs.registry, e, pair.target_modality) for e in entries]
            latents = initial_noise([candidate_seed(self.seed, i, 0) for i in batch],
                                    (unet.config.in_channels, latent_size, latent_size))
            with self.attention.conditioned(prompts, masks):
                images = denoise(unet, self.vae, scheduler, latents.to(unet.device, unet.dtype), self.prompts(prompts),
                                 self.prompts([EMPTY_PROMPT]), options.sampling_steps, options.guidance_scale)
            for i, image, mask, prompt in zip(batch, images, masks, prompts):
                image = signed_to_uint8(image[0].numpy())
                regions, ious = segment_organs(image, mask)
                for key, value in (("index", i), ("images", image), ("masks", mask), ("regions", regions),
                                   ("organ_iou", ious), ("iou", mean_present_iou(ious, mask)), ("prompts", prompt)):
                    records[key].append(value)
            bar.update(len(batch))
        return {key: np.asarray(value) for key, value in records.items()}


def kept_self_samples(sampler: SelfSampler, accelerator: Accelerator, folder: Path, pairs: PairDataset,
                      resolution: int) -> dict[str, np.ndarray]:
    """Render (on the main process; the others wait), summarise, and return the self-samples whose every organ
    reaches ``min_organ_iou``."""
    if accelerator.is_main_process:
        sampler.render(folder, pairs, resolution)
    accelerator.wait_for_everyone()
    everything = sampler.render(folder, pairs, resolution)  # every chunk is on disk by now: this loads them
    threshold = sampler.options.min_organ_iou
    kept, rule = all_organs_reach(everything, threshold), f"every organ's IoU >= {threshold:g}"
    if accelerator.is_main_process:
        summarise(folder, everything, kept, rule, pairs.pair.name)
    log.info("self-samples: %d of %d kept (%s)", kept.sum(), len(kept), rule)
    return {key: value[kept] for key, value in everything.items()}


def summarise(folder: Path, samples: dict[str, np.ndarray], kept: np.ndarray, rule: str, title: str) -> None:
    """``summary.json`` and ``examples.png`` (four kept and four rejected self-samples) for the kept set."""
    iou_values = samples["iou"]
    atomic_write_json(folder / "summary.json", {
        "masks": int(len(iou_values)), "kept": int(kept.sum()), "rule": rule, "mean_iou": float(iou_values.mean()),
        "iou_quartiles": [float(q) for q in np.quantile(iou_values, [0.25, 0.5, 0.75])]})
    rows, labels = [], []
    for label, chosen in (("kept", np.flatnonzero(kept)[:4]), ("rejected", np.flatnonzero(~kept)[:4])):
        for k in chosen:
            image = samples["images"][k].astype(np.float32) / 255.0
            masks = list(samples["masks"][k])
            rows.append([colour_masks(masks, image.shape), image, outline_masks(image, masks),
                         outline_masks(image, list(samples["regions"][k]))])
            labels.append(f"{label}, mean IoU {iou_values[k]:.2f}")
    save_grid(folder / "examples.png", rows, row_titles=labels,
              column_titles=["source mask", "self-sample", "with mask outlines", "segmented regions"],
              title=f"{title}: {int(kept.sum())} of {len(iou_values)} self-samples kept ({rule})")


def chunk_path(folder: Path, chunk: int) -> Path:
    return folder / f"chunk_{chunk:05d}.npz"


def write_chunk(path: Path, arrays: dict[str, np.ndarray]) -> None:
    partial = path.with_suffix(".partial.npz")
    np.savez(partial, **arrays)
    partial.replace(path)


def load_self_samples(folder: Path, chunks: int) -> dict[str, np.ndarray]:
    """The first ``chunks`` chunk files, concatenated."""
    missing = [path for path in (chunk_path(folder, c) for c in range(chunks)) if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]} is missing; the stage renders the self-samples first")
    loaded = [dict(np.load(chunk_path(folder, c))) for c in range(chunks)]
    if "regions" not in loaded[0]:
        raise ValueError(f"{chunk_path(folder, 0)} was written by an older version (no segmented regions); delete "
                         f"{folder} to render the self-samples again")
    return {key: np.concatenate([chunk[key] for chunk in loaded]) for key in loaded[0]}


class SelfSamplePairs(Dataset):
    """A ControlNet's training pairs followed by ``share`` x as many kept self-samples (cycled), each an annotated
    target-modality pair: the self-sample, its target prompt, and its segmented organ regions as the condition."""

    def __init__(self, pairs: Dataset, samples: dict[str, np.ndarray], pair: PairConfig, share: float):
        if len(samples["images"]) == 0:
            raise ValueError("no self-sample reached self_training.min_organ_iou; lower it or render more")
        self.pairs, self.samples, self.pair = pairs, samples, pair
        self.extra = max(1, round(len(pairs) * share))

    def __len__(self) -> int:
        return len(self.pairs) + self.extra

    def __getitem__(self, i: int) -> dict[str, Any]:
        if i < len(self.pairs):
            return self.pairs[i]
        k = (i - len(self.pairs)) % len(self.samples["images"])
        regions = [r if r.any() else None for r in self.samples["regions"][k]]
        size = self.samples["images"].shape[-1]
        return {"image": torch.from_numpy(self.samples["images"][k]).float()[None] / 127.5 - 1.0,
                "condition": torch.from_numpy(self.pair.encoding.encode(regions, size)),
                "prompt": str(self.samples["prompts"][k]), "is_target": False, "path": f"self-sample {k}"}
