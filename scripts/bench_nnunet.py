"""Stock vs CPU-lean nnU-Net plans on real target labels: ms per iteration and Dice per budget, side by side.

    python scripts/bench_nnunet.py [--out runs/bench_nnunet] [--target T2-SPIR] [--epochs 10 20 40 80]
                                   [--plans nnUNetPlans ...] [--seed 0]

Trains nnU-Net (batches of 8, 25 iterations per epoch) on the real T2-SPIR slices of a validation draw of the
simulated dataset (dataset seed 2: patients the zoo (seed 1) and the downstream benchmark's test volumes (seed 0)
never saw) at each budget with each plans file, and evaluates it in 3D on the draw's held-out volumes. Writes
bench_nnunet.{md,json,png} (the iterations-vs-Dice trade-off per organ). Resumable: run it again after a kill.
See mrgen/pipeline/nnunet_budget.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrgen.nnunet.plans import PLANS  # noqa: E402
from mrgen.pipeline.nnunet_budget import BudgetConfig, run_budget_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    defaults = BudgetConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=defaults.out)
    parser.add_argument("--target", default=defaults.target, help="the modality trained and evaluated")
    parser.add_argument("--cases", type=int, default=defaults.dataset.cases, help="cases in the draw (1/4 held out)")
    parser.add_argument("--dataset_seed", type=int, default=defaults.dataset.seed)
    parser.add_argument("--epochs", type=int, nargs="+", default=defaults.epochs, help="budgets, in epochs")
    parser.add_argument("--iterations", type=int, default=defaults.segmentation.iterations, help="per epoch")
    parser.add_argument("--batch_size", type=int, default=defaults.segmentation.batch_size)
    parser.add_argument("--plans", nargs="+", choices=PLANS, default=defaults.plans)
    parser.add_argument("--target_dice", type=float, default=defaults.target_dice)
    parser.add_argument("--seed", type=int, default=defaults.seed, help="nnU-Net's seed (MRGEN_NNUNET_SEED)")
    args = parser.parse_args(argv)
    if min(args.epochs) < 1 or args.iterations < 1 or args.batch_size < 0 or args.cases < 2:
        parser.error("--epochs and --iterations must be at least 1, --batch_size at least 0, --cases at least 2")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("mrgen.data.phantom").setLevel(logging.WARNING)
    config = replace(defaults, out=args.out, target=args.target, seed=args.seed, epochs=sorted(set(args.epochs)), plans=args.plans,
                     target_dice=args.target_dice,
                     dataset=replace(defaults.dataset, cases=args.cases, seed=args.dataset_seed),
                     segmentation=replace(defaults.segmentation, iterations=args.iterations, batch_size=args.batch_size))
    path = run_budget_sweep(config)
    print(path.read_text())


if __name__ == "__main__":
    main()
