"""MRGen: a controllable latent-diffusion data engine for MRI segmentation of unannotated modalities."""

__version__ = "0.1.0"
