"""Per-organ 3D DSC, HD95 and NSD of 2D slice predictions, in each case's original volume geometry.

The predictions (<case>_s<k>.png or .nii.gz, e.g. from nnUNetv2_predict on imagesTs) are stacked back into
3D with the geometry sidecars written by prepare_real_data.py (resize and pad undone, slice order and
orientation restored, the original affine), then compared with the ground truth using the real spacing.
Writes per_case.csv, summary.json and NIfTI volumes (gt, pred, image) under --out, and prints a table.
Example:
    python Segmentation/evaluate_nib.py --nnunet_name Dataset002_Phantom_T2_Real --seg_dir labelsPred \\
        --target_dataset CHAOSMR --source_dataset CHAOSMR
See docs/segmentation.md for the metric definitions and conventions.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrgen.evaluation.seg_metrics import EMPTY_POLICIES  # noqa: E402
from mrgen.evaluation.volume_eval import (  # noqa: E402
    EvaluationOptions,
    EvaluationPaths,
    evaluate_dataset,
    format_table,
)
from mrgen.cli import exit_on_user_error  # noqa: E402
from mrgen.nnunet.env import find_dataset, raw_root  # noqa: E402
from mrgen.nnunet.labels import DATASET2LABEL, evaluation_labels  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target_dataset", help=f"ground-truth label convention: {', '.join(DATASET2LABEL)} or a "
                                                 "JSON file {\"liver\": 1, \"kidney\": [2, 3]}; default: dataset.json")
    parser.add_argument("--source_dataset", help="prediction label convention (same choices); default: dataset.json")
    parser.add_argument("--nnunet_name", help="test dataset folder (or id) under $nnUNet_raw; relative folders "
                                              "below resolve against it")
    parser.add_argument("--seg_dir", type=Path, required=True, help="predicted slices")
    parser.add_argument("--gt_dir", type=Path, help="ground-truth slices (default: <dataset>/labelsTs)")
    parser.add_argument("--img_dir", type=Path, help="image slices, to also write image volumes (optional)")
    parser.add_argument("--geometry_dir", type=Path, help="geometry sidecars (default: <dataset>/geometryTs)")
    parser.add_argument("--out", type=Path, help="output folder (default: <seg_dir>/evaluation)")
    parser.add_argument("--nsd_tolerance", type=float, default=2.0, help="NSD tolerance in mm (default 2.0)")
    parser.add_argument("--empty_policy", choices=EMPTY_POLICIES, default="exclude",
                        help="both masks empty: 'exclude' the case from that organ's mean (default) or score "
                             "DSC = NSD = 1 as the 'original' did")
    parser.add_argument("--include_unions_in_mean", action="store_true",
                        help="count union organs (CHAOS kidney) in the mean over organs")
    parser.add_argument("--no_nifti", action="store_true", help="skip writing NIfTI volumes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)

    def evaluate() -> dict:
        dataset_dir = find_dataset(raw_root(None), args.nnunet_name) if args.nnunet_name else None
        paths = EvaluationPaths(args.seg_dir, args.gt_dir, args.img_dir, args.geometry_dir, args.out, dataset_dir)
        options = EvaluationOptions(tolerance_mm=args.nsd_tolerance, empty_policy=args.empty_policy,
                                    include_unions_in_mean=args.include_unions_in_mean, write_nifti=not args.no_nifti)
        return evaluate_dataset(
            paths,
            evaluation_labels(args.target_dataset) if args.target_dataset else None,
            evaluation_labels(args.source_dataset) if args.source_dataset else None,
            options,
        )

    print(format_table(exit_on_user_error(evaluate)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
