"""Clean freshly read annotations: repair self-intersections, drop degenerate parts, clip to the slide."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from protorefine.annotations.classes import is_exclusion_class, is_tumour_class, polygonal
from protorefine.annotations.model import Annotation, AnnotationSet
from protorefine.errors import ProtorefineError


def repair(geom: BaseGeometry) -> tuple[Polygon | MultiPolygon, bool]:
    """A valid polygonal version of ``geom`` and whether it needed repair (``make_valid``)."""
    if geom.is_valid:
        return polygonal(geom), False
    fixed = shapely.make_valid(geom)
    return polygonal(fixed), True


def _label(ann: Annotation, index: int) -> str:
    return f"annotation {index + 1}" + (f" ({ann.name!r})" if ann.name else "")


def clean(
    annset: AnnotationSet,
    source: str,
    *,
    slide_shape: Sequence[int] | None = None,
    allow_empty: bool = False,
) -> AnnotationSet:
    """Repair, drop degenerate and clip annotations read from ``source``; say what changed.

    Self-intersecting polygons are repaired with shapely's ``make_valid`` keeping the
    polygonal parts; polygons with no area are dropped; with ``slide_shape`` ``(H, W)``
    polygons partly outside the slide are clipped to it. Each kind of change adds one
    line to ``annset.warnings``. Raises ProtorefineError when nothing is left, or when
    an annotation lies entirely outside the slide (likely the wrong slide or units);
    ``allow_empty`` returns an empty set instead of the first error.
    """
    repaired = dropped = clipped = 0
    kept: list[Annotation] = []
    frame = None
    if slide_shape is not None:
        h, w = int(slide_shape[0]), int(slide_shape[1])
        frame = box(0, 0, w, h)
    for i, ann in enumerate(annset.annotations):
        if not np.isfinite(shapely.get_coordinates(ann.geometry)).all():
            raise ProtorefineError(
                f"{source}: {_label(ann, i)} has coordinates that are not finite "
                "(NaN or Infinity); give level-0 pixel numbers"
            )
        geom, was_repaired = repair(ann.geometry)
        repaired += was_repaired
        if geom.is_empty or geom.area <= 0:
            dropped += 1
            continue
        if frame is not None and not frame.contains(geom):
            inside = polygonal(geom.intersection(frame))
            if inside.is_empty or inside.area <= 0:
                minx, miny, maxx, maxy = geom.bounds
                raise ProtorefineError(
                    f"{source}: {_label(ann, i)} lies entirely outside the {w}x{h} slide "
                    f"(x {minx:.0f}..{maxx:.0f}, y {miny:.0f}..{maxy:.0f}); "
                    "wrong slide or coordinates not in level-0 pixels?"
                )
            geom = inside
            clipped += 1
        ann.geometry = geom
        kept.append(ann)
    if not kept and not allow_empty:
        why = f" ({dropped} had no area)" if dropped else ""
        raise ProtorefineError(f"{source}: contains no polygon annotation{why}")
    warnings = list(annset.warnings)
    if repaired:
        warnings.append(f"{source}: repaired {repaired} self-intersecting polygon(s)")
    if dropped:
        warnings.append(f"{source}: dropped {dropped} annotation(s) with no area")
    if clipped:
        warnings.append(
            f"{source}: clipped {clipped} annotation(s) partly outside the {w}x{h} slide"
        )
    unused = Counter(
        a.classification
        for a in kept
        if not (is_tumour_class(a.classification) or is_exclusion_class(a.classification))
    )
    names = ", ".join(f"{name!r} ({n})" for name, n in sorted(unused.items()))
    if unused and any(is_tumour_class(a.classification) for a in kept):
        warnings.append(
            f"{source}: not used, as neither tumour nor exclusion: {names}; name the class Tumor "
            "(or Exclusion, for a hole) to use it"
        )
    elif unused:  # tumour_geometry's rule: a file with no tumour class is all outline
        warnings.append(f"{source}: no tumour class, so {names} make the tumour outline")
    return AnnotationSet(annotations=kept, warnings=warnings)
