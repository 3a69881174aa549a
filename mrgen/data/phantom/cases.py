"""One simulated case: an anatomy rendered in a modality through its signal equation, bias field and Rician
noise, with its own seeded random stream."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mrgen.data.phantom.anatomy import Anatomy, sample_anatomy
from mrgen.data.phantom.geometry import DEFAULT_SIZE, DEFAULT_SLICES, Geometry, SUPERSAMPLE
from mrgen.data.phantom.physics import Acquisition, SEQUENCES, Tissue, sample_acquisition, water_fat_signals


def _bias_field(geometry: Geometry, acquisition: Acquisition) -> np.ndarray:
    grid = geometry.grid(factor=1)
    half = geometry.fov_mm / 2
    x = (grid.x / half)[None, None, :]
    y = (grid.y / half)[None, :, None]
    z = (grid.z / geometry.coverage_mm * 2 - 1)[:, None, None]
    c = acquisition.bias_coefficients
    log_bias = c[0] * x + c[1] * y + c[2] * z + c[3] * x * x + c[4] * x * y + c[5] * x * z + c[6] * y * y + c[7] * x * x
    return np.exp(log_bias - log_bias.mean())


def render_signal(anatomy: Anatomy, modality: str, acquisition: Acquisition) -> np.ndarray:
    """The noise-free complex image (z, row, col) at native resolution, before blur and bias."""
    sequence = SEQUENCES[modality]
    n = max(Tissue) + 1
    table = np.zeros(n, np.complex64)
    texture_amp = np.zeros(n, np.float32)
    for tissue, props in anatomy.tissues.items():
        water, fat = water_fat_signals(props, sequence)
        if sequence.fat_suppressed:
            fat *= acquisition.fat_residual
        value = water + fat * np.exp(1j * sequence.fat_phase)
        if props.flowing:
            value *= acquisition.flow_factor
        table[tissue] = value
        texture_amp[tissue] = props.texture
    signal = table[anatomy.tissue] * (1.0 + texture_amp[anatomy.tissue] * anatomy.texture)
    d, h, w = (s // SUPERSAMPLE for s in signal.shape)
    return signal.reshape(d, SUPERSAMPLE, h, SUPERSAMPLE, w, SUPERSAMPLE).mean(axis=(1, 3, 5))


def render_case(anatomy: Anatomy, modality: str, rng: np.random.Generator,
                acquisition: Acquisition | None = None, noise: bool = True) -> np.ndarray:
    """Render one anatomy in a modality: float32 magnitude image in NIfTI layout (W, H, D).

    The same anatomy can be rendered in several modalities (paired anatomy, for physics checks);
    the dataset itself draws a new anatomy per modality and case.
    """
    if modality not in SEQUENCES:
        raise ValueError(f"unknown phantom modality {modality!r}; choose from {', '.join(SEQUENCES)}")
    acquisition = acquisition or sample_acquisition(rng, SEQUENCES[modality])
    signal = render_signal(anatomy, modality, acquisition)
    sigma = (acquisition.blur_through_px, acquisition.blur_inplane_px, acquisition.blur_inplane_px)
    signal = ndimage.gaussian_filter(signal.real, sigma) + 1j * ndimage.gaussian_filter(signal.imag, sigma)
    signal *= _bias_field(anatomy.geometry, acquisition)
    if noise:
        body = anatomy.labels.transpose(2, 1, 0) > 0
        reference = float(np.abs(signal)[body].mean()) if body.any() else float(np.abs(signal).mean())
        std = reference / acquisition.snr
        signal = signal + rng.normal(0.0, std, signal.shape) + 1j * rng.normal(0.0, std, signal.shape)
    return np.ascontiguousarray(np.abs(signal).astype(np.float32).transpose(2, 1, 0))


def _modality_code(modality: str) -> int:
    return zlib.crc32(modality.encode("utf-8"))


def case_seed_sequence(seed: int, modality: str, case_index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence((seed, _modality_code(modality), 0, case_index))


def case_id(modality: str, case_index: int) -> str:
    return f"{modality}_{case_index:03d}"


@dataclass
class PhantomCase:
    case_id: str
    modality: str
    anatomy: Anatomy
    image: np.ndarray  # float32 (W, H, D)

    @property
    def labels(self) -> np.ndarray:
        return self.anatomy.labels


def simulate_case(seed: int, modality: str, case_index: int, size: int = DEFAULT_SIZE,
                  slices: int = DEFAULT_SLICES) -> PhantomCase:
    """One case of the dataset exactly as ``generate_phantom_dataset`` makes it."""
    anatomy_seq, render_seq = case_seed_sequence(seed, modality, case_index).spawn(2)
    anatomy = sample_anatomy(np.random.default_rng(anatomy_seq), size, slices)
    image = render_case(anatomy, modality, np.random.default_rng(render_seq))
    return PhantomCase(case_id(modality, case_index), modality, anatomy, image)


def split_cases(seed: int, modality: str, cases: int, test_fraction: float) -> list[str]:
    """'train'/'test' per case index; at least one test case when cases >= 2 and test_fraction > 0."""
    if cases < 2 or test_fraction <= 0:
        return ["train"] * cases
    n_test = min(cases - 1, max(1, round(cases * test_fraction)))
    rng = np.random.default_rng(np.random.SeedSequence((seed, _modality_code(modality), 1)))
    test = set(rng.permutation(cases)[:n_test].tolist())
    return ["test" if i in test else "train" for i in range(cases)]
