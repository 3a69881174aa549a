"""Write the CPU-lean nnU-Net plans (nnUNetPlans_CPULean.json) beside a planned dataset's nnUNetPlans.json.

    nnUNetv2_plan_and_preprocess -d 601 -c 2d --verify_dataset_integrity
    python Segmentation/make_cpu_plans.py -d 601
    nnUNetv2_train 601 2d all -p nnUNetPlans_CPULean -tr nnUNetTrainer_MRGenShort -device cpu
    nnUNetv2_predict -i ... -o ... -d 601 -c 2d -f all -p nnUNetPlans_CPULean -tr nnUNetTrainer_MRGenShort -device cpu

The lean plans keep nnU-Net's preprocessing (the preprocessed data are shared) and shrink the 2D network to at most
4 stages with features capped at 256 (mrgen/nnunet/plans.py; measured by scripts/bench_nnunet.py). nnU-Net finds
planners only inside its own package, so this is a plans file, nnU-Net's documented way to change the network.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrgen.cli import exit_on_user_error  # noqa: E402
from mrgen.nnunet.env import NnUNetPathError, find_dataset  # noqa: E402
from mrgen.nnunet.plans import write_lean_plans  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="dataset id (601) or folder name (Dataset601_X)")
    parser.add_argument("--preprocessed", type=Path, default=None,
                        help="nnU-Net preprocessed folder (default: $nnUNet_preprocessed)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    root = args.preprocessed or os.environ.get("nnUNet_preprocessed")

    def write() -> Path:
        if not root:
            raise NnUNetPathError("no preprocessed folder: pass --preprocessed DIR or set nnUNet_preprocessed")
        return write_lean_plans(find_dataset(Path(root), args.dataset))

    path = exit_on_user_error(write)
    logging.info("wrote %s; train with: nnUNetv2_train <id> 2d <fold> -p %s", path, path.stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
