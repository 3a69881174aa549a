"""The simulated volume's grid in millimetres and the solids anatomy is painted with (blobs, tubes, their
unions, differences and intersections), each rasterised on the supersampled grid."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from mrgen.data.phantom.physics import Tissue

DEFAULT_SIZE = 64
DEFAULT_SLICES = 24
SUPERSAMPLE = 2


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
