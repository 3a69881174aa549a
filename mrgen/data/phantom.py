"""The built-in simulated abdominal MRI dataset: procedural anatomy rendered through MR signal equations.

Every case is a random upper abdomen built from ellipsoid-like solids in physical millimetres (body
wall with subcutaneous fat and muscle, ribs, spine with marrow, cortex, discs and CSF, paraspinal and
psoas muscles, aorta and IVC, liver with its vessels, gallbladder, stomach, pancreas, spleen, both
kidneys with cortex, medulla, sinus fat and pelvis, bowel loops in visceral fat, lung bases). Each
voxel of a 2x supersampled grid holds one tissue; tissues carry 1.5 T relaxation times, proton density
and a fat fraction (jittered per case). A modality renders the case through its sequence's signal
equation with separate water and fat components, W + F exp(i phi), averaged in complex form over the
supersampled grid (so fat-water boundary voxels cancel on out-of-phase images), then partial-volume
blur, a smooth multiplicative bias field and Rician noise.

Geometry convention (shared by the NIfTI files, the PNG slices and every array returned here):

- NIfTI data array shape (W, H, D) = (size, size, slices). Voxel (i, j, k): i = PNG column (image left
  = patient right, the radiological convention), j = PNG row (top = anterior), k = slice (inferior ->
  superior). PNG slice k is ``data[:, :, k].T``.
- The affine maps voxels to RAS+ world millimetres: diag(-col_mm, -row_mm, slice_mm) plus an origin that
  puts the volume centre at the world origin; ``nibabel.aff2axcodes`` gives ('L', 'P', 'S').
- Spacing lists are [row_mm, col_mm, slice_mm] (rows and columns share one pixel size).
- Internally the supersampled tissue grid is (z, row, col) with x (mm) growing to the image right
  (patient left), y (mm) growing to the image bottom (posterior) and z (mm) growing superiorly from the
  bottom edge of the slice stack. The stack always covers about 175-195 mm of upper abdomen, so the slice
  thickness is that coverage divided by the number of slices (7-8 mm for the default 24).

Randomness: each case's generator comes from ``numpy.random.SeedSequence((seed, crc32(modality), 0,
case index))`` (spawned into an anatomy stream and a rendering stream), never from global state, so every
modality gets its own unpaired anatomy and the same arguments always give the same bytes. ``render_case``
can also render one anatomy in several modalities (paired anatomy, for physics checks).
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import zlib
from dataclasses import dataclass, field, replace
from enum import IntEnum
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import nibabel as nib
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from mrgen import viz
from mrgen.data.index import IndexEntry, save_index
from mrgen.data.modalities import load_registry
from mrgen.data.preprocess import CHAOS_ORGANS
from mrgen.io.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from mrgen.io.images import write_gray

log = logging.getLogger(__name__)

DATASET_NAME = "Phantom_MRI"
REGION = "Upper Abdominal Region"
ORGANS: tuple[str, ...] = CHAOS_ORGANS  # label id = position + 1
LIVER_LABEL, RIGHT_KIDNEY_LABEL, LEFT_KIDNEY_LABEL, SPLEEN_LABEL = 1, 2, 3, 4
MODALITY_KEYS: dict[str, str] = {
    "T1-InPhase": "T1 in-phase Abdomen MRI",
    "T1-OutPhase": "T1 out-of-phase Abdomen MRI",
    "T2-SPIR": "T2 SPIR Abdomen MRI",
    "T1": "T1 Abdomen MRI",
    "T2": "T2 Abdomen MRI",
}
AUX_MODALITY: dict[str, str] = {name: key.removesuffix(" Abdomen MRI") for name, key in MODALITY_KEYS.items()}
DEFAULT_MODALITIES: tuple[str, ...] = ("T1-InPhase", "T1-OutPhase", "T2-SPIR")
DEFAULT_SIZE = 64
DEFAULT_SLICES = 24
SUPERSAMPLE = 2
DISPLAY_PERCENTILE = 99.5
PREVIEW_SLICE_FRACTIONS = (0.2, 0.4, 0.6, 0.8)


# ----------------------------------------------------------------------------------------------- tissues

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


# --------------------------------------------------------------------------------------------- sequences

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


# ------------------------------------------------------------------------------------------------ geometry

@dataclass(frozen=True)
class Grid:
    """Voxel-centre coordinates (mm) of a (z, row, col) grid: x to the image right, y down, z up."""

    z: np.ndarray
    y: np.ndarray
    x: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.z), len(self.y), len(self.x)


@dataclass(frozen=True)
class Geometry:
    size: int
    slices: int
    pixel_mm: float
    slice_mm: float

    @property
    def fov_mm(self) -> float:
        return self.size * self.pixel_mm

    @property
    def coverage_mm(self) -> float:
        return self.slices * self.slice_mm

    def spacing(self) -> list[float]:
        """[row_mm, col_mm, slice_mm]."""
        return [self.pixel_mm, self.pixel_mm, self.slice_mm]

    def affine(self) -> np.ndarray:
        """Voxel (column, row, slice) -> RAS+ mm, centred on the volume; axis codes ('L', 'P', 'S')."""
        centre = np.array([(self.size - 1) / 2, (self.size - 1) / 2, (self.slices - 1) / 2])
        scale = np.diag([-self.pixel_mm, -self.pixel_mm, self.slice_mm])
        affine = np.eye(4)
        affine[:3, :3] = scale
        affine[:3, 3] = -scale @ centre
        return affine

    def grid(self, factor: int = SUPERSAMPLE) -> Grid:
        def centres(n: int) -> np.ndarray:
            return (np.arange(n * factor) + 0.5) / factor

        # float32 halves the cost of evaluating the shapes; sub-micrometre precision is plenty
        return Grid(
            z=(centres(self.slices) * self.slice_mm).astype(np.float32),
            y=((centres(self.size) - self.size / 2) * self.pixel_mm).astype(np.float32),
            x=((centres(self.size) - self.size / 2) * self.pixel_mm).astype(np.float32),
        )


# -------------------------------------------------------------------------------------------------- shapes

class Shape(Protocol):
    def mask(self, grid: Grid) -> np.ndarray: ...


@dataclass(frozen=True)
class Harmonic:
    """A term amp * cos(k * phi + phase + drift * dz) of a blob's radius (drift in rad per mm of z)."""

    k: int
    amp: float
    phase: float
    drift: float = 0.0


def _index_range(axis: np.ndarray, lo: float, hi: float) -> tuple[int, int]:
    return int(np.searchsorted(axis, lo)), int(np.searchsorted(axis, hi, side="right"))


@dataclass(frozen=True)
class Blob:
    """An ellipsoid-like solid.

    The axial cross-section at height z is an ellipse with semi-axes (a, b) times the z profile
    (1 - |dz / c|^q)^(1/q) (c = c_up above the centre, c_down below; q = 2 is an ellipsoid, larger is
    blunter), rotated by ``angle``, its radius modulated by low-order harmonics of
    the polar angle, its centre drifting by ``slope`` (x, y mm per mm of z) and its size by ``taper``
    (relative change per mm). ``y_max`` cuts it flat posteriorly (the table side).
    """

    cx: float
    cy: float
    cz: float
    a: float
    b: float
    c_up: float = 1e6
    c_down: float = 1e6
    q: float = 2.0
    angle: float = 0.0
    slope: tuple[float, float] = (0.0, 0.0)
    taper: float = 0.0
    harmonics: tuple[Harmonic, ...] = ()
    y_max: float | None = None

    def grown(self, da: float, db: float | None = None, dc: float = 0.0) -> Blob:
        """The same solid with semi-axes changed by (da, db, dc) mm (negative shrinks)."""
        db = da if db is None else db
        return replace(self, a=self.a + da, b=self.b + db, c_up=self.c_up + dc, c_down=self.c_down + dc)

    def mask(self, grid: Grid) -> np.ndarray:
        out = np.zeros(grid.shape, bool)
        dz = grid.z - self.cz
        zn = np.where(dz >= 0, dz / self.c_up, -dz / self.c_down)
        present = np.flatnonzero(zn < 1.0)
        if present.size == 0 or self.a <= 0 or self.b <= 0:
            return out
        k0, k1 = present[0], present[-1] + 1
        dz = dz[k0:k1]
        profile = (1.0 - zn[k0:k1] ** self.q) ** (1.0 / self.q) * np.clip(1.0 + self.taper * dz, 0.05, None)
        cx = self.cx + self.slope[0] * dz
        cy = self.cy + self.slope[1] * dz
        reach = max(self.a, self.b) * profile.max() * (1.0 + sum(abs(h.amp) for h in self.harmonics))
        x0, x1 = _index_range(grid.x, cx.min() - reach, cx.max() + reach)
        y0, y1 = _index_range(grid.y, cy.min() - reach, cy.max() + reach)
        if self.y_max is not None:
            y1 = min(y1, int(np.searchsorted(grid.y, self.y_max)))
        if x1 <= x0 or y1 <= y0:
            return out
        dx = grid.x[None, None, x0:x1] - cx[:, None, None]
        dy = grid.y[None, y0:y1, None] - cy[:, None, None]
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        scale = profile[:, None, None]
        un = (dx * cos + dy * sin) / (self.a * scale)
        vn = (dy * cos - dx * sin) / (self.b * scale)
        r2 = un * un + vn * vn
        if self.harmonics:
            phi = np.arctan2(vn, un)
            dzc = dz[:, None, None]
            radius = 1.0 + sum(h.amp * np.cos(h.k * phi + h.phase + h.drift * dzc) for h in self.harmonics)
            inside = r2 <= radius * radius
        else:
            inside = r2 <= 1.0
        out[k0:k1, y0:y1, x0:x1] = inside
        return out


@dataclass(frozen=True)
class Tube:
    """A straight vessel segment from p0 to p1 (x, y, z mm), radius r0 tapering to r1."""

    p0: tuple[float, float, float]
    p1: tuple[float, float, float]
    r0: float
    r1: float

    def mask(self, grid: Grid) -> np.ndarray:
        out = np.zeros(grid.shape, bool)
        p0, p1 = np.array(self.p0), np.array(self.p1)
        lo = np.minimum(p0, p1) - max(self.r0, self.r1)
        hi = np.maximum(p0, p1) + max(self.r0, self.r1)
        x0, x1 = _index_range(grid.x, lo[0], hi[0])
        y0, y1 = _index_range(grid.y, lo[1], hi[1])
        k0, k1 = _index_range(grid.z, lo[2], hi[2])
        if x1 <= x0 or y1 <= y0 or k1 <= k0:
            return out
        d = p1 - p0
        px = grid.x[None, None, x0:x1] - p0[0]
        py = grid.y[None, y0:y1, None] - p0[1]
        pz = grid.z[k0:k1, None, None] - p0[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / float(d @ d), 0.0, 1.0)
        dist2 = (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2
        radius = self.r0 + (self.r1 - self.r0) * t
        out[k0:k1, y0:y1, x0:x1] = dist2 <= radius * radius
        return out


@dataclass(frozen=True)
class Difference:
    base: Shape
    minus: Shape

    def mask(self, grid: Grid) -> np.ndarray:
        return self.base.mask(grid) & ~self.minus.mask(grid)


@dataclass(frozen=True)
class Union:
    parts: tuple[Shape, ...]

    def mask(self, grid: Grid) -> np.ndarray:
        out = np.zeros(grid.shape, bool)
        for part in self.parts:
            out |= part.mask(grid)
        return out


@dataclass(frozen=True)
class Intersection:
    parts: tuple[Shape, ...]

    def mask(self, grid: Grid) -> np.ndarray:
        out = self.parts[0].mask(grid)
        for part in self.parts[1:]:
            out &= part.mask(grid)
        return out


@dataclass(frozen=True)
class ZBands:
    """The part of a shape inside periodic z bands (intervertebral discs): phase + n * period + [0, width)."""

    shape: Shape
    period: float
    width: float
    phase: float

    def mask(self, grid: Grid) -> np.ndarray:
        in_band = np.mod(grid.z - self.phase, self.period) < self.width
        return self.shape.mask(grid) & in_band[:, None, None]


@dataclass(frozen=True)
class RibBand:
    """Cross-sections of the lower ribs inside the body wall.

    A rib runs around the wall from the spine and descends anteriorly, so at a given height it shows
    as a short segment whose angular position moves with z. ``wall`` is the outer edge of the band
    (inside the subcutaneous fat), ``depth`` its radial thickness (mm). Ribs exist above the costal
    margin, which rises from ``costal_post`` (posterior) to ``costal_ant`` (anterior, mm of z).
    """

    wall: Blob
    depth: float
    spacing: float
    thickness: float
    descent: float
    phase: float
    costal_post: float
    costal_ant: float

    def mask(self, grid: Grid) -> np.ndarray:
        dx = grid.x[None, None, :] - self.wall.cx
        dy = grid.y[None, :, None] - self.wall.cy
        rho = np.sqrt((dx / self.wall.a) ** 2 + (dy / self.wall.b) ** 2)
        in_wall = (rho <= 1.0) & (rho >= 1.0 - self.depth / min(self.wall.a, self.wall.b))
        # angle from the posterior midline, 0 (back) .. pi (front)
        from_back = np.abs(np.arctan2(dx / self.wall.a, dy / self.wall.b))
        z = grid.z[:, None, None]
        rib_z = z + self.descent * from_back - self.phase
        on_rib = np.mod(rib_z, self.spacing) < self.thickness
        costal = self.costal_post + (self.costal_ant - self.costal_post) * (from_back / math.pi) ** 1.5
        return in_wall & on_rib & (z > costal) & (from_back > 0.35) & (from_back < 2.5)


@dataclass(frozen=True)
class PaintOp:
    """Paint ``shape`` with a tissue and label, only inside the named region ``within`` (if any);
    ``defines`` records the shape's mask under that name for later ops."""

    shape: Shape
    tissue: Tissue
    label: int = 0
    within: str | None = None
    defines: str | None = None


@dataclass(frozen=True)
class BowelLayout:
    """Bowel loops in visceral fat: serpiginous bands |field| < ``half_width`` around the zero level
    set of a smooth random field, with an outer ``wall`` band, content chosen by a second field (fluid,
    chyme or gas), and fat elsewhere. Both widths are in units of the field's standard deviation."""

    loop_mm: float
    half_width: float
    wall: float
    fluid_level: float
    gas_level: float
    retroperitoneum_y: float


# ------------------------------------------------------------------------------------------------ anatomy

@dataclass
class Anatomy:
    """One random abdomen.

    ``tissue`` and ``texture`` live on the supersampled (z, row, col) grid; ``labels`` is the organ
    label map at native resolution in NIfTI layout (W, H, D), each voxel the organ covering most of it.
    """

    geometry: Geometry
    tissue: np.ndarray
    texture: np.ndarray
    labels: np.ndarray
    tissues: dict[Tissue, TissueProps]


def _harmonics(rng: np.random.Generator, amps: Sequence[float], drift: float = 0.006) -> tuple[Harmonic, ...]:
    return tuple(
        Harmonic(k, rng.uniform(0.0, amp), rng.uniform(0.0, 2 * math.pi), rng.uniform(-drift, drift))
        for k, amp in zip(range(2, 2 + len(amps)), amps)
    )


def plan_anatomy(rng: np.random.Generator, geometry: Geometry) -> tuple[list[PaintOp], BowelLayout]:
    """Sample a random abdomen as an ordered list of paint operations (later ones win)."""
    u = rng.uniform
    top = geometry.coverage_mm
    ops: list[PaintOp] = []

    # body outline, subcutaneous fat, muscle layer and the abdominal cavity
    body_a = u(135, 162)
    body_b = body_a * u(0.66, 0.8)
    cx, cy = u(-6, 6), u(-6, 6)
    table_y = cy + body_b * u(0.86, 0.95)
    body = Blob(cx, cy, top / 2, body_a, body_b, taper=u(-0.0006, 0.0010),
                harmonics=_harmonics(rng, (0.03, 0.03, 0.015)), y_max=table_y)
    fat_ant, fat_lat, fat_post = u(10, 40), u(8, 30), u(8, 28)
    muscle_ant, muscle_lat, muscle_post = u(9, 14), u(6, 11), u(8, 14)
    inner = replace(body, cy=cy + (fat_ant - fat_post) / 2, a=body_a - fat_lat, b=body_b - (fat_ant + fat_post) / 2,
                    y_max=table_y - fat_post)
    cavity = replace(inner, cy=inner.cy + (muscle_ant - muscle_post) / 2, a=inner.a - muscle_lat,
                     b=inner.b - (muscle_ant + muscle_post) / 2, y_max=inner.y_max - muscle_post)
    linea_alba = Blob(cx, cy - body_b, 0, u(2, 4), body_b * 0.35)
    ops += [
        PaintOp(body, Tissue.FAT, defines="body"),
        PaintOp(inner, Tissue.MUSCLE, defines="inner"),
        PaintOp(linea_alba, Tissue.FAT, within="inner"),
        PaintOp(cavity, Tissue.FAT, defines="cavity"),
    ]
    muscle = (muscle_ant + muscle_lat + muscle_post) / 3
    cb, ccy = cavity.b, cavity.cy

    # spine landmarks (painted last, but other organs are placed relative to them)
    vx, vy = cx + u(-3, 3), ccy + cb * u(0.28, 0.40)
    va, vb = u(19, 24), u(13, 16)
    canal_y = vy + vb + u(8, 10)
    canal_r = u(6.5, 8.5)
    aorta = (vx + u(8, 18), vy - vb - u(9, 14), u(9, 12.5))
    ivc = (vx - u(22, 32), vy - vb - u(6, 12), u(11, 15), u(7, 10))

    obesity = ((fat_ant + fat_lat + fat_post) / 3 - 9) / 25  # 0 lean .. 1 obese
    layout = BowelLayout(
        loop_mm=u(24, 32),
        half_width=u(0.7, 1.0) - 0.3 * obesity,
        wall=u(0.12, 0.18),
        fluid_level=u(0.7, 1.3),
        gas_level=u(-1.4, -0.9),
        retroperitoneum_y=aorta[1] - aorta[2],
    )

    ops += _ribs(rng, inner, muscle, top)
    ops += _lungs(rng, cavity, top)
    ops += _vessel_fat(rng, aorta, ivc)
    ops += _stomach(rng, cavity, top)
    ops += _pancreas(rng, cavity, aorta, top)
    liver_ops, liver_hilum = _liver(rng, cavity, ivc, top)
    ops += liver_ops
    ops += _gallbladder(rng, cavity, top)
    kidney_x = {side: vx + side * u(55, 72) for side in (-1, 1)}
    ops += _spleen(rng, cavity, kidney_x[1], top)
    for side, label in ((-1, RIGHT_KIDNEY_LABEL), (1, LEFT_KIDNEY_LABEL)):
        ops += _kidney(rng, side, label, kidney_x[side], vy, top)
    ops += _great_vessels(rng, aorta, ivc)
    ops += _back_muscles(rng, vx, vy, va, inner.y_max, top)
    ops += _spine(rng, vx, vy, va, vb, canal_y, canal_r)
    ops += _liver_vessels(rng, ivc, liver_hilum, top)
    return ops, layout


def _ribs(rng: np.random.Generator, inner: Blob, muscle: float, top: float) -> list[PaintOp]:
    u = rng.uniform
    band = RibBand(wall=inner, depth=muscle * u(0.7, 0.9), spacing=u(30, 38), thickness=u(9, 12),
                   descent=u(25, 40), phase=u(0, 40), costal_post=top * u(0.25, 0.4), costal_ant=top * u(0.7, 0.9))
    return [PaintOp(band, Tissue.RIB, within="inner")]


def _lungs(rng: np.random.Generator, cavity: Blob, top: float) -> list[PaintOp]:
    u = rng.uniform
    ops = []
    for side in (-1, 1):
        lung = Blob(cavity.cx + side * cavity.a * u(0.35, 0.55), cavity.cy + cavity.b * u(0.3, 0.5),
                    top + u(25, 50), cavity.a * u(0.5, 0.65), cavity.b * u(0.5, 0.65), c_down=u(50, 75),
                    harmonics=_harmonics(rng, (0.05, 0.04)))
        ops.append(PaintOp(lung, Tissue.LUNG, within="cavity"))
    return ops


def _vessel_fat(rng: np.random.Generator, aorta: tuple, ivc: tuple) -> list[PaintOp]:
    """Retroperitoneal fat around the great vessels (gives them an India-ink rim out of phase)."""
    u = rng.uniform
    ax, ay, ar = aorta
    ix, iy, ia, ib = ivc
    return [
        PaintOp(Blob(ax, ay, 0, ar + u(4, 9), ar + u(4, 9)), Tissue.FAT, within="cavity"),
        PaintOp(Blob(ix, iy, 0, ia + u(3, 7), ib + u(3, 7)), Tissue.FAT, within="cavity"),
    ]


def _stomach(rng: np.random.Generator, cavity: Blob, top: float) -> list[PaintOp]:
    u = rng.uniform
    outer = Blob(cavity.cx + cavity.a * u(0.15, 0.4), cavity.cy - cavity.b * u(0.15, 0.4), top * u(0.62, 0.78),
                 u(30, 48), u(22, 36), c_up=u(30, 50), c_down=u(40, 60), angle=u(-0.6, 0.6),
                 slope=(u(-0.2, 0.1), u(0.0, 0.2)), harmonics=_harmonics(rng, (0.08, 0.06, 0.04)))
    content = outer.grown(-u(3, 5), dc=-4)
    content_tissue = Tissue.BOWEL_FLUID if rng.uniform() < 0.6 else Tissue.BOWEL_CHYME
    gas_level = outer.cy - outer.b * u(0.2, 0.9)  # supine: gas rises anteriorly
    gas = replace(content, y_max=gas_level)
    ops = [PaintOp(outer, Tissue.BOWEL_WALL, within="cavity"), PaintOp(content, content_tissue, within="cavity")]
    if rng.uniform() < 0.7:
        ops.append(PaintOp(gas, Tissue.GAS, within="cavity"))
    return ops


def _pancreas(rng: np.random.Generator, cavity: Blob, aorta: tuple, top: float) -> list[PaintOp]:
    """A lobulated chain of small blobs from the head (right of midline) over the aorta to the tail."""
    u = rng.uniform
    ax, ay, ar = aorta
    z_head = top * u(0.38, 0.48)
    head = (cavity.cx - u(20, 35), ay - u(15, 30), z_head)
    neck = (ax - u(0, 10), ay - ar - u(14, 22), z_head + u(3, 10))
    tail = (cavity.cx + cavity.a * u(0.45, 0.6), ay + u(-5, 15), z_head + u(12, 28))
    beads = []
    for t in np.linspace(0.0, 1.0, 6):
        # quadratic Bezier through head -> neck -> tail
        p = [(1 - t) ** 2 * h + 2 * (1 - t) * t * n + t ** 2 * e for h, n, e in zip(head, neck, tail)]
        size = 1.25 - 0.45 * t  # the head is thicker than the tail
        beads.append(Blob(p[0], p[1], p[2], u(9, 13) * size, u(7, 10) * size, c_up=u(10, 16), c_down=u(10, 16),
                          angle=u(-1, 1), harmonics=_harmonics(rng, (0.1, 0.08))))
    return [PaintOp(Union(tuple(beads)), Tissue.PANCREAS, within="cavity")]


def _liver(rng: np.random.Generator, cavity: Blob, ivc: tuple, top: float) -> tuple[list[PaintOp], tuple]:
    u = rng.uniform
    dome = top - u(-15, 12)
    right = Blob(cavity.cx - cavity.a * u(0.38, 0.5), cavity.cy + u(-12, 8), 0.0,
                 cavity.a * u(0.52, 0.64), cavity.b * u(0.8, 1.0), q=u(2.0, 2.8), angle=u(-0.3, 0.3),
                 slope=(u(0.05, 0.25), u(0.0, 0.25)), harmonics=_harmonics(rng, (0.06, 0.05, 0.03)))
    c_up = u(35, 55)
    right = replace(right, cz=dome - c_up, c_up=c_up, c_down=u(75, 105))
    left = Blob(cavity.cx + u(-5, 25), cavity.cy - cavity.b * u(0.4, 0.55), right.cz + u(0, 15),
                u(45, 70), u(18, 30), c_up=u(25, 40), c_down=u(30, 55), angle=u(-0.4, 0.15),
                slope=(u(-0.2, 0.1), u(0.0, 0.15)), harmonics=_harmonics(rng, (0.08, 0.05)))
    caudate = Blob(ivc[0] + u(10, 22), ivc[1] - u(5, 15), right.cz + u(-10, 10), u(14, 22), u(11, 16),
                   c_up=u(20, 35), c_down=u(25, 40), harmonics=_harmonics(rng, (0.08,)))
    hilum = (right.cx + u(25, 40), right.cy - u(5, 20), right.cz - u(20, 40))
    return [PaintOp(Union((right, left, caudate)), Tissue.LIVER, LIVER_LABEL, within="cavity", defines="liver")], hilum


def _gallbladder(rng: np.random.Generator, cavity: Blob, top: float) -> list[PaintOp]:
    u = rng.uniform
    if rng.uniform() < 0.15:  # cholecystectomy
        return []
    gb = Blob(cavity.cx - u(15, 45), cavity.cy - cavity.b * u(0.3, 0.55), top * u(0.35, 0.5), u(11, 18), u(9, 15),
              c_up=u(20, 35), c_down=u(20, 35), angle=u(-1, 1), slope=(u(-0.2, 0.2), u(-0.2, 0.1)),
              harmonics=_harmonics(rng, (0.05,)))
    return [PaintOp(gb, Tissue.BILE, within="cavity")]


def _spleen(rng: np.random.Generator, cavity: Blob, left_kidney_x: float, top: float) -> list[PaintOp]:
    u = rng.uniform
    # lateral to the left kidney, so that the kidney only dents its medial surface
    sx = max(cavity.cx + cavity.a * u(0.62, 0.78), left_kidney_x + u(25, 35))
    sy = cavity.cy + cavity.b * u(0.2, 0.45)
    angle = -math.atan2(cavity.b, cavity.a) * u(0.8, 1.3)  # long axis along the posterolateral wall
    body = Blob(sx, sy, top * u(0.66, 0.78), u(50, 70), u(25, 35), c_up=u(40, 58), c_down=u(35, 50),
                angle=angle, slope=(u(-0.15, 0.05), u(-0.1, 0.1)), harmonics=_harmonics(rng, (0.06, 0.06, 0.03)))
    # the hilum side (anteromedial) is concave: subtract a blob sitting on that side
    inward = (-math.sin(angle), math.cos(angle))  # unit v-axis
    if inward[0] > 0:  # make it point medially (towards -x)
        inward = (-inward[0], -inward[1])
    offset = body.b * u(1.5, 1.9)
    hilum = replace(body, cx=sx + inward[0] * offset, cy=sy + inward[1] * offset, a=body.a * u(0.4, 0.6),
                    b=body.b * u(0.7, 0.9), harmonics=())
    return [PaintOp(Difference(body, hilum), Tissue.SPLEEN, SPLEEN_LABEL, within="cavity")]


def _kidney(rng: np.random.Generator, side: int, label: int, kx: float, vy: float, top: float) -> list[PaintOp]:
    """side -1: the right kidney (image left), +1: the left kidney (image right, a little higher)."""
    u = rng.uniform
    cz = top * u(0.33, 0.40) - (u(10, 25) if side < 0 else 0.0)
    a, b, c = u(27, 34), u(18, 24), u(50, 62)
    # the hilum faces anteromedially: the long axis runs posteromedial -> anterolateral
    angle = -side * u(0.4, 0.8)
    cortex = Blob(kx, vy + u(-5, 12), cz, a, b, c_up=c, c_down=c, q=2.2, angle=angle,
                  slope=(-side * u(0.05, 0.15), u(-0.1, 0.05)), harmonics=_harmonics(rng, (0.04, 0.03)))
    hilum_dir = np.array([-side, -1.0]) / math.sqrt(2.0)
    offset = b * u(0.75, 0.95)
    sinus = replace(cortex, cx=cortex.cx + hilum_dir[0] * offset, cy=cortex.cy + hilum_dir[1] * offset,
                    a=a * u(0.4, 0.5), b=b * u(0.5, 0.6), c_up=c * 0.5, c_down=c * 0.5, harmonics=())
    pelvis = replace(sinus, a=sinus.a * 0.5, b=sinus.b * 0.55, c_up=c * 0.3, c_down=c * 0.3)
    pyramids = replace(cortex, a=a * 0.72, b=b * 0.7, c_up=c * 0.8, c_down=c * 0.8,
                       harmonics=(Harmonic(int(rng.integers(5, 8)), u(0.2, 0.3), u(0, 2 * math.pi), u(-0.03, 0.03)),))
    medulla_limit = replace(cortex, a=a * 0.8, b=b * 0.78, c_up=c * 0.85, c_down=c * 0.85)
    # perirenal fat, thicker posterolaterally
    perirenal = replace(cortex.grown(u(4, 10), u(4, 9), u(6, 12)), cx=cortex.cx + side * u(0, 5),
                        cy=cortex.cy + u(0, 6), harmonics=_harmonics(rng, (0.08, 0.06)))
    return [
        PaintOp(perirenal, Tissue.FAT, within="cavity"),
        PaintOp(cortex, Tissue.KIDNEY_CORTEX, label, within="cavity", defines=f"kidney{label}"),
        PaintOp(Intersection((pyramids, medulla_limit)), Tissue.KIDNEY_MEDULLA, label,
                within=f"kidney{label}"),
        PaintOp(sinus, Tissue.FAT, within="cavity"),
        PaintOp(pelvis, Tissue.URINE, label, within=f"kidney{label}"),
    ]


def _great_vessels(rng: np.random.Generator, aorta: tuple, ivc: tuple) -> list[PaintOp]:
    u = rng.uniform
    ax, ay, ar = aorta
    ix, iy, ia, ib = ivc
    return [
        PaintOp(Blob(ax, ay, 0, ar, ar, slope=(u(-0.04, 0.04), u(0.0, 0.05))), Tissue.BLOOD, within="body"),
        PaintOp(Blob(ix, iy, 0, ia, ib, angle=u(-0.3, 0.3), slope=(u(-0.03, 0.03), u(-0.02, 0.04))),
                Tissue.BLOOD, within="body"),
    ]


def _back_muscles(rng: np.random.Generator, vx: float, vy: float, va: float, back_y: float, top: float) -> list[PaintOp]:
    """Erector spinae behind the spine (full length) and psoas beside it (growing inferiorly)."""
    u = rng.uniform
    ops = []
    for side in (-1, 1):
        b = u(15, 21)
        erector = Blob(vx + side * u(28, 36), back_y - b * u(0.6, 0.9), top / 2, u(24, 32), b,
                       angle=side * u(0.0, 0.3), harmonics=_harmonics(rng, (0.05, 0.04)))
        psoas = Blob(vx + side * (va + u(6, 12)), vy + u(-4, 6), -u(10, 30), u(13, 19), u(11, 15),
                     c_up=top * u(0.4, 0.55), c_down=100, angle=side * u(0.2, 0.6), slope=(side * u(-0.05, 0.02), 0.0))
        ops += [PaintOp(erector, Tissue.MUSCLE, within="inner"), PaintOp(psoas, Tissue.MUSCLE, within="inner")]
    return ops


def _spine(rng: np.random.Generator, vx: float, vy: float, va: float, vb: float, canal_y: float,
           canal_r: float) -> list[PaintOp]:
    u = rng.uniform
    lordosis = (0.0, -u(0.0, 0.08))
    body = Blob(vx, vy, 0, va, vb, slope=lordosis, harmonics=(Harmonic(2, 0.04, 0.0),))
    marrow = body.grown(-2.0)
    disc = ZBands(body, period=u(34, 40), width=u(8, 10), phase=u(0, 40))
    arch = Blob(vx, canal_y, 0, canal_r + u(5, 7), canal_r + u(4, 6), slope=lordosis)
    spinous = Blob(vx, canal_y + canal_r + u(14, 20), 0, u(3, 5), u(12, 16), slope=lordosis)
    canal = Blob(vx, canal_y, 0, canal_r * u(1.05, 1.25), canal_r, slope=lordosis)
    return [
        PaintOp(body, Tissue.CORTICAL_BONE, within="body"),
        PaintOp(marrow, Tissue.MARROW, within="body"),
        PaintOp(disc, Tissue.DISC, within="body"),
        PaintOp(Union((arch, spinous)), Tissue.CORTICAL_BONE, within="body"),
        PaintOp(Union((arch.grown(-2.0), spinous.grown(-1.5))), Tissue.MARROW, within="body"),
        PaintOp(canal, Tissue.CSF, within="body"),
    ]


def _liver_vessels(rng: np.random.Generator, ivc: tuple, hilum: tuple, top: float) -> list[PaintOp]:
    """Hepatic veins fanning out from the IVC near the dome, portal branches from the hilum."""
    u = rng.uniform
    ix, iy = ivc[0], ivc[1]
    root = (ix, iy, top * u(0.8, 0.95))
    tubes: list[Shape] = []
    for angle in (u(-2.7, -2.3), u(-1.9, -1.5), u(-1.3, -0.9)):  # right, middle, left hepatic veins
        length = u(60, 95)
        end = (root[0] + length * math.cos(angle), root[1] + length * math.sin(angle), root[2] - u(10, 35))
        tubes.append(Tube(root, end, u(4.5, 6.0), u(2.0, 3.0)))
    for angle in (u(2.8, 3.3), u(-1.2, -0.6)):  # right and left portal branches
        length = u(45, 70)
        end = (hilum[0] + length * math.cos(angle), hilum[1] + length * math.sin(angle), hilum[2] + u(-5, 20))
        tubes.append(Tube(hilum, end, u(5.0, 7.0), u(2.5, 3.5)))
    return [PaintOp(Union(tuple(tubes)), Tissue.BLOOD, LIVER_LABEL, within="liver")]


# -------------------------------------------------------------------------------------- building a case

def smooth_field(rng: np.random.Generator, grid: Grid, corr_mm: float) -> np.ndarray:
    """A unit-variance Gaussian random field with correlation length ~corr_mm, on the grid (float32)."""
    step = corr_mm / 2.0
    axes = (grid.z, grid.y, grid.x)
    coarse_shape = tuple(int(math.ceil((a[-1] - a[0]) / step)) + 4 for a in axes)
    noise = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 1.0, mode="wrap")
    field_ = (noise / noise.std()).astype(np.float32)
    for axis, coords in enumerate(axes):
        weights = _linear_interpolation_matrix((coords - coords[0]) / step + 1.5, coarse_shape[axis])
        field_ = np.moveaxis(np.tensordot(weights, np.moveaxis(field_, axis, 0), axes=(1, 0)), 0, axis)
    return np.ascontiguousarray(field_)


def _linear_interpolation_matrix(positions: np.ndarray, n: int) -> np.ndarray:
    lower = np.floor(positions).astype(int)
    frac = positions - lower
    weights = np.zeros((len(positions), n), np.float32)
    rows = np.arange(len(positions))
    weights[rows, lower] = 1.0 - frac
    weights[rows, lower + 1] = frac
    return weights


def _fill_bowel(tissue: np.ndarray, cavity: np.ndarray, grid: Grid, layout: BowelLayout,
                rng: np.random.Generator) -> None:
    loops = smooth_field(rng, grid, layout.loop_mm)
    content = smooth_field(rng, grid, 30.0)
    bowel = np.where(content > layout.fluid_level, Tissue.BOWEL_FLUID,
                     np.where(content < layout.gas_level, Tissue.GAS, Tissue.BOWEL_CHYME))
    # no bowel behind the great vessels: the loops thin out smoothly towards the retroperitoneum
    behind = (grid.y[None, :, None] - layout.retroperitoneum_y) / 8.0
    half_width = layout.half_width / (1.0 + np.exp(behind))
    distance = np.abs(loops)
    bowel = np.where(distance > half_width - layout.wall, Tissue.BOWEL_WALL, bowel)
    bowel = np.where(distance > half_width, Tissue.FAT, bowel)
    tissue[cavity] = bowel[cavity]


def _paint(ops: Iterable[PaintOp], grid: Grid, layout: BowelLayout, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    tissue = np.zeros(grid.shape, np.uint8)
    label = np.zeros(grid.shape, np.uint8)
    regions: dict[str, np.ndarray] = {}
    for op in ops:
        mask = op.shape.mask(grid)
        if op.within is not None:
            mask &= regions[op.within]
        if op.defines is not None:
            regions[op.defines] = mask
        tissue[mask] = op.tissue
        label[mask] = op.label
        if op.defines == "cavity":
            _fill_bowel(tissue, mask, grid, layout, rng)
    return tissue, label


def downsample_labels(label_sub: np.ndarray, factor: int = SUPERSAMPLE) -> np.ndarray:
    """Supersampled (z, row, col) labels -> native labels: per voxel, the organ covering the most of it,
    or background when background covers at least as much."""
    d, h, w = (n // factor for n in label_sub.shape)
    n_labels = len(ORGANS) + 1
    voxel = np.arange(d * h * w).reshape(d, 1, h, 1, w, 1)
    keys = voxel * n_labels + label_sub.reshape(d, factor, h, factor, w, factor)
    counts = np.bincount(keys.ravel(), minlength=d * h * w * n_labels).reshape(d, h, w, n_labels)
    return np.argmax(counts, axis=-1).astype(np.uint8)


def sample_geometry(rng: np.random.Generator, size: int, slices: int) -> Geometry:
    fov = round(rng.uniform(360.0, 400.0), 1)
    coverage = rng.uniform(175.0, 195.0)
    return Geometry(size=size, slices=slices, pixel_mm=round(fov / size, 4), slice_mm=round(coverage / slices, 3))


def sample_anatomy(rng: np.random.Generator, size: int = DEFAULT_SIZE, slices: int = DEFAULT_SLICES) -> Anatomy:
    """A random abdomen: tissue map (supersampled), texture field, organ labels (W, H, D) and tissue table."""
    geometry = sample_geometry(rng, size, slices)
    grid = geometry.grid()
    ops, layout = plan_anatomy(rng, geometry)
    tissue, label_sub = _paint(ops, grid, layout, rng)
    # the texture varies slowly, so the native grid suffices (each sub-voxel takes its voxel's value)
    texture = smooth_field(rng, geometry.grid(factor=1), rng.uniform(6.0, 10.0))
    for axis in range(3):
        texture = np.repeat(texture, SUPERSAMPLE, axis=axis)
    labels = downsample_labels(label_sub).transpose(2, 1, 0)
    return Anatomy(geometry, tissue, texture, np.ascontiguousarray(labels), jittered_tissues(rng))


# --------------------------------------------------------------------------------------------- rendering

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


# -------------------------------------------------------------------------------------- seeds and cases

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


# ------------------------------------------------------------------------------------------------ writing

def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A .nii.gz file's bytes with a zero gzip timestamp, so equal data give equal bytes."""
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def display_uint8(volume: np.ndarray) -> np.ndarray:
    """Per-volume robust scaling: 0 .. the 99.5th percentile -> 0 .. 255."""
    high = float(np.percentile(volume, DISPLAY_PERCENTILE))
    if high <= 0:
        return np.zeros(volume.shape, np.uint8)
    return np.round(np.clip(volume / high, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass
class CaseFiles:
    case_id: str
    modality: str
    split: str
    geometry: Geometry
    image_nii: Path
    label_nii: Path
    slice_images: list[Path] = field(default_factory=list)
    slice_masks: list[list[Path]] = field(default_factory=list)
    slice_organs: list[list[str]] = field(default_factory=list)


def write_case(out: Path, case: PhantomCase, split: str) -> CaseFiles:
    geometry = case.anatomy.geometry
    volume_dir = out / "volumes" / case.modality
    files = CaseFiles(case.case_id, case.modality, split, geometry,
                      volume_dir / f"{case.case_id}_image.nii.gz", volume_dir / f"{case.case_id}_label.nii.gz")
    affine = geometry.affine()
    atomic_write_bytes(files.image_nii, nifti_gz_bytes(case.image, affine))
    atomic_write_bytes(files.label_nii, nifti_gz_bytes(case.labels, affine))
    pixels = display_uint8(case.image)
    slice_dir = out / "slices" / case.modality / case.case_id
    for k in range(geometry.slices):
        stem = slice_dir / f"{case.case_id}_s{k:03d}"
        write_gray(stem.with_name(stem.name + ".png"), np.ascontiguousarray(pixels[:, :, k].T))
        label_slice = case.labels[:, :, k].T
        masks = []
        for i in range(len(ORGANS)):
            mask_path = stem.with_name(f"{stem.name}_mask{i}.png")
            write_gray(mask_path, np.where(label_slice == i + 1, 255, 0).astype(np.uint8))
            masks.append(mask_path)
        files.slice_images.append(stem.with_name(stem.name + ".png"))
        files.slice_masks.append(masks)
        files.slice_organs.append([name for i, name in enumerate(ORGANS) if (label_slice == i + 1).any()])
    return files


def _index_entries(files: CaseFiles, attributes: str) -> list[IndexEntry]:
    size = files.geometry.size
    return [
        IndexEntry(
            image_path=image, mask_paths=list(masks), modality=MODALITY_KEYS[files.modality],
            modality_attributes=attributes, region=REGION, label=list(ORGANS), organs=organs, shape=(size, size),
            dataset=DATASET_NAME, patient_id=files.case_id, slice_index=k, spacing=tuple(files.geometry.spacing()),
            volume_nii_path=files.image_nii, mask_nii_path=files.label_nii,
        )
        for k, (image, masks, organs) in enumerate(zip(files.slice_images, files.slice_masks, files.slice_organs))
    ]


def _image_text_entries(files: CaseFiles, out: Path) -> list[dict]:
    return [
        {
            "image_path": image.relative_to(out).as_posix(),
            "image_modality": "MRI",
            "aux_modality": AUX_MODALITY[files.modality],
            "region": REGION,
            "organs": ", ".join(organs),
            "patient_id": files.case_id,
        }
        for image, organs in zip(files.slice_images, files.slice_organs)
    ]


def _volume_record(files: CaseFiles, out: Path) -> dict:
    return {
        "image": files.image_nii.relative_to(out).as_posix(),
        "mask": files.label_nii.relative_to(out).as_posix(),
        "label": list(ORGANS),
        "modality": MODALITY_KEYS[files.modality],
        "dataset": DATASET_NAME,
        "patient_id": files.case_id,
        "spacing": files.geometry.spacing(),
    }


def _write_jsonl(path: Path, records: Sequence[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in records))


def _preview_row(case: PhantomCase) -> list[np.ndarray]:
    pixels = display_uint8(case.image)
    row = []
    for fraction in PREVIEW_SLICE_FRACTIONS:
        k = min(case.image.shape[2] - 1, int(round(fraction * (case.image.shape[2] - 1))))
        image = np.ascontiguousarray(pixels[:, :, k].T)
        row += [image, viz.overlay(image, case.labels[:, :, k].T)]
    return row


def _dataset_card(seed: int, size: int, slices: int, modalities: Sequence[str], cases: int,
                  all_files: dict[str, list[CaseFiles]]) -> str:
    lines = [
        "# Phantom_MRI: simulated abdominal MRI",
        "",
        "Procedural upper-abdominal volumes with random anatomy per case, rendered through MR signal equations by",
        "`mrgen.data.phantom` (see that module's docstring for the geometry convention). No patient data.",
        "",
        f"- seed: {seed}",
        f"- cases per modality: {cases} (each modality has its own, unpaired, anatomy)",
        f"- in-plane size: {size} x {size} px; slices per volume: {slices}",
        "- field of view 360-400 mm (per case), slice stack covering 175-195 mm (slice thickness = coverage / slices)",
        "- modalities: " + ", ".join(f"{m} (`{MODALITY_KEYS[m]}`)" for m in modalities),
        "",
        "## Labels",
        "",
        "| id | organ |",
        "|---|---|",
        "| 0 | background |",
        *[f"| {i + 1} | {name} |" for i, name in enumerate(ORGANS)],
        "",
        "Mask file `_mask<i>.png` holds label id i + 1 (0/255).",
        "",
        "## Tissues (1.5 T, before the per-case jitter of T1/T2/T2* +-8 %, PD +-3 %; bile T1 800-3000 ms per case)",
        "",
        "| tissue | water T1 ms | water T2 ms | T2* ms | PD | fat fraction |",
        "|---|---|---|---|---|---|",
        *[f"| {t.name.lower()} | {p.t1:g} | {p.t2:g} | {p.t2star:g} | {p.pd:g} | "
          f"{'0-0.15 per case' if t is Tissue.LIVER else f'{p.fat_fraction:g}'} |" for t, p in TISSUES.items()],
        "",
        f"Fat component: T1 {FAT_T1_MS:g} ms, apparent T2 {FAT_T2_MS:g} ms. Flowing blood is scaled by 0.03-0.1 on spin",
        "echo (flow void) and 0.3-0.8 on gradient echo.",
        "",
        "## Sequences",
        "",
        "| modality | sequence | TR ms | TE ms | flip | fat |",
        "|---|---|---|---|---|---|",
        *[f"| {m} | {s.description} | {s.tr_ms:g} | {s.te_ms:g} | {s.flip_deg:g} | "
          f"{'suppressed to 2-6 %' if s.fat_suppressed else ('opposed phase' if s.fat_phase else 'in phase')} |"
          for m, s in SEQUENCES.items() if m in modalities],
        "",
        "Signal: spoiled GRE PD sin(a)(1-E1)/(1-cos(a)E1) exp(-TE/T2*); (T)SE PD (1-exp(-TR/T1)) exp(-TE/T2); water",
        "and fat separately, W + F exp(i phi), averaged in complex form over a 2x supersampled grid, then Gaussian",
        "partial-volume blur, a smooth multiplicative bias field, and Rician noise (SNR 14-30 per case).",
        "",
        "## Files",
        "",
        "```",
        "volumes/<MOD>/<case_id>_image.nii.gz      float32 magnitude image, data (W, H, D), axis codes L, P, S",
        "volumes/<MOD>/<case_id>_label.nii.gz      uint8 label map, same affine",
        "slices/<MOD>/<case_id>/<case_id>_s<kkk>.png          uint8 slice (0..99.5th percentile of the volume)",
        "slices/<MOD>/<case_id>/<case_id>_s<kkk>_mask<i>.png  0/255 organ mask, i = label id - 1",
        "Phantom_<MOD>_{train,test,all}.json     conditional dataset index (paths relative to this folder)",
        "image_text_{train,test}.json            image-text index (Radiopaedia schema), all modalities",
        "volumes_<MOD>_{train,test}.jsonl        one volume per line (image, mask, label, modality, ...)",
        "phantom.json                            machine-readable summary; preview.png: a look at each modality",
        "```",
        "",
        "## Split (by case)",
        "",
        *[f"- {m}: test = {', '.join(f.case_id for f in all_files[m] if f.split == 'test') or 'none'}" for m in modalities],
        "",
    ]
    return "\n".join(lines)


def _summary(seed: int, size: int, slices: int, modalities: Sequence[str], test_fraction: float,
             all_files: dict[str, list[CaseFiles]]) -> dict:
    return {
        "generator": "mrgen.data.phantom",
        "dataset": DATASET_NAME,
        "seed": seed,
        "size": size,
        "slices": slices,
        "test_fraction": test_fraction,
        "modalities": list(modalities),
        "modality_keys": {m: MODALITY_KEYS[m] for m in modalities},
        "label_names": {str(i + 1): name for i, name in enumerate(ORGANS)},
        "spacing_order": "row_mm, col_mm, slice_mm",
        "cases": {
            m: [{"case_id": f.case_id, "split": f.split, "spacing": f.geometry.spacing(),
                 "fov_mm": round(f.geometry.fov_mm, 2)}
                for f in all_files[m]]
            for m in modalities
        },
    }


def _check_arguments(cases: int, seed: int, size: int, modalities: Sequence[str], slices: int,
                     test_fraction: float) -> None:
    unknown = [m for m in modalities if m not in SEQUENCES]
    if unknown:
        raise ValueError(f"unknown phantom modalities {unknown}; choose from {', '.join(SEQUENCES)}")
    if not modalities or len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities must be a non-empty list without repeats, got {list(modalities)}")
    if cases < 1:
        raise ValueError(f"cases must be at least 1, got {cases}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if size < 32:
        raise ValueError(f"size must be at least 32 px, got {size}")
    if slices < 4:
        raise ValueError(f"slices must be at least 4, got {slices}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    registry = load_registry()
    missing = [MODALITY_KEYS[m] for m in modalities if MODALITY_KEYS[m] not in registry]
    if missing:
        raise ValueError(f"modality keys {missing} are not in the registry {registry.source}")


def generate_phantom_dataset(
    out: str | Path,
    cases: int = 4,
    seed: int = 0,
    size: int = DEFAULT_SIZE,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    slices: int = DEFAULT_SLICES,
    test_fraction: float = 0.25,
) -> Path:
    """Write the simulated dataset under ``out`` (layout in the module's README card); return ``out``."""
    out = Path(out)
    modalities = list(modalities)
    _check_arguments(cases, seed, size, modalities, slices, test_fraction)
    registry = load_registry()
    all_files: dict[str, list[CaseFiles]] = {m: [] for m in modalities}
    preview_rows = []
    image_text: dict[str, list[dict]] = {"train": [], "test": []}
    log.info("phantom: %d case(s) x %d modalities, %d px, %d slices -> %s", cases, len(modalities), size, slices, out)
    with tqdm(total=cases * len(modalities), desc="phantom cases", unit="case") as bar:
        for modality in modalities:
            splits = split_cases(seed, modality, cases, test_fraction)
            for index in range(cases):
                case = simulate_case(seed, modality, index, size, slices)
                files = write_case(out, case, splits[index])
                all_files[modality].append(files)
                image_text[files.split] += _image_text_entries(files, out)
                if index == 0:
                    preview_rows.append(_preview_row(case))
                bar.update(1)
    for modality in modalities:
        attributes = registry.attributes(MODALITY_KEYS[modality])
        by_split = {s: [e for f in all_files[modality] if f.split == s for e in _index_entries(f, attributes)]
                    for s in ("train", "test")}
        save_index(by_split["train"], out / f"Phantom_{modality}_train.json")
        save_index(by_split["test"], out / f"Phantom_{modality}_test.json")
        save_index([e for f in all_files[modality] for e in _index_entries(f, attributes)],
                   out / f"Phantom_{modality}_all.json")
        for split in ("train", "test"):
            _write_jsonl(out / f"volumes_{modality}_{split}.jsonl",
                         [_volume_record(f, out) for f in all_files[modality] if f.split == split])
    atomic_write_json(out / "image_text_train.json", image_text["train"])
    atomic_write_json(out / "image_text_test.json", image_text["test"])
    atomic_write_json(out / "phantom.json", _summary(seed, size, slices, modalities, test_fraction, all_files))
    atomic_write_text(out / "README.md", _dataset_card(seed, size, slices, modalities, cases, all_files))
    titles = [t for f in PREVIEW_SLICE_FRACTIONS for t in (f"{int(f * 100)}% up", "+ labels")]
    viz.save_grid(preview_rows, out / "preview.png", titles=titles, row_labels=modalities)
    log.info("phantom dataset written to %s", out)
    return out
