"""The README's demo: build the simulated MRI dataset and a preview picture.

    python scripts/demo.py --out demo_output

Writes ``<out>/phantom/`` (NIfTI volumes, PNG slices, indexes, dataset card) and shows where the
preview picture is. Later stages of the chain are run by their own commands (README.md).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrgen.data.index import load_index  # noqa: E402
from mrgen.data.phantom import generate_phantom_dataset  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("demo_output"))
    parser.add_argument("--cases", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    started = time.perf_counter()
    dataset = args.out / "phantom"
    generate_phantom_dataset(dataset, cases=args.cases, seed=args.seed)
    slices = sum(len(load_index(p)) for p in sorted(dataset.glob("Phantom_*_all.json")))
    logging.info("demo: %d slices in %.1f s; preview: %s; dataset card: %s", slices,
                 time.perf_counter() - started, dataset / "preview.png", dataset / "README.md")


if __name__ == "__main__":
    main()
