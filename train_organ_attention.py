"""Stage entry point: `accelerate launch train_organ_attention.py --config <yaml> [--resume latest] [key=value ...]`."""

from mrgen.training.cli import main

if __name__ == "__main__":
    main("organ_attention")
