"""Reconstruction quality (L1, MSE, PSNR, SSIM) of a trained VAE on held-out slices.

Example:
    python scripts/evaluate_vae_performance.py --vae runs/vae/checkpoint-final/vae \\
        --index data/phantom/image_text_test.json --split all --size 64 --out vae_results.json
SSIM uses a 7x7 window; --ssim_window global reproduces the original's near-global window.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrgen.evaluation.vae_eval import VaeEvalOptions, evaluate_vae_folder  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", type=Path, required=True, help="AutoencoderKL folder (or a pipeline folder with vae/)")
    parser.add_argument("--index", type=Path, nargs="+", required=True,
                        help="conditional index(es) or Radiopaedia image-text JSON(s)")
    parser.add_argument("--split", choices=("test", "all"), default="test",
                        help="test: the held-out patients (test_fraction, seeded, as in training); all: every slice")
    parser.add_argument("--test_fraction", type=float, default=0.01, help="held-out patient fraction (original: 1%%)")
    parser.add_argument("--size", type=int, default=512, help="image size the VAE sees")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--posterior", choices=("mode", "sample"), default="mode",
                        help="decode the posterior's mode (default) or a seeded sample (the original)")
    parser.add_argument("--ssim_window", default="7",
                        help="odd SSIM window size (default 7) or 'global' (the original's largest-odd window)")
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("vae_results.json"), help="report JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    window = "global" if args.ssim_window == "global" else int(args.ssim_window)
    options = VaeEvalOptions(size=args.size, batch_size=args.batch_size, posterior=args.posterior,
                             ssim_window=window, split=args.split, test_fraction=args.test_fraction,
                             max_images=args.max_images, seed=args.seed, device=args.device)
    try:
        report = evaluate_vae_folder(args.vae, args.index, args.out, options)
    except (FileNotFoundError, ValueError) as err:
        logging.error("%s", err)
        return 2
    print(" ".join(f"{k}={v:.5f}" for k, v in report.means.items()) + f" over {report.images} images -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
