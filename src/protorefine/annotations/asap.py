"""ASAP XML annotations as used by CAMELYON16, read into Tumor / Exclusion and written back.

Layout::

    <ASAP_Annotations>
      <Annotations>
        <Annotation Name="_0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
          <Coordinates><Coordinate Order="0" X="123.4" Y="567.8"/>...</Coordinates>
        </Annotation>
      </Annotations>
      <AnnotationGroups><Group Name="_0" PartOfGroup="None" Color="#FF0000"/>...</AnnotationGroups>
    </ASAP_Annotations>

CAMELYON16 groups ``_0``, ``_1``, ``Tumor`` and ``metastases`` are tumour; ``_2`` and
``Exclusion`` are non-tumour areas drawn inside tumour outlines. ASAP polygons have
no holes, so the writer puts each hole in the ``Exclusion`` group (``_2`` where its
outline is in ``_0`` / ``_1``), which is exactly how CAMELYON16 marks them.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence

import defusedxml.ElementTree as defused_et
import numpy as np
from defusedxml import DefusedXmlException
from shapely.geometry import MultiPolygon, Polygon

from protorefine._atomic import atomic_write_bytes
from protorefine.annotations._files import read_input_bytes
from protorefine.annotations.classes import class_color, is_tumour_class, polygonal
from protorefine.annotations.model import (
    EXCLUDE,
    TUMOR,
    UNCLASSIFIED,
    Annotation,
    AnnotationSet,
)
from protorefine.annotations.validate import clean
from protorefine.errors import ProtorefineError

#: Property key holding the ASAP group an annotation was read from.
ASAP_GROUP = "asap_group"
#: Attribute of the root element of ASAP XML that protorefine exported (its version): files
#: carrying it may be replaced by a later export, others are the user's.
WRITER_ATTR = "protorefine"
_TUMOUR_GROUPS = {"_0", "_1", "tumor", "tumour", "metastases", "metastasis"}
_EXCLUSION_GROUPS = {"_2", "exclusion"}
_POLYGON_TYPES = {"polygon", "spline", "rectangle"}
_POINT_TYPES = {"dot", "pointset", "point", "measurement"}


def group_class(group: str | None) -> str:
    """The class of an ASAP group: Tumor, Exclusion, Unclassified (no group) or the group name."""
    g = (group or "").strip()
    if g.lower() in _TUMOUR_GROUPS:
        return TUMOR
    if g.lower() in _EXCLUSION_GROUPS:
        return EXCLUDE
    if g.lower() in ("", "none"):
        return UNCLASSIFIED
    return g


def _number(text: str | None) -> float:
    """An ASAP coordinate; some exporters wrote a decimal comma (``"1234,5"``)."""
    if text is None:
        raise ValueError("missing")
    return float(text.strip().replace(",", "."))


def _points(elem: ET.Element) -> np.ndarray:
    """The ``(n, 2)`` ``(x, y)`` points of one Annotation, sorted by ``Order``."""
    rows: list[tuple[float, float, float]] = []
    for i, c in enumerate(elem.iter("Coordinate")):
        order = c.get("Order")
        rows.append(
            (
                float(order) if order is not None else float(i),
                _number(c.get("X")),
                _number(c.get("Y")),
            )
        )
    if not rows:
        return np.zeros((0, 2))
    a = np.asarray(rows, dtype=float)
    a = a[np.argsort(a[:, 0], kind="stable")]
    return a[:, 1:]


def parse_asap(root: ET.Element, source: str, *, allow_empty: bool = False) -> AnnotationSet:
    """Annotations from a parsed ASAP XML tree (no cleaning, see :func:`read_asap_xml`)."""
    if root.tag != "ASAP_Annotations":
        raise ProtorefineError(
            f"{source}: not an ASAP annotation file (root element <{root.tag}>, "
            "expected <ASAP_Annotations>)"
        )
    elems = list(root.iter("Annotation"))
    if not elems and not allow_empty:
        raise ProtorefineError(f"{source}: ASAP file contains no <Annotation> (empty annotation)")
    anns: list[Annotation] = []
    ignored: Counter[str] = Counter()
    too_few = 0
    for i, elem in enumerate(elems):
        kind = (elem.get("Type") or "Polygon").strip()
        name = elem.get("Name")
        if kind.lower() not in _POLYGON_TYPES:
            ignored[kind] += 1
            continue
        try:
            pts = _points(elem)
        except ValueError as e:
            raise ProtorefineError(
                f"{source}: annotation {i + 1} ({name!r}) has a coordinate that is not a number"
            ) from e
        if len(pts) < 3:
            too_few += 1
            continue
        group = elem.get("PartOfGroup")
        props = {ASAP_GROUP: group} if group is not None else {}
        anns.append(
            Annotation(
                geometry=Polygon(pts),
                classification=group_class(group),
                name=name,
                properties=props,
            )
        )
    warnings_: list[str] = []
    if ignored:
        what = ", ".join(f"{n} {k}" for k, n in ignored.items())
        warnings_.append(f"{source}: ignored {what} annotation(s) that are not polygons")
    if too_few:
        warnings_.append(f"{source}: dropped {too_few} polygon(s) with fewer than 3 points")
    if not anns and not allow_empty:
        what = ", ".join(f"{n} {k}" for k, n in ignored.items()) or f"{too_few} with < 3 points"
        raise ProtorefineError(f"{source}: no polygon annotation found (found {what})")
    return AnnotationSet(annotations=anns, warnings=warnings_)


def read_asap_xml(
    path: str | os.PathLike[str],
    *,
    slide_shape: Sequence[int] | None = None,
    allow_empty: bool = False,
) -> AnnotationSet:
    """Read an ASAP / CAMELYON16 XML file into Tumor / Exclusion (other groups keep their name).

    Spline annotations are read as polygons through their points, Rectangles as their
    four corners; Dot / PointSet annotations are ignored with a warning. A file without
    polygons is an error unless ``allow_empty``.
    """
    source = str(path)
    raw = read_input_bytes(path)
    if not raw.strip():
        raise ProtorefineError(f"{source}: empty file, no annotations in it")
    try:
        # defusedxml: entity declarations (XXE, entity bombs) and external references are
        # refused whatever the system expat's version
        root = defused_et.fromstring(raw)
    except DefusedXmlException as e:
        raise ProtorefineError(
            f"{source}: refused: entities / DTD not allowed in XML annotations "
            f"({' '.join(str(e).split())})"
        ) from e
    except ET.ParseError as e:
        line, col = e.position
        raise ProtorefineError(f"{source}: not valid XML (line {line}, column {col + 1})") from e
    annset = parse_asap(root, source, allow_empty=allow_empty)
    return clean(annset, source, slide_shape=slide_shape, allow_empty=allow_empty)


def _hex(rgb: Sequence[int]) -> str:
    return "#{:02X}{:02X}{:02X}".format(*(int(v) for v in rgb[:3]))


def _group_of(ann: Annotation) -> str:
    """The ASAP group to write: the one read, if it still means the same class."""
    read = ann.properties.get(ASAP_GROUP)
    if read is not None and group_class(read) == ann.classification:
        return str(read)
    if ann.classification == UNCLASSIFIED:
        return "None"
    return ann.classification


def _hole_group(group: str) -> str:
    """The group of a hole cut out of a polygon of ``group``: ``_2`` under CAMELYON16's
    numbered groups (``_0`` / ``_1``), else ``Exclusion``, so a file keeps one convention."""
    return "_2" if group in ("_0", "_1") else "Exclusion"


def with_groups_of(annset: AnnotationSet, source: AnnotationSet | None) -> AnnotationSet:
    """``annset`` with the ASAP group ``source`` used most for each class, where an
    annotation has none: a refined outline exported in its coarse file's convention
    (CAMELYON16's ``_0`` / ``_2``, or ``Tumor`` / ``Exclusion``)."""
    used: dict[str, Counter[str]] = {}
    for ann in source or []:
        group = ann.properties.get(ASAP_GROUP)
        if group is not None and group_class(str(group)) == ann.classification:
            used.setdefault(ann.classification, Counter())[str(group)] += 1
    chosen = {cls: counts.most_common(1)[0][0] for cls, counts in used.items()}
    if EXCLUDE not in chosen and chosen.get(TUMOR) in ("_0", "_1"):
        chosen[EXCLUDE] = "_2"
    out = []
    for ann in annset:
        group = chosen.get(ann.classification)
        if group is None or ASAP_GROUP in ann.properties:
            out.append(ann)
        else:
            props = {**ann.properties, ASAP_GROUP: group}
            out.append(dataclasses.replace(ann, properties=props))
    return AnnotationSet(annotations=out, warnings=list(annset.warnings))


def _coordinates(parent: ET.Element, coords: np.ndarray) -> None:
    box = ET.SubElement(parent, "Coordinates")
    pts = np.asarray(coords, dtype=float)[:-1, :2]  # ASAP rings are not closed
    for k, (x, y) in enumerate(pts):
        ET.SubElement(box, "Coordinate", Order=str(k), X=_fmt(x), Y=_fmt(y))


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def to_asap_bytes(annset: AnnotationSet, writer: str | None = None) -> bytes:
    """The set as ASAP XML; holes become polygons of the ``Exclusion`` group (``_2`` where
    their outline is in CAMELYON16's ``_0`` / ``_1``). ``writer`` (protorefine's version, for
    exports): the root's :data:`WRITER_ATTR` attribute, which ASAP ignores and drops on saving."""
    root = ET.Element("ASAP_Annotations", {WRITER_ATTR: writer} if writer is not None else {})
    box = ET.SubElement(root, "Annotations")
    groups: dict[str, str] = {}
    lost_holes = 0
    n = 0

    def add(poly_coords: np.ndarray, name: str, group: str, cls: str) -> None:
        nonlocal n
        color = _hex(class_color(cls))
        groups.setdefault(group, color)
        elem = ET.SubElement(
            box, "Annotation", Name=name, Type="Polygon", PartOfGroup=group, Color=color
        )
        _coordinates(elem, poly_coords)
        n += 1

    for ann in annset:
        geom = polygonal(ann.geometry)
        parts = list(geom.geoms) if isinstance(geom, MultiPolygon) else [geom]
        group = _group_of(ann)
        for j, poly in enumerate(p for p in parts if not p.is_empty):
            name = ann.name or f"Annotation {n}"
            if len(parts) > 1:
                name = f"{name} part {j + 1}"
            add(np.asarray(poly.exterior.coords), name, group, ann.classification)
            if poly.interiors and not is_tumour_class(ann.classification):
                lost_holes += len(poly.interiors)
                continue
            for k, hole in enumerate(poly.interiors):
                add(np.asarray(hole.coords), f"{name} hole {k + 1}", _hole_group(group), EXCLUDE)
    if lost_holes:
        warnings.warn(
            f"ASAP XML has no holes: {lost_holes} hole(s) of non-tumour annotations were "
            "filled (tumour holes are written as Exclusion polygons)",
            stacklevel=3,
        )
    gbox = ET.SubElement(root, "AnnotationGroups")
    for g, color in groups.items():
        ET.SubElement(
            ET.SubElement(gbox, "Group", Name=g, PartOfGroup="None", Color=color), "Attributes"
        )
    ET.indent(root, space="\t")
    text = ET.tostring(root, encoding="unicode")
    return ('<?xml version="1.0"?>\n' + text + "\n").encode("utf-8")


def write_asap_xml(
    annset: AnnotationSet, path: str | os.PathLike[str], *, writer: str | None = None
) -> os.PathLike[str]:
    """Write the set as ASAP XML (CAMELYON16 layout), atomically; returns the path
    (``writer``: see :func:`to_asap_bytes`)."""
    return atomic_write_bytes(path, to_asap_bytes(annset, writer))


def written_by_protorefine(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is ASAP XML that protorefine exported (its root carries
    :data:`WRITER_ATTR`; ASAP and other tools drop it when they save the file)."""
    try:
        root = defused_et.fromstring(read_input_bytes(path))
    except (ProtorefineError, OSError, ValueError, DefusedXmlException, ET.ParseError):
        return False
    return root.tag == "ASAP_Annotations" and WRITER_ATTR in root.attrib
