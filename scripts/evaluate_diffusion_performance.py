"""Text-to-image generation for test prompts, and FID between real and generated images (pytorch-fid).

Generate for the test split, then score (the original's setup: DDIM 50 steps, guidance 7, one seeded
sample per test slice with its own prompt):
    python scripts/evaluate_diffusion_performance.py --ckpt runs/unet/pipeline \\
        --index data/phantom/image_text_test.json --log_dir runs/fid \\
        --inception_weights ~/weights/pt_inception-2015-12-05-6726825d.pth
Or score two existing folders:
    python scripts/evaluate_diffusion_performance.py --real_dir real_png --generated_dir generated_png
The Inception weights are read from --inception_weights or $TORCH_HOME/hub/checkpoints/; nothing is
downloaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrgen.evaluation.fid import fid_between_folders  # noqa: E402
from mrgen.evaluation.generation import generate_test_images  # noqa: E402
from mrgen.io.atomic import atomic_write_json  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, default=None, help="pipeline folder (vae/, unet/, scheduler/): generate first")
    parser.add_argument("--index", type=Path, nargs="+", default=None, help="image-text index(es) whose prompts to generate")
    parser.add_argument("--log_dir", type=Path, default=None, help="where generated/ and real/ are written")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance_scale", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--real_dir", type=Path, default=None)
    parser.add_argument("--generated_dir", type=Path, default=None)
    parser.add_argument("--inception_weights", type=Path, default=None,
                        help="pt_inception-2015-12-05-6726825d.pth (default: $TORCH_HOME/hub/checkpoints/)")
    parser.add_argument("--dims", type=int, default=2048, choices=(64, 192, 768, 2048),
                        help="Inception feature block (2048 = pool3, the standard FID)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="also write the result as JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    if args.ckpt is not None:
        if args.index is None or args.log_dir is None:
            logging.error("--ckpt needs --index (the test prompts) and --log_dir (where the images go)")
            return 2
        folders = generate_test_images(args.ckpt, args.index, args.log_dir, args.steps, args.guidance_scale,
                                       args.seed, max_images=args.max_images, device=args.device)
        args.real_dir, args.generated_dir = Path(folders["real_dir"]), Path(folders["generated_dir"])
    if args.real_dir is None or args.generated_dir is None:
        logging.error("give --real_dir and --generated_dir, or --ckpt --index --log_dir to generate them")
        return 2
    try:
        result = fid_between_folders(args.real_dir, args.generated_dir, args.inception_weights, args.dims,
                                     args.batch_size, args.device)
    except (FileNotFoundError, ValueError) as err:
        logging.error("%s", err)
        return 2
    if args.out is not None:
        atomic_write_json(args.out, asdict(result))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
