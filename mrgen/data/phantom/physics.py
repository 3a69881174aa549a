"""Contrast physics of the simulated dataset: 1.5 T tissue properties (jittered per case), the MR sequences and
their water/fat signal equations."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np


class Tissue(IntEnum):
    AIR = 0
    LUNG = 1
    FAT = 2
    MUSCLE = 3
    LIVER = 4
    SPLEEN = 5
    KIDNEY_CORTEX = 6
    KIDNEY_MEDULLA = 7
    URINE = 8
    MARROW = 9
    CORTICAL_BONE = 10
    RIB = 11
    CSF = 12
    DISC = 13
    BLOOD = 14
    BOWEL_WALL = 15
    BOWEL_FLUID = 16
    BOWEL_CHYME = 17
    GAS = 18
    BILE = 19
    PANCREAS = 20


@dataclass(frozen=True)
class TissueProps:
    """Water-component relaxation (ms), relative proton density, fat fraction and texture amplitude."""

    t1: float
    t2: float
    t2star: float
    pd: float
    fat_fraction: float = 0.0
    texture: float = 0.0
    flowing: bool = False


# Fat component (all tissues): 1.5 T methylene T1; T2 is the long apparent value seen on turbo spin echo.
FAT_T1_MS = 260.0
FAT_T2_MS = 130.0

TISSUES: dict[Tissue, TissueProps] = {
    Tissue.AIR: TissueProps(1000, 1, 1, 0.0),
    Tissue.LUNG: TissueProps(1200, 40, 2, 0.10),
    Tissue.FAT: TissueProps(1000, 50, 30, 0.95, fat_fraction=0.9, texture=0.03),
    Tissue.MUSCLE: TissueProps(900, 32, 28, 0.72, texture=0.03),
    Tissue.LIVER: TissueProps(586, 46, 28, 0.74, texture=0.04),
    Tissue.SPLEEN: TissueProps(1057, 79, 45, 0.83, texture=0.04),
    Tissue.KIDNEY_CORTEX: TissueProps(966, 87, 50, 0.84, texture=0.03),
    Tissue.KIDNEY_MEDULLA: TissueProps(1412, 85, 50, 0.88, texture=0.03),
    Tissue.URINE: TissueProps(3000, 1200, 400, 0.98),
    Tissue.MARROW: TissueProps(700, 50, 15, 0.85, fat_fraction=0.5, texture=0.06),
    Tissue.CORTICAL_BONE: TissueProps(1000, 5, 1, 0.08),
    Tissue.RIB: TissueProps(700, 40, 12, 0.75, fat_fraction=0.6),
    Tissue.CSF: TissueProps(4000, 1800, 300, 1.0),
    Tissue.DISC: TissueProps(1150, 110, 60, 0.85, texture=0.03),
    Tissue.BLOOD: TissueProps(1441, 290, 100, 0.88, flowing=True),
    Tissue.BOWEL_WALL: TissueProps(850, 55, 35, 0.78, texture=0.05),
    Tissue.BOWEL_FLUID: TissueProps(2500, 700, 200, 0.95, texture=0.05),
    Tissue.BOWEL_CHYME: TissueProps(1000, 100, 40, 0.85, fat_fraction=0.05, texture=0.15),
    Tissue.GAS: TissueProps(1000, 1, 1, 0.0),
    Tissue.BILE: TissueProps(2200, 600, 200, 0.95),
    Tissue.PANCREAS: TissueProps(584, 46, 30, 0.75, texture=0.05),
}
LIVER_FAT_FRACTION_RANGE = (0.0, 0.15)
BILE_T1_RANGE_MS = (800.0, 3000.0)  # concentrated bile shortens T1


def jittered_tissues(rng: np.random.Generator) -> dict[Tissue, TissueProps]:
    """This patient's tissue table: T1/T2 within +-8 %, PD within +-3 %, a random liver fat fraction."""
    table = {}
    for tissue, p in TISSUES.items():
        t1 = p.t1 * rng.uniform(0.92, 1.08)
        table[tissue] = replace(p, t1=t1, t2=p.t2 * rng.uniform(0.92, 1.08), t2star=p.t2star * rng.uniform(0.92, 1.08),
                                pd=p.pd * rng.uniform(0.97, 1.03))
    table[Tissue.LIVER] = replace(table[Tissue.LIVER], fat_fraction=rng.uniform(*LIVER_FAT_FRACTION_RANGE))
    table[Tissue.BILE] = replace(table[Tissue.BILE], t1=rng.uniform(*BILE_T1_RANGE_MS))
    return table


@dataclass(frozen=True)
class SequenceParams:
    """One MR contrast. ``kind``: 'gre' (spoiled gradient echo), 'se' (spin echo) or 'tse' (turbo SE)."""

    description: str
    kind: str
    tr_ms: float
    te_ms: float
    flip_deg: float = 90.0
    fat_phase: float = 0.0
    fat_suppressed: bool = False


SEQUENCES: dict[str, SequenceParams] = {
    "T1-InPhase": SequenceParams("2D spoiled gradient echo, in phase", "gre", 150.0, 4.6, 70.0, 0.0),
    "T1-OutPhase": SequenceParams("2D spoiled gradient echo, opposed phase", "gre", 150.0, 2.3, 70.0, math.pi),
    "T2-SPIR": SequenceParams("turbo spin echo with SPIR fat suppression", "tse", 1600.0, 80.0, fat_suppressed=True),
    "T1": SequenceParams("spin echo T1-weighted", "se", 500.0, 12.0),
    "T2": SequenceParams("turbo spin echo T2-weighted, no fat suppression", "tse", 3000.0, 90.0),
}


@dataclass(frozen=True)
class Acquisition:
    """Per-scan randomness: flow, fat-suppression residual, blur, bias field and noise level."""

    flow_factor: float
    fat_residual: float
    blur_inplane_px: float
    blur_through_px: float
    bias_coefficients: tuple[float, ...]
    snr: float


def sample_acquisition(rng: np.random.Generator, sequence: SequenceParams) -> Acquisition:
    # flowing blood: a void on spin echo, intermediate (partial inflow) on gradient echo
    flow = rng.uniform(0.3, 0.8) if sequence.kind == "gre" else rng.uniform(0.03, 0.1)
    bias = (
        *rng.normal(0.0, 0.08, size=6),    # x, y, z, x^2, xy, xz
        rng.uniform(0.15, 0.35),           # y^2: the anterior/posterior phased-array coil brightens both surfaces
        rng.uniform(0.0, 0.15),            # x^2 lateral coil elements
    )
    return Acquisition(
        flow_factor=flow,
        fat_residual=rng.uniform(0.02, 0.06),
        blur_inplane_px=rng.uniform(0.3, 0.5),
        blur_through_px=rng.uniform(0.2, 0.35),
        bias_coefficients=tuple(float(b) for b in bias),
        snr=rng.uniform(14.0, 30.0),
    )


def water_fat_signals(props: TissueProps, sequence: SequenceParams) -> tuple[float, float]:
    """Noise-free magnitudes of the water and the fat component of one tissue."""
    def relaxation(t1: float, t2: float, t2star: float) -> float:
        if sequence.kind == "gre":
            e1 = math.exp(-sequence.tr_ms / t1)
            alpha = math.radians(sequence.flip_deg)
            steady = math.sin(alpha) * (1 - e1) / (1 - math.cos(alpha) * e1)
            return steady * math.exp(-sequence.te_ms / t2star)
        return (1 - math.exp(-sequence.tr_ms / t1)) * math.exp(-sequence.te_ms / t2)

    water = props.pd * (1 - props.fat_fraction) * relaxation(props.t1, props.t2, props.t2star)
    fat = props.pd * props.fat_fraction * relaxation(FAT_T1_MS, FAT_T2_MS, props.t2star)
    return water, fat
