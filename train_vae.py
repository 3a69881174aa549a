"""Stage entry point: `accelerate launch train_vae.py --config <yaml> [--resume latest] [key=value ...]`."""

from mrgen.training.cli import main

if __name__ == "__main__":
    main("vae")
