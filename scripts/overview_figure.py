"""The README's picture: real source slices with their masks beside synthetic target slices from the same masks.

    python scripts/overview_figure.py --run runs/benchmark_default/pair0/synthesis_self_trained \\
        --out docs/images/overview.png [--masks 4] [--per_mask 4]

``--run`` is any finished synthesis folder (``synthesize_filter_multi.py --log_dir``); the rows are its masks with
the most accepted candidates, accepted candidates first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mrgen.pipeline.report import mask_candidates_figure
from mrgen.pipeline.synthetic_measures import candidate_records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, type=Path, help="a finished synthesis folder")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--masks", type=int, default=4, help="rows (default: 4)")
    p.add_argument("--per_mask", type=int, default=4, help="synthetic slices per row (default: 4)")
    args = p.parse_args()
    print(mask_candidates_figure(candidate_records(args.run), args.out, args.masks, args.per_mask))


if __name__ == "__main__":
    main()
