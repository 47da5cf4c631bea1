"""napari Shapes data <-> annotations, without importing napari.

napari Shapes data are ``(N, 2)`` arrays of ``(y, x)`` vertices in the layer's data
coordinates; multiplied by the layer ``scale`` ``(sy, sx)`` they are level-0 pixels.
Shapes have no holes, so a hole goes out as a separate polygon of class
``Exclusion`` (CAMELYON16's meaning: non-tumour area inside an outline), and coming
back an ``Exclusion`` polygon is cut out of the polygons of every other class. An
outline with holes therefore survives the round trip exactly, and an exclusion the
user draws over a tumour outline becomes a hole in it.
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
    ``Exclusion`` shapes are cut out of every other class (see module docstring).
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
    per_class: dict[str, list[Polygon | MultiPolygon]] = {}
    ignored: Counter[str] = Counter()
    repaired = degenerate = 0
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
        per_class.setdefault(str(cls), []).append(geom)
    merged = {c: polygonal(unary_union(g)) for c, g in per_class.items()}
    if EXCLUDE in merged:
        cut = merged[EXCLUDE]
        others = [g for c, g in merged.items() if c != EXCLUDE]
        for c in merged:
            if c != EXCLUDE:
                merged[c] = polygonal(merged[c].difference(cut))
        if others:
            merged[EXCLUDE] = polygonal(cut.difference(unary_union(others)))
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
    data coordinates (level-0 divided by ``scale``, ring not closed); each hole is
    one more polygon of class ``Exclusion``.
    """
    s = _scale_pair(scale)
    data: list[np.ndarray] = []
    classes: list[str] = []

    def add(coords: Sequence, cls: str) -> None:
        xy = np.asarray(coords, dtype=float)[:-1, :2]
        data.append(xy[:, ::-1] / s)
        classes.append(cls)

    for ann in annset:
        geom = polygonal(ann.geometry)
        for poly in geom.geoms if isinstance(geom, MultiPolygon) else [geom]:
            if poly.is_empty:
                continue
            add(poly.exterior.coords, ann.classification)
            for hole in poly.interiors:
                add(hole.coords, EXCLUDE)
    return data, ["polygon"] * len(data), classes
