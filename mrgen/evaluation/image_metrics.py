"""Reconstruction metrics of 2D images in [-1, 1] (data range 2), per image.

SSIM uses skimage's Gaussian-free uniform window of ``window`` pixels (7 by default, the standard choice)
or, as a labelled option, ``"global"``: the largest odd size that fits the image, which is what the
original's ``evaluate_vae_performance.py`` used (511 for 512 images). That window makes SSIM a near-global
statistic and explains its values near 0.999 (reference 8.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

DATA_RANGE = 2.0
SsimWindow = int | Literal["global"]


@dataclass(frozen=True)
class ReconstructionMetrics:
    l1: float
    mse: float
    psnr: float
    ssim: float


def global_window(shape: tuple[int, ...]) -> int:
    """The largest odd window that fits: the original's SSIM setting."""
    side = min(shape[-2:])
    return side if side % 2 == 1 else side - 1


def ssim(reference: np.ndarray, test: np.ndarray, window: SsimWindow = 7) -> float:
    win_size = global_window(reference.shape) if window == "global" else int(window)
    if win_size < 3 or win_size % 2 == 0 or win_size > min(reference.shape[-2:]):
        raise ValueError(f"SSIM window must be odd, >= 3 and fit the {reference.shape} image, got {win_size}")
    return float(structural_similarity(reference, test, data_range=DATA_RANGE, win_size=win_size))


def reconstruction_metrics(reference: np.ndarray, test: np.ndarray, window: SsimWindow = 7) -> ReconstructionMetrics:
    """Metrics of one 2D image pair in [-1, 1]; ``test`` is clipped to that range first."""
    reference = np.asarray(reference, dtype=np.float64)
    test = np.clip(np.asarray(test, dtype=np.float64), -1.0, 1.0)
    if reference.shape != test.shape or reference.ndim != 2:
        raise ValueError(f"expected two 2D images of one shape, got {reference.shape} and {test.shape}")
    diff = reference - test
    mse = float(np.mean(diff ** 2))
    psnr = float("inf") if mse == 0 else float(peak_signal_noise_ratio(reference, test, data_range=DATA_RANGE))
    return ReconstructionMetrics(l1=float(np.mean(np.abs(diff))), mse=mse, psnr=psnr, ssim=ssim(reference, test, window))
