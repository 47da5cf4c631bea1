"""Which class names mean tumour and which mean 'not tumour', and the tumour region of a set."""

from __future__ import annotations

import hashlib

import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from protorefine.annotations.model import EXCLUDE, NORMAL, TUMOR, UNCLASSIFIED, AnnotationSet

#: Class names (lower case, before any QuPath ``": "`` sub-class) counted as tumour.
#: ``_0``/``_1`` and ``metastases`` are CAMELYON16's ASAP groups for tumour outlines.
TUMOUR_NAMES = frozenset(
    {
        "tumor",
        "tumour",
        "metastasis",
        "metastases",
        "carcinoma",
        "cancer",
        "_0",
        "_1",
        "unclassified",
        "none",
        "",
    }
)

#: Class names (lower case) whose areas are removed from the tumour region.
#: ``_2``/``Exclusion`` are CAMELYON16's non-tumour areas drawn inside tumour outlines.
EXCLUSION_NAMES = frozenset(
    {
        "exclusion",
        "exclude",
        "excluded",
        "_2",
        "normal",
        "non-tumor",
        "non-tumour",
        "nontumor",
        "nontumour",
        "background",
        "negative",
        "ignore",
        "ignore*",
    }
)

#: Default RGB colours (QuPath's defaults where QuPath has the class).
DEFAULT_COLORS: dict[str, tuple[int, int, int]] = {
    TUMOR: (200, 0, 0),
    NORMAL: (150, 200, 150),
    EXCLUDE: (180, 180, 180),
    UNCLASSIFIED: (255, 200, 0),
}


def _base_name(name: str | None) -> str:
    """Lower-case class name without QuPath's derived part (``"Tumor: Positive"`` -> ``"tumor"``)."""
    if name is None:
        return ""
    return name.split(":", 1)[0].strip().lower()


def is_tumour_class(name: str | None) -> bool:
    """True when ``name`` is a tumour class (see :data:`TUMOUR_NAMES`), case-insensitive."""
    return _base_name(name) in TUMOUR_NAMES


def is_exclusion_class(name: str | None) -> bool:
    """True when ``name`` marks non-tumour area (see :data:`EXCLUSION_NAMES`), case-insensitive."""
    return _base_name(name) in EXCLUSION_NAMES


def class_color(name: str | None) -> tuple[int, int, int]:
    """A stable RGB colour for a class: the default for known classes, else one from its name."""
    if name in DEFAULT_COLORS:
        return DEFAULT_COLORS[name]
    if is_tumour_class(name):
        return DEFAULT_COLORS[TUMOR]
    if is_exclusion_class(name):
        return DEFAULT_COLORS[EXCLUDE]
    digest = hashlib.md5((name or "").encode("utf-8")).digest()
    return (64 + digest[0] % 192, 64 + digest[1] % 192, 64 + digest[2] % 192)


def polygonal(geom: BaseGeometry) -> Polygon | MultiPolygon:
    """The polygonal part of any geometry, as a Polygon or MultiPolygon (empty Polygon if none)."""
    if geom.is_empty:
        return Polygon()
    if isinstance(geom, Polygon | MultiPolygon):
        return geom
    parts: list[Polygon] = []
    for g in getattr(geom, "geoms", []):
        p = polygonal(g)
        if isinstance(p, Polygon) and not p.is_empty:
            parts.append(p)
        elif isinstance(p, MultiPolygon):
            parts.extend(p.geoms)
    if not parts:
        return Polygon()
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _valid(geom: BaseGeometry) -> BaseGeometry:
    """``geom`` itself when valid, else its polygonal ``make_valid`` repair."""
    return geom if geom.is_valid else polygonal(shapely.make_valid(geom))


def tumour_class_name(annset: AnnotationSet | None) -> str:
    """The class a refined outline of ``annset`` gets: that of its largest tumour annotation
    as the user spelled it (``Metastasis``, ``Tumor: Positive``, CAMELYON's ``_0``), so it
    lands in the same QuPath class or ASAP group; ``Tumor`` when it is unclassified."""
    if annset is None:
        return TUMOR
    named = [
        a
        for a in annset
        if is_tumour_class(a.classification)
        and _base_name(a.classification) not in ("unclassified", "none", "")
    ]
    if not named:
        return TUMOR
    return str(max(named, key=lambda a: a.geometry.area).classification)


def tumour_geometry(annset: AnnotationSet) -> Polygon | MultiPolygon:
    """The tumour region of a set: union of tumour classes minus union of exclusion classes.

    Tumour classes (case-insensitive, QuPath sub-classes such as ``"Tumor: Positive"``
    count by their base name): ``Tumor``, ``Tumour``, ``metastasis``, ``metastases``,
    ``carcinoma``, ``cancer``, CAMELYON16's ``_0`` and ``_1``, and unclassified
    annotations (``Unclassified``, ``None`` or no class). Exclusion classes, whose area
    is removed: ``Exclusion``, ``Exclude``, ``_2``, ``Normal``, ``Non-tumor``,
    ``Background``, ``Negative``, ``Ignore*``. Any other class (``Stroma``,
    ``Necrosis``...) is ignored, except that when the set has no tumour class at all,
    every non-exclusion annotation counts as tumour (a single-class outline drawn
    under some other name is still the outline the user meant).
    """
    tumour = [_valid(a.geometry) for a in annset if is_tumour_class(a.classification)]
    excluded = [_valid(a.geometry) for a in annset if is_exclusion_class(a.classification)]
    if not tumour:
        tumour = [_valid(a.geometry) for a in annset if not is_exclusion_class(a.classification)]
    if not tumour:
        return Polygon()
    region = unary_union(tumour)
    if excluded:
        region = region.difference(unary_union(excluded))
    return polygonal(region)
