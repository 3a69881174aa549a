"""Synthesis cost: the original's settings beside our fast settings, in one run, on the same masks.

    python scripts/bench_synthesis.py --ckpt <pipeline folder> --config training_configs/controlnet/<pair>.yml \\
        --out runs/bench_synthesis [--masks 8] [--controlnet <ControlNet folder>]

    # with the model zoo, on the end-to-end demo's dataset (its pair config points at it)
    python scripts/bench_synthesis.py --ckpt zoo/phantom --controlnet zoo/phantom/controlnet_T1-InPhase_to_T2-SPIR \\
        --config demo_output/pair.yml --masks 4 --out runs/bench_synthesis

For each setting it runs ``synthesize_filter_multi`` on the first ``--masks`` masks and prints UNet
evaluations per accepted sample, acceptance rate and seconds per accepted sample.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrgen.io.atomic import atomic_write_json  # noqa: E402
from mrgen.synthesis.run import SynthesisOptions, synthesize  # noqa: E402

SETTINGS = {
    "original (DDIM 50, CFG 7, 20 tries, no early stop)": dict(scheduler="ddim", steps=50, max_tries_per_mask=20,
                                                               num_images_per_prompt=10, early_stop=False),
    "fast (DPM-Solver++ 20, CFG 7, early stop, batches of 4)": dict(scheduler="dpm-solver++", steps=20,
                                                                     max_tries_per_mask=20, num_images_per_prompt=4,
                                                                     early_stop=True),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True, help="pipeline folder (vae/, unet/, scheduler/, text_encoder.json)")
    parser.add_argument("--controlnet", help="ControlNet folder (default: <ckpt>/controlnet), e.g. "
                                             "zoo/phantom/controlnet_T1-InPhase_to_T2-SPIR")
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--masks", type=int, default=8)
    parser.add_argument("--filter", default="offline", choices=["offline", "sam2"])
    parser.add_argument("--guidance_scale", type=float, default=7.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    base = SynthesisOptions(ckpt=args.ckpt, controlnet=args.controlnet, log_dir="", config=args.config,
                            max_masks=args.masks, num_gpus=1, filter=args.filter, guidance_scale=args.guidance_scale)
    results = {}
    for i, (name, changes) in enumerate(SETTINGS.items()):
        options = replace(base, log_dir=str(args.out / f"setting_{i}"), **changes)
        results[name] = synthesize(options)
    atomic_write_json(args.out / "bench_synthesis.json", results)
    print(table(results))


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def table(results: dict[str, dict]) -> str:
    lines = ["| setting | masks | candidates | accepted | acceptance rate | UNet evaluations / accepted | s / accepted |",
             "|---|---|---|---|---|---|---|"]
    for name, s in results.items():
        lines.append(f"| {name} | {s['masks']} | {s['candidates']} | {s['accepted']} | {100 * s['acceptance_rate']:.1f} % | "
                     f"{_fmt(s['unet_evaluations_per_accepted'], '.0f')} | {_fmt(s['seconds_per_accepted'], '.2f')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
