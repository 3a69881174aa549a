"""CLIP-I (generated vs original image) and CLIP-T (generated image vs prompt) with a local BiomedCLIP.

Example:
    python scripts/evaluate_diffusion_CLIPscore.py --results_json runs/generated/results.json \\
        --clip_dir ~/weights/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224
--results_json lists entries with image_path (generated), original_path and prompt (the original's
radiopaedia_synthetic_results JSON); --generated_dir/--real_dir pairs images by file name (CLIP-I only).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrgen.evaluation.clip_score import CONTEXT_LENGTH, evaluate_clip_scores  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--results_json", type=Path, help="entries with image_path, original_path, prompt")
    data.add_argument("--generated_dir", type=Path, help="generated PNGs (with --real_dir)")
    parser.add_argument("--real_dir", type=Path, help="real PNGs with the same file names")
    parser.add_argument("--clip_dir", type=str, help="local open_clip folder (local-dir:PATH or PATH)")
    parser.add_argument("--clip_config", type=Path, help="open_clip config JSON (with --clip_weights)")
    parser.add_argument("--clip_weights", type=Path, help="open_clip weights file")
    parser.add_argument("--context_length", type=int, default=CONTEXT_LENGTH, help="text tokens (BiomedCLIP: 256)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.generated_dir is not None and args.real_dir is None:
        parser.error("--generated_dir needs --real_dir")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        report = evaluate_clip_scores(args.results_json, args.generated_dir, args.real_dir, args.clip_dir,
                                      args.clip_config, args.clip_weights, args.context_length, args.batch_size,
                                      args.device)
    except (FileNotFoundError, ValueError) as err:
        logging.error("%s", err)
        return 2
    print(json.dumps(asdict(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
