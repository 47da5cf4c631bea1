"""napari Shapes data <-> annotations, without importing napari.

napari Shapes data are ``(N, 2)`` arrays of ``(y, x)`` vertices in the layer's data
coordinates; multiplied by the layer ``scale`` ``(sy, sx)`` they are level-0 pixels.

Shapes have no holes. A hole goes out as a separate polygon of class ``Exclusion``
(CAMELYON16's meaning: non-tumour area inside an outline), placed right after its
outline, and polygons are ordered largest first so that an island inside a hole
comes after the hole. Coming back, shapes are read in layer order like paint: an
``Exclusion`` shape cuts a hole in the shapes of every class drawn before it, and
the part of it that covers no earlier shape stays an ``Exclusion`` annotation (so
an exclusion drawn first still removes tumour in :func:`tumour_geometry`). One class
with any nesting of holes and islands therefore round-trips exactly, and drawing an
exclusion over an outline punches a hole in it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
from shapely.geometry import MultiPolygon, Polygon
from shapely.ops import unary_union

from protorefine.annotations.classes import polygonal
from protorefine.annotations.model import EXCLUDE, TUMOR, Annotation, AnnotationSet
from protorefine.annotations.validate import repair
from protorefine.errors import ProtorefineError

ELLIPSE_VERTICES = 64


def _scale_pair(scale: float | Sequence[float]) -> np.ndarray:
    s = np.atleast_1d(np.asarray(scale, dtype=float))
    if s.size == 1:
        s = np.repeat(s, 2)
    s = s[-2:]
    if s.size != 2 or not np.all(s > 0):
        raise ProtorefineError(f"scale {scale!r}: expected a positive number or (sy, sx)")
    return s


def _ellipse(corners_xy: np.ndarray) -> np.ndarray:
    """Vertices of the ellipse inscribed in napari's 4-corner (possibly rotated) box."""
    c = corners_xy[:4]
    centre = c.mean(axis=0)
    u = (c[0] + c[1]) / 2 - centre
    v = (c[1] + c[2]) / 2 - centre
    t = np.linspace(0, 2 * np.pi, ELLIPSE_VERTICES, endpoint=False)
    return centre + np.cos(t)[:, None] * u + np.sin(t)[:, None] * v


def _cut(
    parts: list[tuple[str, Polygon | MultiPolygon]], cut: Polygon | MultiPolygon
) -> list[tuple[str, Polygon | MultiPolygon]]:
    """Cut ``cut`` out of the earlier non-exclusion ``parts`` in place; return what is left of it."""
    if cut.is_empty:
        return []
    minx, miny, maxx, maxy = cut.bounds
    hit: list[Polygon | MultiPolygon] = []
    for i, (cls, geom) in enumerate(parts):
        if cls == EXCLUDE or geom.is_empty:
            continue
        gx0, gy0, gx1, gy1 = geom.bounds
        if gx0 > maxx or gx1 < minx or gy0 > maxy or gy1 < miny or not geom.intersects(cut):
            continue
        hit.append(geom)
        parts[i] = (cls, polygonal(geom.difference(cut)))
    rest = polygonal(cut.difference(unary_union(hit))) if hit else cut
    return [] if rest.is_empty or rest.area <= 0 else [(EXCLUDE, rest)]


def shapes_to_annotations(
    data: Sequence[np.ndarray],
    shape_types: str | Sequence[str] = "polygon",
    scale: float | Sequence[float] = (1.0, 1.0),
    *,
    classification: str | Sequence[str] = TUMOR,
) -> AnnotationSet:
    """napari Shapes data to level-0 annotations, overlapping shapes unioned per class.

    ``classification`` is one class for all shapes or one per shape. Polygons,
    rectangles and ellipses (sampled to a polygon) are kept; paths and lines have no
    area and are ignored with a warning; self-intersecting polygons are repaired.
    An ``Exclusion`` shape cuts the shapes drawn before it (see module docstring).
    """
    data = list(data)
    n = len(data)
    types = [shape_types] * n if isinstance(shape_types, str) else list(shape_types)
    classes = [classification] * n if isinstance(classification, str) else list(classification)
    if len(types) != n or len(classes) != n:
        raise ProtorefineError(
            f"{n} shapes but {len(types)} shape types and {len(classes)} classifications"
        )
    s = _scale_pair(scale)
    parts: list[tuple[str, Polygon | MultiPolygon]] = []  # in layer order
    pending: list[Polygon | MultiPolygon] = []  # consecutive exclusions, cut together
    ignored: Counter[str] = Counter()
    repaired = degenerate = 0

    def flush() -> None:
        if pending:
            parts.extend(_cut(parts, polygonal(unary_union(pending))))
            pending.clear()

    for verts, kind, cls in zip(data, types, classes, strict=True):
        kind = str(kind).lower()
        yx = np.asarray(verts, dtype=float)
        if yx.ndim != 2 or yx.shape[1] < 2:
            raise ProtorefineError(
                f"shape data of shape {yx.shape}: expected (N, 2) (y, x) vertices"
            )
        xy = (yx[:, -2:] * s)[:, ::-1]
        if kind in ("path", "line"):
            ignored[kind] += 1
            continue
        if kind == "ellipse":
            if len(xy) < 4:
                degenerate += 1
                continue
            xy = _ellipse(xy)
        elif kind not in ("polygon", "rectangle"):
            ignored[kind] += 1
            continue
        if len(xy) < 3:
            degenerate += 1
            continue
        geom, fixed = repair(Polygon(xy))
        repaired += fixed
        if geom.is_empty or geom.area <= 0:
            degenerate += 1
            continue
        if str(cls) == EXCLUDE:
            pending.append(geom)
        else:
            flush()
            parts.append((str(cls), geom))
    flush()
    per_class: dict[str, list[Polygon | MultiPolygon]] = {}
    for cls, geom in parts:
        if not geom.is_empty:
            per_class.setdefault(cls, []).append(geom)
    merged = {c: polygonal(unary_union(g)) for c, g in per_class.items()}
    anns = [
        Annotation(geometry=p, classification=c)
        for c, g in merged.items()
        for p in (g.geoms if isinstance(g, MultiPolygon) else [g])
        if not p.is_empty and p.area > 0
    ]
    warnings: list[str] = []
    if ignored:
        what = ", ".join(f"{k} x{v}" for k, v in ignored.items())
        warnings.append(f"ignored shapes with no area ({what})")
    if degenerate:
        warnings.append(f"dropped {degenerate} shape(s) with fewer than 3 vertices or no area")
    if repaired:
        warnings.append(f"repaired {repaired} self-intersecting polygon(s)")
    return AnnotationSet(annotations=anns, warnings=warnings)


def annotations_to_shapes(
    annset: AnnotationSet, scale: float | Sequence[float] = (1.0, 1.0)
) -> tuple[list[np.ndarray], list[str], list[str]]:
    """Annotations as napari Shapes ``(data, shape_types, classes)`` for a layer with ``scale``.

    Each polygon part is one ``"polygon"`` of its class, vertices ``(y, x)`` in layer
    data coordinates (level-0 divided by ``scale``, ring not closed), largest first;
    each hole is one more polygon of class ``Exclusion`` right after its outline.
    """
    s = _scale_pair(scale)
    data: list[np.ndarray] = []
    classes: list[str] = []

    def add(coords: Sequence, cls: str) -> None:
        xy = np.asarray(coords, dtype=float)[:-1, :2]
        data.append(xy[:, ::-1] / s)
        classes.append(cls)

    polys = [
        (poly, ann.classification)
        for ann in annset
        for poly in _polygons(polygonal(ann.geometry))
        if not poly.is_empty
    ]
    # largest first: an island in a hole then comes after the hole that would erase it
    polys.sort(key=lambda pc: -Polygon(pc[0].exterior).area)
    for poly, cls in polys:
        add(poly.exterior.coords, cls)
        for hole in poly.interiors:
            add(hole.coords, EXCLUDE)
    return data, ["polygon"] * len(data), classes


def _polygons(geom: Polygon | MultiPolygon) -> list[Polygon]:
    return list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]
