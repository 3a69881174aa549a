"""Generate the built-in simulated abdominal MRI dataset (see mrgen.data.phantom).

Example:
    python scripts/make_phantom_dataset.py --out data/phantom --cases 4 --seed 0 --size 64 \\
        --modalities T1-InPhase T1-OutPhase T2-SPIR --slices 24
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrgen.data.phantom import (  # noqa: E402
    DEFAULT_MODALITIES,
    DEFAULT_SIZE,
    DEFAULT_SLICES,
    SEQUENCES,
    generate_phantom_dataset,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (created if missing)")
    parser.add_argument("--cases", type=int, default=4, help="cases (volumes) per modality")
    parser.add_argument("--seed", type=int, default=0, help="global seed; same seed and arguments give the same bytes")
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE, help="in-plane size in pixels")
    parser.add_argument("--modalities", nargs="+", default=list(DEFAULT_MODALITIES), choices=list(SEQUENCES),
                        help="contrasts to render, each with its own cases")
    parser.add_argument("--slices", type=int, default=DEFAULT_SLICES, help="axial slices per volume")
    parser.add_argument("--test_fraction", type=float, default=0.25, help="fraction of cases held out for test")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    generate_phantom_dataset(args.out, cases=args.cases, seed=args.seed, size=args.size,
                             modalities=args.modalities, slices=args.slices, test_fraction=args.test_fraction)


if __name__ == "__main__":
    main()
