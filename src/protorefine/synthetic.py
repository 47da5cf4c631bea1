"""Synthetic H&E-like slides with a known tumour map, and a coarse-annotation simulator.

A slide is rendered lazily, tile by tile (``dask.map_blocks``). Every random
choice is a hash of *global* coordinates and the seed (nucleus positions on a
jittered lattice, value noise on a lattice), so a tile's pixels do not depend on
how the slide is cut into tiles and patterns run across tile borders without seams.
Tissue layout comes from smooth random fields computed once at low resolution:
tissue on white glass; inside it tumour (crowded, large, dark, pleomorphic
nuclei), stroma (pink wavy fibres, sparse spindle nuclei), fat (white vacuoles with
pink rims) and lymphocyte aggregates (dense small round dark nuclei: "dense
purple" like tumour, but a different texture). Colours come from Beer-Lambert
mixing of haematoxylin and eosin optical densities.
"""

from __future__ import annotations

import math
from pathlib import Path

import dask.array as da
import numpy as np
import shapely
from scipy import ndimage as ndi
from shapely.geometry import MultiPolygon, Polygon
from skimage import measure, morphology

from protorefine.annotations.model import TUMOR, Annotation, AnnotationSet
from protorefine.errors import ProtorefineError
from protorefine.slides.base import Slide

TRUTH_DOWNSAMPLE = 16
_FIELD_CELLS = 256  # low-resolution field grid along the long side

# Classes of the layout map.
BACKGROUND, STROMA, FAT, LYMPH, TUMOUR = 0, 1, 2, 3, 4

# Stain optical-density vectors (typical values estimated from real H&E), normalised.
_H = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)
_E = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)
_H /= np.linalg.norm(_H)
_E /= np.linalg.norm(_E)
_GLASS_OD = np.array([0.04, 0.045, 0.03], dtype=np.float32)

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


# ----------------------------------------------------------------------------- hashing


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def _uniform(seed: int, stream: int, i: np.ndarray, j: np.ndarray, k: int = 0) -> np.ndarray:
    """Uniform [0, 1) float32 that depends only on (seed, stream, i, j, k): tiling-independent."""
    with np.errstate(over="ignore"):
        h0 = np.uint64(seed * 1_000_003 + stream * 7919 + k * 104_729 + 1) * _GOLD
        h = _mix(h0 ^ (np.asarray(i).astype(np.int64).astype(np.uint64) * _M1))
        h = _mix(h ^ (np.asarray(j).astype(np.int64).astype(np.uint64) * _M2))
    return ((h >> np.uint64(40)).astype(np.float32)) * np.float32(1.0 / (1 << 24))


def _lattice(seed: int, stream: int, iy: np.ndarray, ix: np.ndarray, k: int = 0) -> np.ndarray:
    """Hashed uniforms at lattice points ``(iy, ix)``: a column and a row of indices."""
    rows, cols = np.ravel(iy), np.ravel(ix)
    y0, x0 = int(rows.min()), int(cols.min())
    ys = np.arange(y0, int(rows.max()) + 1)[:, None]
    xs = np.arange(x0, int(cols.max()) + 1)[None, :]
    grid = _uniform(seed, stream, ys, xs, k)
    return grid.take(rows - y0, axis=0).take(cols - x0, axis=1)


def _value_noise(seed: int, stream: int, yy: np.ndarray, xx: np.ndarray, cell: float) -> np.ndarray:
    """Smooth value noise in [0, 1) on a lattice of ``cell`` pixels, from global coordinates.

    ``yy`` is a column ``(h, 1)`` and ``xx`` a row ``(1, w)`` of pixel coordinates.
    """
    fy, fx = yy / cell, xx / cell
    iy, ix = np.floor(fy), np.floor(fx)
    ty, tx = fy - iy, fx - ix
    ty = ty * ty * (3 - 2 * ty)
    tx = tx * tx * (3 - 2 * tx)
    iy, ix = iy.astype(np.int64), ix.astype(np.int64)
    v00 = _lattice(seed, stream, iy, ix)
    v01 = _lattice(seed, stream, iy, ix + 1)
    v10 = _lattice(seed, stream, iy + 1, ix)
    v11 = _lattice(seed, stream, iy + 1, ix + 1)
    top = v00 + (v01 - v00) * tx
    bottom = v10 + (v11 - v10) * tx
    return (top + (bottom - top) * ty).astype(np.float32)


# ----------------------------------------------------------------------------- layout


class _Layout:
    """Smooth low-resolution fields that decide the class of every level-0 pixel."""

    def __init__(self, shape: tuple[int, int], seed: int, mpp: float) -> None:
        self.shape = shape
        self.seed = seed
        self.mpp = mpp
        h, w = shape
        self.spacing = max(h, w) / _FIELD_CELLS
        gh = max(4, math.ceil(h / self.spacing))
        gw = max(4, math.ceil(w / self.spacing))
        rng = np.random.default_rng(seed)

        def smooth(sigma: float) -> np.ndarray:
            f = ndi.gaussian_filter(rng.standard_normal((gh, gw)), sigma, mode="reflect")
            return (f - f.mean()) / (f.std() + 1e-12)

        yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float64)
        cy, cx = (gh - 1) / 2, (gw - 1) / 2
        r = np.hypot((yy - cy) / (0.46 * gh), (xx - cx) / (0.46 * gw))
        tissue = 1.0 - r**2 + 0.35 * smooth(14) + 0.08 * smooth(4)
        tumour = smooth(20) + 0.45 * smooth(7)
        lymph = smooth(3.5)
        fat = smooth(9)
        inside = tissue > 0
        # Thresholds by quantile so each slide has similar proportions whatever the seed.
        tumour -= np.quantile(tumour[inside], 0.62)
        fat -= np.quantile(fat[inside], 0.82)
        lymph -= np.quantile(lymph[inside], 0.90)
        self.fields = [
            ndi.spline_filter(f.astype(np.float64), order=3) for f in (tissue, tumour, fat, lymph)
        ]

    def classes(self, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        """Class (BACKGROUND..TUMOUR) at level-0 pixel centres ``yy``, ``xx`` (broadcastable)."""
        by, bx = np.broadcast_arrays(yy, xx)
        coords = np.stack([(by + 0.5) / self.spacing - 0.5, (bx + 0.5) / self.spacing - 0.5])
        vals = [
            ndi.map_coordinates(f, coords, order=3, prefilter=False, mode="nearest").astype(
                np.float32
            )
            for f in self.fields
        ]
        # Cell-scale roughness so borders are ragged, not smooth splines (~40 um lattice).
        rough = _value_noise(self.seed, 11, yy, xx, 40.0 / self.mpp) - 0.5
        tissue, tumour, fat, lymph = vals
        out = np.full(by.shape, STROMA, dtype=np.uint8)
        out[fat + 0.25 * rough > 0] = FAT
        out[lymph + 0.3 * rough > 0] = LYMPH
        out[tumour + 0.25 * rough > 0] = TUMOUR
        out[tissue + 0.15 * rough <= 0] = BACKGROUND
        return out


# ----------------------------------------------------------------------------- nuclei


def _nuclei(
    seed: int,
    stream: int,
    y0: int,
    x0: int,
    h: int,
    w: int,
    *,
    spacing: float,
    radius: tuple[float, float],
    presence: float,
    elongation: tuple[float, float] = (1.0, 1.0),
    irregular: float = 0.0,
    angle: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Coverage in [0, 1] and per-nucleus darkness of nuclei on a jittered global lattice.

    Each lattice cell holds at most one nucleus whose centre, size, shape and stain
    are hashed from the cell index; every nucleus reaching the block is stamped, so
    a nucleus cut by a tile border is drawn the same on both sides.
    """
    reach = radius[1] * elongation[1] * (1.0 + irregular) + 2.0
    ii = np.arange(
        math.floor((y0 - reach) / spacing) - 1, math.floor((y0 + h + reach) / spacing) + 2
    )
    jj = np.arange(
        math.floor((x0 - reach) / spacing) - 1, math.floor((x0 + w + reach) / spacing) + 2
    )
    i, j = ii[:, None], jj[None, :]
    u = [_uniform(seed, stream, i, j, k).ravel() for k in range(8)]
    i, j = np.broadcast_arrays(i, j)
    # Centres in global level-0 coordinates, so the arithmetic is the same in every tiling.
    gy = (i.ravel() + 0.5 + 0.7 * (u[0].astype(np.float64) - 0.5)) * spacing
    gx = (j.ravel() + 0.5 + 0.7 * (u[1].astype(np.float64) - 0.5)) * spacing
    py, px = gy - y0, gx - x0
    r = radius[0] + (radius[1] - radius[0]) * u[2]
    e = elongation[0] + (elongation[1] - elongation[0]) * u[4]
    theta = u[5] * np.pi if angle is None else angle + 0.3 * (u[5] - 0.5)
    theta = np.broadcast_to(theta, r.shape)
    ext = r * e * (1.0 + irregular) + 1.0
    keep = (u[3] < presence) & (py + ext > 0) & (py - ext < h) & (px + ext > 0) & (px - ext < w)
    cover = np.zeros((h, w), dtype=np.float32)
    dark = np.zeros((h, w), dtype=np.float32)
    for n in np.flatnonzero(keep):
        ya, yb = max(0, int(py[n] - ext[n])), min(h, int(math.ceil(py[n] + ext[n])) + 1)
        xa, xb = max(0, int(px[n] - ext[n])), min(w, int(math.ceil(px[n] + ext[n])) + 1)
        dy = ((np.arange(ya, yb) + (y0 + 0.5)) - gy[n]).astype(np.float32)[:, None]
        dx = ((np.arange(xa, xb) + (x0 + 0.5)) - gx[n]).astype(np.float32)[None, :]
        c, s = math.cos(theta[n]), math.sin(theta[n])
        a = dx * c + dy * s
        b = dy * c - dx * s
        d = np.sqrt((a / (r[n] * e[n])) ** 2 + (b * e[n] / r[n]) ** 2)
        if irregular:
            phi = np.arctan2(b, a)
            bump = 0.6 * np.cos(2 * phi + 6.3 * u[6][n]) + 0.4 * np.cos(3 * phi + 6.3 * u[7][n])
            d = d / (1.0 + irregular * bump)
        cov = np.clip((1.0 - d) * r[n] + 0.5, 0.0, 1.0)
        region = cover[ya:yb, xa:xb]
        better = cov > region
        region[better] = cov[better]
        dark[ya:yb, xa:xb][better] = u[7][n]
    return cover, dark


# ----------------------------------------------------------------------------- rendering


def _render(layout: _Layout, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Render the (h, w, 3) uint8 block whose top-left level-0 pixel is (y0, x0)."""
    seed, um = layout.seed, 1.0 / layout.mpp  # pixels per micrometre
    yy = (np.arange(y0, y0 + h, dtype=np.float32) + 0.5)[:, None]
    xx = (np.arange(x0, x0 + w, dtype=np.float32) + 0.5)[None, :]
    cls = layout.classes(yy - 0.5, xx - 0.5)
    hem = np.zeros((h, w), np.float32)
    eos = np.zeros((h, w), np.float32)
    grain = _value_noise(seed, 1, yy, xx, 2.0 * um)
    present = set(np.unique(cls).tolist())
    block = (seed, y0, x0, h, w)

    if STROMA in present:
        # Wavy parallel collagen fibres: level sets of a phase field whose direction is
        # fixed per slide and whose waviness comes from smooth noise (no moire, no seams).
        theta = float(np.pi * _uniform(seed, 12, np.zeros(1), np.zeros(1))[0])
        wave = _value_noise(seed, 2, yy, xx, 120.0 * um) + 0.4 * _value_noise(
            seed, 3, yy, xx, 40.0 * um
        )
        phase = (xx * np.cos(theta) + yy * np.sin(theta) + 45.0 * um * wave) / (2.2 * um)
        breakup = _value_noise(seed, 10, yy, xx, 35.0 * um)
        fibres = ((0.5 + 0.5 * np.sin(phase)) ** 3) * np.clip(2.0 * breakup - 0.3, 0.0, 1.0)
        m = cls == STROMA
        cov, dk = _nuclei(
            *block[:1],
            4,
            *block[1:],
            spacing=30 * um,
            radius=(2.0 * um, 2.8 * um),
            presence=0.35,
            elongation=(2.4, 3.4),
            angle=theta + np.pi / 2,
        )
        eos[m] = (0.10 + 0.42 * fibres + 0.05 * grain)[m] * (1.0 - 0.7 * cov[m])
        hem[m] = (0.02 + cov * (0.9 + 0.3 * dk))[m]

    if FAT in present:
        m = cls == FAT
        # Worley distance: F2 - F1 to jittered adipocyte centres gives thin cell borders.
        spacing = 42.0 * um
        cy = np.floor(yy / spacing).astype(np.int64)
        cx = np.floor(xx / spacing).astype(np.int64)
        f1 = np.full((h, w), np.inf, np.float32)
        f2 = np.full((h, w), np.inf, np.float32)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                i, j = cy + di, cx + dj
                py = (i + 0.5 + 0.8 * (_lattice(seed, 5, i, j, 0) - 0.5)) * spacing
                px = (j + 0.5 + 0.8 * (_lattice(seed, 5, i, j, 1) - 0.5)) * spacing
                d = np.hypot(yy - py, xx - px)
                f2 = np.where(d < f1, f1, np.minimum(f2, d))
                f1 = np.minimum(f1, d)
        rim = np.clip(1.6 * um - (f2 - f1) * 0.5, 0.0, 1.0 * um) / (1.0 * um)
        eos[m] = (0.02 + 0.55 * rim + 0.02 * grain)[m]
        hem[m] = (0.01 + 0.08 * rim)[m]

    if LYMPH in present:
        m = cls == LYMPH
        cov, dk = _nuclei(
            *block[:1],
            6,
            *block[1:],
            spacing=7.2 * um,
            radius=(2.9 * um, 3.5 * um),
            presence=0.96,
            elongation=(1.0, 1.12),
        )
        eos[m] = (0.14 + 0.06 * grain)[m] * (1.0 - cov[m])
        hem[m] = (0.08 + cov * (1.25 + 0.2 * dk) + 0.05 * grain)[m]

    if TUMOUR in present:
        m = cls == TUMOUR
        cov, dk = _nuclei(
            *block[:1],
            7,
            *block[1:],
            spacing=14.0 * um,
            radius=(4.8 * um, 8.0 * um),
            presence=0.93,
            elongation=(1.0, 1.35),
            irregular=0.2,
        )
        chrom = _value_noise(seed, 8, yy, xx, 1.6 * um)
        nucleolus = _value_noise(seed, 9, yy, xx, 3.0 * um) > 0.86
        eos[m] = (0.30 + 0.08 * grain)[m] * (1.0 - 0.7 * cov[m])
        h_nuc = (0.55 + 0.45 * dk) * (0.65 + 0.7 * chrom) + 0.45 * nucleolus
        hem[m] = (0.12 + 0.05 * grain + cov * h_nuc)[m]

    od = hem[..., None] * _H + eos[..., None] * _E
    bg = cls == BACKGROUND
    od[bg] = _GLASS_OD * (0.8 + 0.4 * grain[bg, None])
    rgb = 255.0 * np.exp(-od * np.log(10.0))
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def synthetic_slide(
    shape: tuple[int, int] = (2048, 2048),
    *,
    seed: int = 0,
    tile: int = 512,
    mpp: float = 0.5,
) -> tuple[Slide, np.ndarray, int]:
    """A lazy, deterministic H&E-like slide, its true tumour mask, and that mask's downsample.

    The mask is at downsample 16 (one value per 16x16 block, sampled at the block
    centre) with shape ``(ceil(H/16), ceil(W/16))``. Levels are downsampled by 4.
    """
    h, w = int(shape[0]), int(shape[1])
    if h < 64 or w < 64:
        raise ProtorefineError(f"shape {shape}: a synthetic slide needs at least 64x64 pixels")
    if tile < 16 or tile % 16:
        raise ProtorefineError(f"tile={tile}: must be a positive multiple of 16")
    if not mpp > 0:
        raise ProtorefineError(f"mpp={mpp}: must be positive")
    layout = _Layout((h, w), seed, mpp)

    def block(block_info=None) -> np.ndarray:
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        return _render(layout, y0, x0, y1 - y0, x1 - x0)

    chunks = (
        tuple(min(tile, h - y) for y in range(0, h, tile)),
        tuple(min(tile, w - x) for x in range(0, w, tile)),
        (3,),
    )
    level0 = da.map_blocks(block, dtype=np.uint8, chunks=chunks, meta=np.empty((0, 0, 0), np.uint8))
    levels = [level0]
    while len(levels) < 3 and min(levels[-1].shape[:2]) // 4 >= 64:
        prev = levels[-1]
        down = da.coarsen(np.mean, prev.astype(np.float32), {0: 4, 1: 4}, trim_excess=True)
        levels.append(da.round(down).astype(np.uint8))
    d = TRUTH_DOWNSAMPLE
    gy = (np.arange(math.ceil(h / d)) * d + d // 2).clip(max=h - 1)[:, None]
    gx = (np.arange(math.ceil(w / d)) * d + d // 2).clip(max=w - 1)[None, :]
    truth = layout.classes(gy.astype(np.float32), gx.astype(np.float32)) == TUMOUR
    name = f"synthetic-{seed}"
    slide = Slide(path=Path(name), name=name, levels=levels, mpp=mpp, backend="synthetic")
    return slide, truth, d


# ----------------------------------------------------------------------------- coarse outlines


def _mask_to_geometry(mask: np.ndarray, downsample: float) -> Polygon | MultiPolygon:
    """Polygons around a mask's set pixels (holes included) in level-0 ``(x, y)`` coordinates."""
    padded = np.pad(mask.astype(np.float32), 1)
    geom = Polygon()
    for contour in measure.find_contours(padded, 0.5):
        if len(contour) < 4:
            continue
        ring = Polygon(np.column_stack([contour[:, 1] - 0.5, contour[:, 0] - 0.5]) * downsample)
        ring = shapely.make_valid(ring)
        geom = geom.symmetric_difference(ring)
    return geom


def simulate_coarse(
    truth_mask: np.ndarray,
    downsample: float,
    *,
    strength: float = 1.0,
    seed: int = 0,
) -> AnnotationSet:
    """A pathologist-like coarse outline of ``truth_mask``, in level-0 coordinates.

    Closing and dilation (outline drawn generously around tumour), hole filling,
    dropping tiny parts, polygon simplification and vertex jitter; every radius and
    tolerance scales with ``strength`` (0 = the truth traced exactly).
    """
    mask = np.asarray(truth_mask, dtype=bool)
    if mask.ndim != 2:
        raise ProtorefineError(f"truth mask of shape {mask.shape}: expected a 2-D array")
    if strength < 0:
        raise ProtorefineError(f"strength={strength}: must be zero or positive")
    rng = np.random.default_rng(seed)
    unit = max(mask.shape) / 128.0  # mask pixels per "unit" so the effect is size-independent
    close_r = int(round(strength * 4.0 * unit))
    dilate_r = int(round(strength * 2.0 * unit))
    if close_r > 0:
        padded = np.pad(mask, close_r)
        padded = ndi.binary_closing(padded, morphology.disk(close_r))
        mask = padded[close_r:-close_r, close_r:-close_r]
    if dilate_r > 0:
        mask = ndi.binary_dilation(mask, morphology.disk(dilate_r))
    if strength > 0:
        mask = ndi.binary_fill_holes(mask)
        min_part = strength * 12.0 * unit**2
        labels, n = ndi.label(mask)
        if n:
            sizes = np.bincount(labels.ravel())
            keep = sizes >= min_part
            keep[0] = False
            mask = keep[labels]
    geom = _mask_to_geometry(mask, downsample)
    if geom.is_empty:
        return AnnotationSet()
    tol = strength * 1.5 * unit * downsample
    if tol > 0:
        geom = geom.simplify(tol, preserve_topology=True)
    jitter = strength * 0.8 * unit * downsample
    parts = [p for p in shapely.get_parts(shapely.make_valid(geom)) if isinstance(p, Polygon)]
    out = []
    for part in parts:
        if jitter > 0:
            shell = _jitter_ring(part.exterior.coords, jitter, rng)
            holes = [_jitter_ring(r.coords, jitter, rng) for r in part.interiors]
            part = Polygon(shell, holes)
        fixed = shapely.make_valid(part)
        for p in shapely.get_parts(fixed):
            if isinstance(p, Polygon) and not p.is_empty and p.area > 0:
                out.append(Annotation(geometry=p, classification=TUMOR, name="coarse"))
    return AnnotationSet(annotations=out)


def _jitter_ring(coords, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Move every vertex of a closed ring by Gaussian noise, keeping the ring closed."""
    arr = np.asarray(coords, dtype=np.float64).copy()
    arr[:-1] += rng.normal(0.0, sigma, arr[:-1].shape)
    arr[-1] = arr[0]
    return arr
