"""Real 3D volumes with organ labels -> a 2D slice nnU-Net raw dataset (train or test split).

Inputs (one of): --jsonl (SAT-style volume list, e.g. our simulated dataset's volumes_T2-SPIR_test.jsonl),
--image_dir [--label_dir] (NIfTI pairs), --msd_dir [--channel] (MSD task, AMOS22), --chaos_root --sequence
(CHAOS MR), --promise12_dir (PROMISE12 .mhd).
Writes images<Tr|Ts>, labels<Tr|Ts>, geometry<Tr|Ts> (one sidecar per case, used by evaluate_nib.py),
conditional<Tr|Ts> (a conditional-dataset index of the same slices) and dataset.json. Example:
    python Segmentation/prepare_real_data.py --jsonl phantom/volumes_T2-SPIR_test.jsonl --split test \\
        --dataset_id 2 --dataset_name Phantom_T2_Real --mask2label CHAOSMR
See docs/segmentation.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from mrgen.cli import exit_on_user_error  # noqa: E402
from mrgen.nnunet.chaos import SEQUENCES  # noqa: E402
from mrgen.nnunet.labels import MASK2LABEL, export_labels  # noqa: E402
from mrgen.nnunet.real_data import DEFAULT_REGION, RealDataOptions, VolumeInputs, prepare_real_data  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_argument_group("input (give one)")
    source.add_argument("--jsonl", nargs="+", type=Path, default=[], help="JSONL volume list(s)")
    source.add_argument("--image_dir", type=Path, help="NIfTI images (X_image.nii.gz beside X_label.nii.gz, "
                                                       "or X_0000.nii.gz with --label_dir)")
    source.add_argument("--label_dir", type=Path, help="NIfTI labels named X.nii.gz")
    source.add_argument("--label_names", nargs="+", default=[], help="organ names of label values 1, 2, ... "
                                                                     "(with --image_dir)")
    source.add_argument("--msd_dir", type=Path, help="a folder with an MSD-style dataset.json: a Medical Segmentation "
                        "Decathlon task (4D prostate: add --channel) or AMOS22")
    source.add_argument("--chaos_root", type=Path, help="CHAOS MR folder holding the numbered patient folders")
    source.add_argument("--promise12_dir", type=Path, nargs="+", help="PROMISE12 folders of CaseNN.mhd volumes "
                        "(e.g. TrainingData_Part1 TrainingData_Part2 TrainingData_Part3)")
    source.add_argument("--sequence", choices=sorted(SEQUENCES), help="CHAOS sequence")
    source.add_argument("--channel", type=int, help="channel of 4D images (MSD prostate: 0 T2, 1 ADC)")
    source.add_argument("--cases", nargs="+", default=[], help="only these case or patient ids")
    out = parser.add_argument_group("output")
    out.add_argument("--dataset_id", type=int, required=True)
    out.add_argument("--dataset_name", required=True)
    out.add_argument("--out", type=Path, help="nnU-Net raw folder (default: $nnUNet_raw)")
    out.add_argument("--split", choices=("train", "test"), default="test",
                     help="imagesTr/labelsTr (train) or imagesTs/labelsTs (test)")
    out.add_argument("--mask2label", default=None,
                     help=f"output labels: {', '.join(MASK2LABEL)} or a JSON file; default: the volumes' own "
                          "label names in order (use CHAOSMR for SAT-style CHAOS lists to drop the 'kidney' union)")
    out.add_argument("--format", choices=("png", "nifti"), default="png")
    out.add_argument("--size", type=int, default=512,
                     help="pad to a square and resize to SIZE (original: 512); 0 keeps the native size, no pad")
    out.add_argument("--intensity", choices=("slice", "volume", "raw"), default="slice",
                     help="slice: per-slice min-max to 0-255 (original); volume: per-volume min-max; "
                          "raw: scanner values (NIfTI only)")
    out.add_argument("--orientation", default="LPS",
                     help="axis codes of the slicing view (LPS: radiological axial, slices along S) or 'native' "
                          "(voxel axes as stored); always recorded in the geometry sidecar")
    out.add_argument("--no_labels", action="store_true", help="write images only (unlabelled test data)")
    out.add_argument("--no_index", action="store_true", help="skip the conditional-dataset index")
    out.add_argument("--modality", help="modality (registry key or short name such as T2-SPIR) for the index; "
                                        "default: the volumes' own")
    out.add_argument("--region", default=DEFAULT_REGION, help="region text of the index entries")
    out.add_argument("--channel_name", default="MR", help="dataset.json channel name (CT selects CT normalisation)")
    out.add_argument("--overwrite", action="store_true", help="replace this split's previous export")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    inputs = VolumeInputs(jsonl=args.jsonl, image_dir=args.image_dir, label_dir=args.label_dir,
                          label_names=args.label_names, msd_dir=args.msd_dir, chaos_root=args.chaos_root,
                          promise12_dir=args.promise12_dir or (),
                          sequence=args.sequence, channel=args.channel, cases=args.cases, modality=args.modality)

    def convert() -> None:
        options = RealDataOptions(
            dataset_id=args.dataset_id, dataset_name=args.dataset_name, split=args.split,
            labels=None if args.mask2label is None else export_labels(args.mask2label), file_format=args.format,
            size=args.size or None, intensity=args.intensity, orientation=args.orientation,
            write_labels=not args.no_labels, write_index=not args.no_index, modality=args.modality,
            region=args.region, channel_name=args.channel_name, overwrite=args.overwrite,
        )
        prepare_real_data(inputs, args.out, options)

    exit_on_user_error(convert)
    return 0


if __name__ == "__main__":
    sys.exit(main())
