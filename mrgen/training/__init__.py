"""The training stages on one shared accelerate harness.

``train_vae``, ``train_unet`` and ``train_controlnet`` take a typed config (``mrgen.config``) and return the run's
pipeline folder; ``mrgen.training.cli.main(stage)`` is the command line of ``train_*.py``.
"""

from mrgen.training.controlnet_stage import train_controlnet
from mrgen.training.harness import PIPELINE_DIR, run_training
from mrgen.training.unet_stage import train_unet
from mrgen.training.vae_stage import train_vae

__all__ = ["PIPELINE_DIR", "run_training", "train_controlnet", "train_unet", "train_vae"]
