"""Synthetic (or any conditional) slice JSON -> an nnU-Net v2 raw training dataset.

Example (the original's flags):
    python Segmentation/prepare_nnunet_data.py --json_file synth/json_files/synthetic_T2-SPIR_filtered.json \\
        --mask2label CHAOSMR --dataset_id 001 --dataset_name CHAOSMR_T2_Synthetic
writes $nnUNet_raw/Dataset001_CHAOSMR_T2_Synthetic/{imagesTr,labelsTr,visualizationTr,dataset.json}.
See docs/segmentation.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrgen.cli import exit_on_user_error  # noqa: E402
from mrgen.nnunet.export import ExportOptions, export_json_files  # noqa: E402
from mrgen.nnunet.labels import MASK2LABEL, export_labels  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json_file", nargs="+", required=True,
                        help="synthesis JSON(s) (mask_0_path ...) or conditional index(es) (mask0_path ...)")
    parser.add_argument("--mask2label", default="CHAOSMR",
                        help=f"built-in mapping ({', '.join(MASK2LABEL)}) or a JSON file "
                             "{\"mask_0_path\": \"liver\", ...} (organ i gets id i+1)")
    parser.add_argument("--dataset_id", required=True, type=int, help="nnU-Net dataset id (1-999)")
    parser.add_argument("--dataset_name", required=True, help="nnU-Net dataset name (letters, digits, _ -)")
    parser.add_argument("--out", default=None, help="nnU-Net raw folder (default: $nnUNet_raw)")
    parser.add_argument("--ratios", nargs="+", type=float, default=None,
                        help="sampling ratio in (0, 1] per JSON file when merging several (default: all of each)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the merge sampling")
    parser.add_argument("--format", choices=("png", "nifti"), default="png",
                        help="png (the original; nnU-Net assumes 1 mm pixels) or pseudo-3D NIfTI (1, H, W) "
                             "carrying the in-plane spacing")
    parser.add_argument("--size", type=int, default=None,
                        help="pad to a square and resize to SIZE (bilinear images, nearest labels); default: as stored")
    parser.add_argument("--spacing", nargs=2, type=float, default=None, metavar=("ROW_MM", "COL_MM"),
                        help="pixel spacing of the stored images (overrides the entries' spacing)")
    parser.add_argument("--mask_threshold", type=int, default=0,
                        help="mask pixels above this grey level are foreground (original: 0)")
    parser.add_argument("--channel_name", default="MR", help="dataset.json channel name (CT selects CT normalisation)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export of this dataset")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)

    def export() -> None:
        options = ExportOptions(
            dataset_id=args.dataset_id, dataset_name=args.dataset_name, labels=export_labels(args.mask2label),
            file_format=args.format, size=args.size, mask_threshold=args.mask_threshold,
            spacing=None if args.spacing is None else tuple(args.spacing), channel_name=args.channel_name,
            overwrite=args.overwrite,
        )
        export_json_files(args.json_file, args.out, options, args.ratios, args.seed)

    exit_on_user_error(export)
    return 0


if __name__ == "__main__":
    sys.exit(main())
