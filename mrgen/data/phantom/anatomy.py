"""A random upper abdomen: where each organ and tissue goes (``plan_anatomy``), painted onto the supersampled
grid and reduced to the labels at image resolution (``sample_anatomy``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from mrgen.data.phantom.geometry import (
    DEFAULT_SIZE, DEFAULT_SLICES, SUPERSAMPLE, Blob, BowelLayout, Difference, Geometry, Grid, Harmonic, Intersection,
    PaintOp, RibBand, Shape, Tube, Union, ZBands,
)
from mrgen.data.phantom.physics import Tissue, TissueProps, jittered_tissues
from mrgen.data.preprocess import CHAOS_ORGANS

ORGANS: tuple[str, ...] = CHAOS_ORGANS  # label id = position + 1
LIVER_LABEL, RIGHT_KIDNEY_LABEL, LEFT_KIDNEY_LABEL, SPLEEN_LABEL = 1, 2, 3, 4


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
