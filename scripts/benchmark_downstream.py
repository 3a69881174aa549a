"""The paper's Table 3 experiment on the simulated dataset (see mrgen/pipeline/benchmark.py).

    python scripts/benchmark_downstream.py [--budget mini|default|full] [--out runs/benchmark_downstream]
                                           [--retrain] [--seed 0] [--seeds 2] [--pairs T1-InPhase:T2-SPIR ...]
                                           [--conditions a e ...]

``default`` (24 cases per modality: 18 training and 6 held-out test volumes; 64 source masks x 4 candidates; nnU-Net
on the CPU-lean plans, 80 x 25 iterations on batches of 8, one seed; ``--seeds 2`` trains every arm twice) is meant
to finish inside 120 minutes on 2 idle CPU cores (README: the measured time); ``full`` (nnU-Net's own plans trained
longer, the original's synthesis settings, every mask) is meant for a GPU.
``--retrain`` trains the model zoo again (scripts/train_zoo.py) into <out>/zoo and uses it. Stages are resumable:
run the same command again after an interruption. Writes benchmark.md (table), benchmark.json (every number and
the config) and benchmark.png (bar chart). ``--pairs`` and ``--conditions`` run a part of the table (the rest
reads n/a) with the full run's stages, dataset ids and synthetic samples; nnU-Net on CPU is not bit-reproducible,
so a real-data column can move by a few points between runs.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrgen.pipeline.benchmark import (CONDITIONS, BenchmarkConfig, run_benchmark,  # noqa: E402
                                      with_budget, with_zoo)

REPO = Path(__file__).resolve().parents[1]


def retrain_zoo(out: str) -> str:
    zoo = Path(out) / "zoo"
    subprocess.run([sys.executable, str(REPO / "scripts" / "train_zoo.py"), "--out", str(zoo),
                    "--work", str(Path(out) / "zoo_work")], check=True)
    return str(zoo)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", default="default", choices=["mini", "default", "full"])
    parser.add_argument("--out", default="runs/benchmark_downstream")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=None,
                        help="nnU-Net trainings per arm, seeds SEED, SEED+1, ... (default: 1); the table shows the "
                             "mean and the min-max range")
    parser.add_argument("--zoo", default="zoo/phantom", help="model zoo folder (ignored with --retrain)")
    parser.add_argument("--retrain", action="store_true", help="train the model zoo again first")
    parser.add_argument("--pairs", nargs="*", metavar="SOURCE:TARGET", help="only these pairs (default: all)")
    parser.add_argument("--conditions", nargs="*", choices=list(CONDITIONS), default=list(CONDITIONS),
                        help="only these columns (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("accelerate", "diffusers", "mrgen.data.phantom", "mrgen.synthesis.run"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        config = BenchmarkConfig(out=args.out, seed=args.seed, conditions=args.conditions, run_pairs=args.pairs or [])
    except ValueError as error:
        parser.error(str(error))
    config = with_budget(config, args.budget)
    if args.seeds is not None:
        try:
            config = replace(config, seeds=args.seeds)
        except ValueError as error:  # BenchmarkConfig checks the count
            parser.error(str(error))
    config = with_zoo(config, retrain_zoo(args.out) if args.retrain else args.zoo)
    print(run_benchmark(config))


if __name__ == "__main__":
    main()
