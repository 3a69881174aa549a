"""FID between a folder of real images and a folder of generated ones (pytorch-fid, offline weights).

Example:
    python scripts/evaluate_diffusion_performance.py --real_dir data/real_png --generated_dir runs/generated \
        --inception_weights ~/weights/pt_inception-2015-12-05-6726825d.pth
The Inception weights are read from --inception_weights or $TORCH_HOME/hub/checkpoints/; nothing is
downloaded. Generating the images for the test prompts is the synthesis stage's job.
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
from mrgen.io.atomic import atomic_write_json  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real_dir", type=Path, required=True)
    parser.add_argument("--generated_dir", type=Path, required=True)
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
