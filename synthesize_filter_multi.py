"""Synthesise target-modality image/mask pairs from source masks and keep those the quality filter accepts.

    python synthesize_filter_multi.py [--config training_configs/controlnet/<pair>.yml] \\
        --ckpt <pipeline folder> --log_dir <output folder> [--modality T2-SPIR] [options]

The flags and defaults of the original come first; docs/synthesis.md explains the rest.
"""

from __future__ import annotations

import argparse
import json
import logging

from mrgen.cli import exit_on_user_error
from mrgen.config import ORIGINAL_PAIR_CONFIG
from mrgen.synthesis.run import SELECTIONS, SynthesisOptions, synthesize


def parse_args(argv: list[str] | None = None) -> SynthesisOptions:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="pipeline folder with vae/, unet/, scheduler/ and controlnet/ (ours or the released MRGen layout); controlnet/ may come from --controlnet")
    p.add_argument("--log_dir", required=True, help="output folder (created; a run there resumes)")
    p.add_argument("--config", default=ORIGINAL_PAIR_CONFIG,
                   help=f"the pair's ControlNet config (default: {ORIGINAL_PAIR_CONFIG}, the pair of "
                        "the original's synthesize_CHAOS_filter_multi.py)")
    p.add_argument("--modality", default=None, help="target modality: registry key or short name (T2-SPIR, T1-InPhase, ...); default: the pair's target")
    p.add_argument("--controlnet", default=None, help="ControlNet folder if not <ckpt>/controlnet (e.g. controlnet_model_zoo/<pair>)")
    p.add_argument("--channels", type=int, default=1, help="condition channels: 1, the intensity-coded mask (the original's flag)")
    p.add_argument("--sample_per_mask", type=int, default=2, help="samples kept per mask by the strict rule")
    p.add_argument("--num_images_per_prompt", type=int, default=10, help="candidates generated per batch")
    p.add_argument("--max_tries_per_mask", type=int, default=20, help="candidates per mask at most")
    p.add_argument("--mask_threshold", type=float, default=0.005, help="skip masks whose foreground fraction is at most this")
    p.add_argument("--iou_threshold", type=float, default=0.70, help="per-organ IoU floor")
    p.add_argument("--confidence_threshold", type=float, default=0.80, help="per-organ confidence floor")
    p.add_argument("--avg_iou_threshold", type=float, default=0.80, help="mean IoU floor")
    p.add_argument("--avg_confidence_threshold", type=float, default=0.90, help="mean confidence floor")
    p.add_argument("--num_gpus", type=int, default=4, help="worker processes, one per CUDA device (as many as are visible)")
    p.add_argument("--processes", type=int, default=None,
                   help="worker processes (default: one per visible CUDA device up to --num_gpus; 1 without CUDA); "
                        "on a CPU machine N processes share the cores")
    p.add_argument("--top_k", type=int, default=5, help="candidates per mask the rule looks at, by mean IoU")
    p.add_argument("--relax", type=float, default=0.10, help="how much the thresholds drop when too few pass")
    p.add_argument("--keep_relaxed", type=int, default=1, help="samples kept per mask by the relaxed rule")
    p.add_argument("--selection", default="original", choices=list(SELECTIONS),
                   help="original: every present organ and the means must pass; per_organ (ours): one organ passing "
                        "keeps a candidate, its failing organs get nnU-Net's ignore label in the export")
    p.add_argument("--scheduler", default="ddim", choices=["ddim", "dpm-solver++", "unipc"])
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--guidance_scale", type=float, default=7.0)
    p.add_argument("--controlnet_scale", type=float, default=1.0)
    p.add_argument("--control_conditional_only", action="store_true",
                   help="ControlNet on the conditional branch only, so the guidance scale amplifies the mask "
                        "too (a deviation; the original conditions both branches)")
    p.add_argument("--seed", type=int, default=0, help="global seed; candidate seeds derive from (seed, mask, try)")
    p.add_argument("--filter", default="offline", choices=["offline", "sam2"])
    p.add_argument("--sam2_config", default="configs/sam2/sam2_hiera_l.yaml", help="a config inside the sam2 package")
    p.add_argument("--sam2_checkpoint", default="checkpoints/sam2_hiera_large.pt")
    p.add_argument("--sam2_prompt", default="box", choices=["box", "mask"])
    p.add_argument("--box_jitter", type=float, default=0.0, help="box prompt jitter, fraction of the image size (original helper: 0.08)")
    p.add_argument("--early_stop", action="store_true", help="stop generating for a mask once enough candidates pass the strict rule")
    p.add_argument("--num_parts", type=int, default=1, help="split the masks into this many parts (cluster jobs)")
    p.add_argument("--part_id", type=int, default=0, help="which part this job runs")
    p.add_argument("--merge", action="store_true", help="no generation: check that every part finished with the same "
                   "settings, merge the parts and apply the selection rule (after cluster parts; or to re-select "
                   "with new thresholds)")
    p.add_argument("--max_masks", type=int, default=None, help="use N masks spread evenly over the list (quick looks)")
    p.add_argument("--size", type=int, default=None, help="image size; default: the VAE's sample_size")
    p.add_argument("--half", action=argparse.BooleanOptionalAction, default=None, help="fp16 models (default: on with CUDA)")
    try:
        return SynthesisOptions(**vars(p.parse_args(argv)))
    except ValueError as err:
        p.error(str(err))  # usage and the message, exit code 2, no traceback


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    options = parse_args(argv)
    print(json.dumps(exit_on_user_error(lambda: synthesize(options)), indent=2))


if __name__ == "__main__":
    main()
