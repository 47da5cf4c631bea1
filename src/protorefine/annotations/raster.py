"""Polygons to masks and back, exactly: ``rasterize(vectorize(m)) == m`` at any downsample.

``smooth_outline`` turns the traced pixel staircase into the rounded outline a
pathologist would draw, moving no edge by more than half a pixel.

A mask pixel ``(r, c)`` at downsample ``d`` covers level-0 ``[c d, (c+1) d) x [r d, (r+1) d)``.
``rasterize`` sets a pixel when its centre ``((c + 0.5) d, (r + 0.5) d)`` is inside the
geometry (even-odd scanline fill over every ring, so holes are respected; a centre
exactly on an edge counts as inside on top/left edges and outside on bottom/right ones,
so ``box(0, 0, W, H)`` fills exactly ``W x H`` pixels);
``vectorize`` traces the pixel edges, so its polygons pass exactly between set and
unset pixel centres.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import shapely
import shapely.affinity
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from protorefine.annotations.classes import polygonal, tumour_geometry
from protorefine.annotations.model import TUMOR, Annotation, AnnotationSet
from protorefine.errors import ProtorefineError

_BAND_PIXELS = 1 << 24  # pixels per band in rasterize


def mask_shape(shape_level0: Sequence[int], downsample: float) -> tuple[int, int]:
    """Shape of a mask of a ``(H, W)`` slide at ``downsample``: ``(ceil(H/d), ceil(W/d))``."""
    if not downsample > 0:
        raise ProtorefineError(f"downsample {downsample!r}: must be a positive number")
    h, w = int(shape_level0[0]), int(shape_level0[1])
    return math.ceil(h / downsample - 1e-9), math.ceil(w / downsample - 1e-9)


def fit_mask(mask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``mask`` cropped or padded (False) to ``shape``: masks rasterised at one downsample
    and grids laid over the same slide may differ by a cell at the far edges."""
    out = np.zeros(tuple(int(v) for v in shape), bool)
    h, w = min(out.shape[0], mask.shape[0]), min(out.shape[1], mask.shape[1])
    out[:h, :w] = mask[:h, :w]
    return out


def _geometry_of(
    geometry_or_annset: BaseGeometry | AnnotationSet | Annotation, classes: Sequence[str] | None
) -> BaseGeometry:
    if isinstance(geometry_or_annset, AnnotationSet):
        if classes is None:
            return tumour_geometry(geometry_or_annset)
        return geometry_or_annset.union(list(classes))
    if isinstance(geometry_or_annset, Annotation):
        return geometry_or_annset.geometry
    return geometry_or_annset


def rasterize(
    geometry_or_annset: BaseGeometry | AnnotationSet | Annotation,
    shape_level0: Sequence[int],
    downsample: float = 1.0,
    *,
    classes: Sequence[str] | None = None,
) -> np.ndarray:
    """Boolean mask of shape ``(ceil(H/d), ceil(W/d))``: True where a pixel centre is inside.

    An AnnotationSet is rasterised as its tumour region (:func:`tumour_geometry`:
    tumour classes minus exclusions) when ``classes`` is None, else as the union of
    the listed classes. Cost grows with vertices plus mask pixels, not their product.
    """
    out_shape = mask_shape(shape_level0, downsample)
    geom = polygonal(_geometry_of(geometry_or_annset, classes))
    mask = np.zeros(out_shape, dtype=bool)
    if geom.is_empty or 0 in out_shape:
        return mask
    if isinstance(geom, MultiPolygon) and not geom.is_valid:
        geom = polygonal(unary_union(geom.geoms))
    parts = shapely.get_parts(geom)
    rings = shapely.get_rings(parts)
    coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
    if len(coords) < 2:
        return mask
    u = coords[:, 0] / downsample
    v = coords[:, 1] / downsample
    same = ring_idx[1:] == ring_idx[:-1]
    x0, y0, x1, y1 = u[:-1][same], v[:-1][same], u[1:][same], v[1:][same]
    flip = y0 > y1
    x0, x1 = np.where(flip, x1, x0), np.where(flip, x0, x1)
    y0, y1 = np.where(flip, y1, y0), np.where(flip, y0, y1)
    h, w = out_shape
    # rows whose centre r + 0.5 lies in [y0, y1): half-open so a shared vertex counts once
    r0 = np.clip(np.ceil(y0 - 0.5), 0, h).astype(np.int64)
    r1 = np.clip(np.ceil(y1 - 0.5), 0, h).astype(np.int64)
    span = r1 - r0
    keep = span > 0
    if not keep.any():
        return mask
    x0, y0, x1, y1, r0, span = x0[keep], y0[keep], x1[keep], y1[keep], r0[keep], span[keep]
    edge = np.repeat(np.arange(len(span)), span)
    first = np.repeat(np.cumsum(span) - span, span)
    rows = r0[edge] + (np.arange(len(edge)) - first)
    yc = rows + 0.5
    slope = (x1 - x0) / (y1 - y0)
    xc = x0[edge] + (yc - y0[edge]) * slope[edge]
    # a crossing at x toggles every pixel whose centre c + 0.5 is at or right of x
    cols = np.clip(np.ceil(xc - 0.5), 0, w).astype(np.int64)
    flat = np.sort(rows * (w + 1) + cols)
    # fill in bands of rows so that memory stays about the size of the mask itself
    band = max(1, _BAND_PIXELS // (w + 1))
    for top in range(0, h, band):
        bottom = min(h, top + band)
        lo, hi = np.searchsorted(flat, [top * (w + 1), bottom * (w + 1)])
        if lo == hi:
            continue  # nothing crosses these rows: they stay empty
        idx, counts = np.unique(flat[lo:hi] - top * (w + 1), return_counts=True)
        toggles = np.zeros((bottom - top) * (w + 1), dtype=bool)
        toggles[idx[counts % 2 == 1]] = True
        filled = np.logical_xor.accumulate(toggles.reshape(bottom - top, w + 1), axis=1)
        mask[top:bottom] = filled[:, :w]
    return mask


def _mask_polygons(mask: np.ndarray) -> list[Polygon]:
    """Exact pixel-edge polygons (with holes) of one mask, in mask-pixel-corner units.

    GDAL's polygonize through ``rasterio.features.shapes`` (4-connected regions): the same
    polygons, vertex for vertex, as the shapely edge tracing protorefine had, 2 to 5 times
    faster (``benchmarks/vectorize_rasterio.py``, docs/benchmarks.md).
    """
    if mask.size == 0 or not mask.any():
        return []
    from rasterio import features

    values = np.ascontiguousarray(mask, dtype=np.uint8)
    return [
        Polygon(g["coordinates"][0], g["coordinates"][1:])
        for g, _ in features.shapes(values, mask=values.astype(bool), connectivity=4)
    ]


def _tiled_polygons(mask: np.ndarray, tile: int) -> list[Polygon]:
    """:func:`_mask_polygons` traced tile by tile (memory bounded by a tile), the parts
    that reach a tile's edge merged with their neighbours' afterwards."""
    rows, cols = mask.shape
    done: list[Polygon] = []
    open_parts: list[Polygon] = []
    for r0 in range(0, rows, tile):
        for c0 in range(0, cols, tile):
            part = mask[r0 : r0 + tile, c0 : c0 + tile]
            h, w = part.shape
            for p in _mask_polygons(part):
                x0, y0, x1, y1 = p.bounds
                inner = (x0 > 0 or c0 == 0) and (y0 > 0 or r0 == 0)
                inner &= (x1 < w or c0 + w == cols) and (y1 < h or r0 + h == rows)
                p = shapely.affinity.translate(p, c0, r0)
                (done if inner else open_parts).append(p)
    if open_parts:
        done += [p for p in shapely.get_parts(polygonal(unary_union(open_parts)))]
    return done


def vectorize(
    mask: np.ndarray,
    downsample: float = 1.0,
    *,
    classification: str = TUMOR,
    min_area: float = 0.0,
    tile: int | None = None,
) -> AnnotationSet:
    """Polygons (with holes) around a mask's set pixels, in level-0 pixel coordinates.

    One annotation per connected region (4-connected). ``min_area`` (level-0 pixels²)
    drops smaller regions and fills smaller holes. Exact: with ``min_area=0``,
    ``rasterize(vectorize(m, d), shape, d)`` returns ``m``. ``tile`` (mask pixels): trace
    tiles of that side and merge the parts that cross their edges (a whole slide's mask).
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ProtorefineError(f"mask of shape {m.shape}: expected a 2-D array")
    m = m.astype(bool, copy=False)
    polys = _mask_polygons(m) if tile is None or max(m.shape) <= tile else _tiled_polygons(m, tile)
    scale = float(downsample)
    if polys and scale != 1.0:  # one vectorised call, not one per polygon
        polys = list(shapely.transform(np.asarray(polys, dtype=object), lambda xy: xy * scale))
    out: list[Annotation] = []
    for p in polys:
        if min_area > 0:
            if p.area < min_area:
                continue
            holes = [h for h in p.interiors if Polygon(h).area >= min_area]
            if len(holes) != len(p.interiors):
                p = Polygon(p.exterior, holes)
        out.append(Annotation(geometry=p, classification=classification))
    return AnnotationSet(annotations=out)


def _smooth_ring(coords: np.ndarray, step: float, passes: int) -> np.ndarray:
    """One closed ring: pixel steps replaced by their midpoints, then Chaikin corner cuts."""
    ring = shapely.segmentize(shapely.linearrings(coords), step)
    pts = shapely.get_coordinates(ring)[:-1]
    pts = (pts + np.roll(pts, -1, axis=0)) / 2  # a 45-degree staircase becomes a straight line
    for _ in range(passes - 1):
        nxt = np.roll(pts, -1, axis=0)
        pts = np.stack([0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt], 1).reshape(-1, 2)
    return np.vstack([pts, pts[:1]])


def smooth_outline(geometry: BaseGeometry, step: float, passes: int = 3) -> BaseGeometry:
    """Rounded version of polygons traced from a mask of ``step``-sized pixels (level-0 units).

    Pass 1 cuts every edge into pixel steps and joins their midpoints (stair steps
    vanish, no edge moves by more than ``step / 2``, pixel centres stay on their side);
    each further pass cuts the corners (Chaikin). Holes and separate parts are kept;
    ``passes=0`` returns the exact pixel outline.
    """
    geom = polygonal(geometry)
    if passes < 1 or geom.is_empty or not step > 0:
        return geom
    out = []
    for part in shapely.get_parts(geom):
        shell = _smooth_ring(np.asarray(part.exterior.coords), step, passes)
        holes = [_smooth_ring(np.asarray(h.coords), step, passes) for h in part.interiors]
        out.append(Polygon(shell, holes).simplify(0.1 * step, preserve_topology=True))
    smoothed = MultiPolygon(out) if len(out) > 1 else out[0]
    if not smoothed.is_valid:
        smoothed = polygonal(shapely.make_valid(smoothed))
    return smoothed
