"""The command line of the training scripts: ``--config``, ``--resume`` and ``key=value`` overrides."""

from __future__ import annotations

import argparse
import logging
from typing import Callable, Sequence

from mrgen.cli import exit_on_user_error
from mrgen.config import ORIGINAL_PAIR_CONFIG, ControlNetConfig, UNetConfig, VAEConfig, load_config
from mrgen.training.controlnet_stage import train_controlnet
from mrgen.training.unet_stage import train_unet
from mrgen.training.vae_stage import train_vae

# The original's training scripts took no config argument; these are its configs.
DEFAULT_CONFIGS = {
    "vae": "training_configs/train_vae_config.yml",
    "unet": "training_configs/train_unet_config.yml",
    "controlnet": ORIGINAL_PAIR_CONFIG,
}

STAGES: dict[str, tuple[type, Callable, str]] = {
    "vae": (VAEConfig, train_vae, "Stage 1: train the 1-channel KL-VAE."),
    "unet": (UNetConfig, train_unet, "Stage 2: train the text-conditioned latent-diffusion UNet."),
    "controlnet": (ControlNetConfig, train_controlnet, "Stage 3: train the mask-conditioned ControlNet of one pair."),
}


def parse_args(stage: str, argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"train_{stage}.py", description=STAGES[stage][2],
        epilog="Launch with `accelerate launch` for several GPUs. Example overrides: train.max_train_steps=100 "
               "train.learning_rate=1e-4 output_dir=runs/try1")
    default = DEFAULT_CONFIGS[stage]
    parser.add_argument("--config", default=default, help=f"the YAML config (default: {default}, the original's)")
    parser.add_argument("--resume", default=None, metavar="latest|PATH",
                        help="continue from the newest checkpoint in output_dir/checkpoints, or from a given "
                             "checkpoint folder")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override config keys: section.key=value, or key=value for a unique key name")
    return parser.parse_args(argv)


def main(stage: str, argv: Sequence[str] | None = None) -> None:
    args = parse_args(stage, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # it logs every file of every checkpoint
    schema, train, _ = STAGES[stage]
    exit_on_user_error(lambda: train(load_config(args.config, schema, args.overrides), resume=args.resume))
