#!/usr/bin/env python
"""Does a trained ControlNet put the organs where its condition masks say?

Samples one target-modality image per held-out source mask (DPM-Solver++, classifier-free guidance,
per-mask seeds from ``mrgen.synthesis.seeds``), scores each organ with the offline segmenter against
its own mask and against a shuffled mask (the floor), and writes ``mask_following.json``, a PNG grid
(source slice with the condition | sample | sample with the mask outlines) and the markdown table.

Example:
    python scripts/measure_mask_following.py --ckpt runs/phantom/controlnet_T1_to_T2-SPIR/pipeline \\
        --config training_configs/controlnet/phantom_T1_to_T2-SPIR.yml --masks 60 --out runs/mf/eval
    # the ceiling: real target slices scored against their own masks (no model)
    python scripts/measure_mask_following.py --real --config ... --masks 60 --out runs/mf/ceiling
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrgen.config import ControlNetConfig, load_config  # noqa: E402
from mrgen.data.datasets import PairConfig, load_condition, pair_prompt, spread  # noqa: E402
from mrgen.data.index import IndexEntry  # noqa: E402
from mrgen.data.modalities import load_registry  # noqa: E402
from mrgen.data.preprocess import preprocess_image, signed_to_uint8  # noqa: E402
from mrgen.filtering.mask_following import mask_following  # noqa: E402
from mrgen.io.atomic import atomic_write_json  # noqa: E402
from mrgen.io.images import read_gray  # noqa: E402
from mrgen.models.pipeline_folder import load_pipeline_components  # noqa: E402
from mrgen.synthesis.sampler import MaskSampler, make_mask_sampler  # noqa: E402
from mrgen.synthesis.seeds import candidate_seed  # noqa: E402
from mrgen.viz import overlay, save_grid  # noqa: E402

GRID_ROWS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", help="pipeline folder (vae/, unet/, scheduler/, text_encoder.json, and controlnet/ unless --controlnet)")
    p.add_argument("--controlnet", help="a ControlNet folder (default: <ckpt>/controlnet)")
    p.add_argument("--config", required=True, help="the pair config (training_configs/controlnet/<pair>.yml)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. data.data_root=runs/mf/data")
    p.add_argument("--index", help="index of held-out annotated slices (default: the pair's first source index "
                                    "with _train replaced by _test; with --real, the target's)")
    p.add_argument("--masks", type=int, default=60, help="masks to sample (spread over the index)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--modality", help="prompt modality (default: the pair's target modality)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance_scale", type=float, default=6.0)
    p.add_argument("--conditioning_scale", type=float, default=1.0)
    p.add_argument("--control_conditional_only", action="store_true",
                   help="ControlNet on the conditional branch only, so the guidance scale amplifies the mask too")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--real", action="store_true", help="score the real slices of --index (the ceiling)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all)")
    return p.parse_args(argv)


def held_out_index(pair: PairConfig, args: argparse.Namespace) -> str:
    if args.index:
        return args.index
    indexes = pair.target_indexes if args.real else pair.source_indexes
    return indexes[0].replace("_train.json", "_test.json")


def pick_entries(pair: PairConfig, index: str, count: int) -> list[IndexEntry]:
    """``count`` slices with at least one of the pair's organs, spread evenly over the index."""
    entries = [e for e in pair.load([index]) if set(e.organs) & set(pair.organs)]
    if len(entries) < 2:
        raise ValueError(f"{index}: fewer than two slices with the pair's organs")
    return spread(entries, count)


def make_sampler(args: argparse.Namespace) -> MaskSampler:
    parts = load_pipeline_components(args.ckpt, controlnet_path=args.controlnet)
    return make_mask_sampler(parts, "dpm-solver++", args.steps, args.guidance_scale,
                             args.conditioning_scale, args.control_conditional_only)




def real_image(entry: IndexEntry, size: int) -> np.ndarray:
    return signed_to_uint8(preprocess_image(read_gray(entry.image_path), size))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pair = load_config(args.config, ControlNetConfig, args.set).data
    index = held_out_index(pair, args)
    registry = load_registry()
    modality = args.modality or pair.target_modality
    size = 64
    sampler = None if args.real else make_sampler(args)
    if sampler is not None:
        size = int(sampler.vae.config.sample_size)
    entries = pick_entries(pair, index, args.masks)
    started = time.perf_counter()
    images, masks, sources = [], [], []
    for i, entry in enumerate(entries):
        condition = load_condition(pair, entry, size)
        masks.append(pair.encoding.decode(condition, len(pair.organs)))
        sources.append(real_image(entry, size))
        if sampler is None:
            images.append(sources[-1])
            continue
        prompt = pair_prompt(pair, registry, entry, modality)
        sample = sampler.generate(torch.from_numpy(condition), prompt, [candidate_seed(args.seed, i, 0)])[0]
        images.append(signed_to_uint8(sample[0].numpy()))
    sampling_s = time.perf_counter() - started
    result = mask_following(images, masks, pair.organs, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [[overlay(src, m), img, overlay(img, m, alpha=0.0)] for src, img, m in list(zip(sources, images, masks))[:GRID_ROWS]]
    save_grid(rows, out / "grid.png", titles=["condition on source slice", "sample" if sampler else "real",
                                              "with mask outlines"])
    report = {"ckpt": args.ckpt, "controlnet": args.controlnet, "config": args.config, "overrides": args.set,
              "index": index, "modality": modality, "masks": len(entries), "steps": args.steps,
              "guidance_scale": args.guidance_scale, "conditioning_scale": args.conditioning_scale,
              "control_conditional_only": args.control_conditional_only,
              "seed": args.seed, "real": args.real, "sampling_s": round(sampling_s, 1), **result.as_dict()}
    atomic_write_json(out / "mask_following.json", report)
    table = result.table()
    (out / "mask_following.md").write_text(table + "\n", encoding="utf-8")
    print(table)
    print(f"sampling {sampling_s:.0f} s for {len(entries)} masks; written to {out}")
    return report


if __name__ == "__main__":
    main()
