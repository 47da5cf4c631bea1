"""Tumour measurements of an outline: regions, area and greatest dimension, in microns.

What a pathologist reports from an outline: how many separate tumour regions, their
total area, and the largest region's greatest dimension (maximum Feret diameter:
the longest distance between two points of the region). Areas count holes out.
Without microns per pixel the figures stay in level-0 pixels and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from protorefine.annotations import AnnotationSet, rasterize, tumour_geometry
from protorefine.annotations.classes import polygonal

#: Refined tumour probabilities the model is unsure about. On the 61 CAMELYON tiles the
#: share of such patches ranks the slides by their error (Spearman 0.63-0.67,
#: docs/benchmarks.md, "Review order"), so the review goes least sure first.
UNSURE = (0.2, 0.8)

#: Convex hulls with more vertices than this are compared in blocks (bounded memory).
_BLOCK = 2048


def feret_diameter(geom: BaseGeometry) -> float:
    """Greatest distance between two points of ``geom`` (its convex hull's vertices)."""
    if geom.is_empty:
        return 0.0
    pts = np.unique(shapely.get_coordinates(geom.convex_hull), axis=0)
    best = 0.0
    for i in range(0, len(pts), _BLOCK):
        d = pts[i : i + _BLOCK, None, :] - pts[None, :, :]
        best = max(best, float(np.sqrt((d * d).sum(-1).max())))
    return best


@dataclass(frozen=True)
class Region:
    """One connected tumour region: area (unit²), greatest dimension (unit); its centre (x, y)
    and bounds (min x, min y, max x, max y) in level-0 pixels, to go and look at it."""

    area: float
    diameter: float
    centre: tuple[float, float]
    bounds: tuple[float, float, float, float]
    geometry: BaseGeometry | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Change:
    """A part the refinement took out of the coarse outline ("removed") or put outside it
    ("added"): its area (unit²), centre and bounds in level-0 pixels."""

    kind: str
    area: float
    centre: tuple[float, float]
    bounds: tuple[float, float, float, float]
    geometry: BaseGeometry | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Measurements:
    """Regions of an outline, largest first, in ``unit`` ("µm", or "px" when the slide has no mpp)."""

    unit: str
    regions: tuple[Region, ...]

    @property
    def area(self) -> float:
        return float(sum(r.area for r in self.regions))

    @property
    def largest_diameter(self) -> float:
        return max((r.diameter for r in self.regions), default=0.0)

    def as_dict(self) -> dict:
        """JSON-able figures (for report.json)."""
        u = "um" if self.unit == "µm" else self.unit
        return {
            "regions": len(self.regions),
            f"area_{u}2": round(self.area, 3),
            f"largest_diameter_{u}": round(self.largest_diameter, 3),
            f"region_areas_{u}2": [round(r.area, 3) for r in self.regions],
        }

    def summary(self) -> str:
        """One line, e.g. "3 regions, 12.4 mm², largest 4.10 mm across"."""
        n = len(self.regions)
        if n == 0:
            return "no tumour region"
        what = "1 region" if n == 1 else f"{n} regions"
        return (
            f"{what}, {format_area(self.area, self.unit)}, "
            f"largest {format_length(self.largest_diameter, self.unit)} across"
        )


def _three_figures(value: float) -> str:
    """12.4, 15.0, 0.0450; whole numbers from 100 up."""
    if value >= 100 or value <= 0:
        return f"{value:,.0f}"
    return f"{value:.{2 - math.floor(math.log10(value))}f}"


def format_area(value: float, unit: str) -> str:
    """An area for people: mm² from 0.01 mm² up, else µm² (pixels stay px²)."""
    if unit == "µm" and value >= 1e4:
        return f"{_three_figures(value / 1e6)} mm²"
    return f"{value:,.0f} {unit}²"


def format_length(value: float, unit: str) -> str:
    """A length for people: mm from 1 mm up, else µm (pixels stay px)."""
    if unit == "µm" and value >= 1000:
        return f"{_three_figures(value / 1000)} mm"
    return f"{value:,.0f} {unit}"


def measure(outline: AnnotationSet | BaseGeometry, mpp: float | None) -> Measurements:
    """Measure an outline (tumour classes minus exclusions, overlaps merged) at ``mpp`` µm per pixel."""
    if isinstance(outline, AnnotationSet):
        geom = tumour_geometry(outline)
    else:  # any geometry: repaired and merged like an annotation set's tumour region
        geom = polygonal(shapely.unary_union(shapely.make_valid(outline)))
    scale = float(mpp) if mpp else 1.0
    unit = "µm" if mpp else "px"
    parts = geom.geoms if isinstance(geom, MultiPolygon) else [geom]
    regions = [
        Region(p.area * scale**2, feret_diameter(p) * scale, _centre(p), tuple(p.bounds), p)
        for p in parts
        if not p.is_empty and p.area > 0
    ]
    regions.sort(key=lambda r: -r.area)
    return Measurements(unit, tuple(regions))


def _centre(p: Polygon) -> tuple[float, float]:
    """A point to show for a part: its centroid, or a point inside when that falls outside."""
    c = p.centroid if p.contains(p.centroid) else p.representative_point()
    return (c.x, c.y)


def outline_changes(
    coarse: AnnotationSet,
    refined: AnnotationSet,
    mpp: float | None,
    *,
    min_share: float = 0.01,
    limit: int = 8,
) -> list[Change]:
    """Where the refined outline differs most from the coarse one, largest first: parts taken
    out of the coarse outline and parts added outside it, each at least ``min_share`` of the
    coarse outline's area (at most ``limit``), what a pathologist checks first."""
    c, r = tumour_geometry(coarse), tumour_geometry(refined)
    floor = min_share * c.area
    scale = float(mpp) if mpp else 1.0
    changes = []
    for kind, part in (("removed", c.difference(r)), ("added", r.difference(c))):
        part = polygonal(part)
        for p in part.geoms if isinstance(part, MultiPolygon) else [part]:
            if not p.is_empty and p.area >= max(floor, 1e-9):
                changes.append(Change(kind, p.area * scale**2, _centre(p), tuple(p.bounds), p))
    changes.sort(key=lambda ch: -ch.area)
    return changes[:limit]


def cells_in(geom: BaseGeometry, downsample: float, shape: tuple[int, int]) -> np.ndarray:
    """(rows, cols) mask of the grid cells (``downsample`` level-0 pixels each) whose centres
    lie in ``geom`` (level-0 pixels); a part smaller than a cell gets the cell under it."""
    rows, cols = shape
    mask = np.zeros(shape, bool)
    if geom.is_empty:
        return mask
    level0 = (int(rows * downsample), int(cols * downsample))  # as rasterize reads a shape
    drawn = rasterize(geom, level0, downsample)[:rows, :cols]
    mask[: drawn.shape[0], : drawn.shape[1]] = drawn
    if not mask.any():
        p = geom.representative_point()
        mask[min(int(p.y // downsample), rows - 1), min(int(p.x // downsample), cols - 1)] = True
    return mask


def prototype_makeup(
    geom: BaseGeometry, downsample: float, ids: np.ndarray, *, top: int = 2
) -> list[tuple[int, float]]:
    """The global prototypes a part of an outline is made of: ``(prototype, share of its
    tissue cells)``, most first, over the cells :func:`cells_in` the part (prototype ``ids``
    per cell, -1 off tissue)."""
    found = ids[cells_in(geom, downsample, ids.shape)]
    found = found[found >= 0]
    if not found.size:
        return []
    values, counts = np.unique(found, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    return [(int(values[i]), float(counts[i] / found.size)) for i in order]


def qupath_measurements(geom: Polygon | MultiPolygon, mpp: float | None) -> list[dict]:
    """One annotation's figures under QuPath's measurement names, as the ``[{"name", "value"}]``
    list every QuPath version reads (0.4+ also reads, and writes, a name-to-value map)."""
    scale = float(mpp) if mpp else 1.0
    unit = "µm" if mpp else "px"
    figures = {
        f"Area {unit}^2": round(geom.area * scale**2, 3),
        f"Max diameter {unit}": round(feret_diameter(geom) * scale, 3),
    }
    return [{"name": k, "value": v} for k, v in figures.items()]


def with_measurements(annset: AnnotationSet, mpp: float | None) -> AnnotationSet:
    """A copy of ``annset`` whose annotations carry their area and greatest dimension, for QuPath."""
    anns = [
        replace(
            a, properties={**a.properties, "measurements": qupath_measurements(a.geometry, mpp)}
        )
        for a in annset
    ]
    return AnnotationSet(annotations=anns, warnings=list(annset.warnings))


def unsure_share(prob: np.ndarray, unsure: tuple[float, float] = UNSURE) -> float:
    """Share of patch probabilities strictly inside ``unsure`` (0 for no patches)."""
    prob = np.asarray(prob, dtype=np.float32)
    if prob.size == 0:
        return 0.0
    return float(np.mean((prob > unsure[0]) & (prob < unsure[1])))
