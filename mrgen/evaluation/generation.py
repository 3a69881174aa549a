"""Text-to-image samples for the test prompts of an image-text index (the original's FID setup, reference 8.2).

For every test slice: its own prompt, one seeded sample (seed derived from (seed, entry)), DDIM with
classifier-free guidance, saved beside the real slice after the same preprocessing, so FID compares like
with like. Finished samples are skipped on a second run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

from tqdm import tqdm

from mrgen.data.datasets import ImageTextDataset
from mrgen.data.preprocess import signed_to_uint8
from mrgen.io.atomic import atomic_write_json
from mrgen.io.images import write_gray
from mrgen.models.pipeline_folder import load_pipeline_components
from mrgen.models.sampling import denoise
from mrgen.synthesis.sampler import make_scheduler
from mrgen.synthesis.seeds import candidate_seed, initial_noise

log = logging.getLogger(__name__)


def _name(path: str) -> str:
    """The original's naming: the last four path components joined with '-'."""
    return "-".join(Path(path).with_suffix(".png").parts[-4:])


def generate_test_images(ckpt: str | os.PathLike, index_paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                         steps: int = 50, guidance_scale: float = 7.0, seed: int = 0, batch_size: int = 8,
                         max_images: int | None = None, device: str = "cpu") -> dict[str, Any]:
    """Write ``out/real/*.png``, ``out/generated/*.png`` and ``out/generated.json``; return a summary."""
    out = Path(out)
    parts = load_pipeline_components(ckpt, device=device)
    if parts.unet is None:
        raise ValueError(f"{ckpt} has no unet/: text-to-image evaluation needs a UNet-stage pipeline folder")
    size = int(parts.vae.config.sample_size)
    dataset = ImageTextDataset(index_paths, size=size, split="all", prompt_dropout=0.0)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    scheduler = make_scheduler("ddim", dict(parts.scheduler_config))
    factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    latent_shape = (parts.vae.config.latent_channels, size // factor, size // factor)
    null = parts.text_encoder.encode([""])
    records = []
    for start in tqdm(range(0, count, batch_size), desc="text-to-image", unit="batch"):
        items = [dataset[i] for i in range(start, min(start + batch_size, count))]
        names = [_name(item["path"]) for item in items]
        records += [{"index": start + k, "original_path": item["path"], "prompt": item["prompt"],
                     "image_path": str(out / "generated" / name)} for k, (item, name) in enumerate(zip(items, names))]
        if all((out / "generated" / n).is_file() for n in names):
            continue
        seeds = [candidate_seed(seed, start + k, 0) for k in range(len(items))]
        context = parts.text_encoder.encode([item["prompt"] for item in items])
        images = denoise(parts.unet, parts.vae, scheduler, initial_noise(seeds, latent_shape).to(device), context,
                         null, steps, guidance_scale)
        for item, name, image in zip(items, names, images):
            write_gray(out / "real" / name, signed_to_uint8(item["image"][0].numpy()))
            write_gray(out / "generated" / name, signed_to_uint8(image[0].numpy()))
    atomic_write_json(out / "generated.json", records)
    log.info("%d test prompts -> %s", count, out / "generated")
    return {"images": count, "real_dir": str(out / "real"), "generated_dir": str(out / "generated")}
