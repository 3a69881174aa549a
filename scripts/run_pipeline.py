"""The whole MRGen chain on the simulated dataset, resumable stage by stage, ending in report.md.

    python scripts/run_pipeline.py --config training_configs/pipeline/demo.yml [key=value ...]

e.g. ``models.train=true out=demo_full`` trains every model from scratch instead of using the zoo.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mrgen.cli import exit_on_user_error  # noqa: E402
from mrgen.config import load_config  # noqa: E402
from mrgen.pipeline.config import PipelineConfig  # noqa: E402
from mrgen.pipeline.demo import run_pipeline  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="training_configs/pipeline/demo.yml")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("accelerate", "diffusers", "mrgen.data.phantom", "mrgen.synthesis.run"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    print(exit_on_user_error(lambda: run_pipeline(load_config(args.config, PipelineConfig, args.overrides))))


if __name__ == "__main__":
    main()
