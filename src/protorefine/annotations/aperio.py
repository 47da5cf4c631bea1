"""Aperio ImageScope XML annotations (the ``.xml`` beside an Aperio slide), read into polygons.

Layout::

    <Annotations MicronsPerPixel="0.2520">
      <Annotation Id="1" Name="Tumor" Type="4" LineColor="65280" ...>   (one layer)
        <Regions>
          <Region Id="1" Type="0" NegativeROA="0" Text="...">
            <Vertices><Vertex X="123.4" Y="567.8" Z="0"/>...</Vertices>
          </Region>
        </Regions>
      </Annotation>
    </Annotations>

Each Annotation is a layer; its ``Name`` is the class of its regions (an unnamed layer is
unclassified, which counts as tumour). Vertices are level-0 pixels. A region with
``NegativeROA="1"`` is a negative region: a hole cut out of its own layer's regions.
Regions with three or more vertices are read as polygons whatever their ``Type``
(0 freehand or polygon, 1 rectangle). An ellipse (``Type="2"``) is stored as the two
corners of its bounding box and is read as the ellipse inscribed in it (a polygon of
:data:`ELLIPSE_VERTICES` vertices). Arrows (3), rulers and other regions of fewer
vertices are left out with a warning.
"""

from __future__ import annotations

import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence

import defusedxml.ElementTree as defused_et
from defusedxml import DefusedXmlException
from shapely.geometry import Polygon
from shapely.ops import unary_union

from protorefine.annotations._files import read_input_bytes
from protorefine.annotations.classes import polygonal
from protorefine.annotations.model import UNCLASSIFIED, Annotation, AnnotationSet
from protorefine.annotations.validate import clean, repair
from protorefine.errors import ProtorefineError

#: Root element of an Aperio ImageScope annotation file.
APERIO_ROOT = "Annotations"
#: Property key holding the ImageScope layer (Annotation ``Id``) a region was read from.
APERIO_LAYER = "aperio_layer"
#: ImageScope's ``Region Type`` of an ellipse (stored as its bounding box's two corners).
ELLIPSE_TYPE = "2"
#: Vertices of the polygon an ImageScope ellipse is read as (chord error under 0.1 % of its radius).
ELLIPSE_VERTICES = 72


def ellipse_polygon(corners: Sequence[tuple[float, float]]) -> Polygon:
    """The ellipse inscribed in the box with opposite ``corners`` ((x0, y0), (x1, y1))."""
    (x0, y0), (x1, y1) = corners
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
    angles = [2 * math.pi * k / ELLIPSE_VERTICES for k in range(ELLIPSE_VERTICES)]
    return Polygon([(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in angles])


def parse_xml_file(path: str | os.PathLike[str]) -> ET.Element:
    """The root element of an XML annotation file, parsed without entities or DTDs
    (defusedxml); a one-line error naming the file when it is empty or not XML."""
    source = str(path)
    raw = read_input_bytes(path)
    if not raw.strip():
        raise ProtorefineError(f"{source}: empty file, no annotations in it")
    try:
        return defused_et.fromstring(raw)
    except DefusedXmlException as e:
        raise ProtorefineError(
            f"{source}: refused: entities / DTD not allowed in XML annotations "
            f"({' '.join(str(e).split())})"
        ) from e
    except ET.ParseError as e:
        line, col = e.position
        raise ProtorefineError(f"{source}: not valid XML (line {line}, column {col + 1})") from e


def _vertices(region: ET.Element, what: str) -> list[tuple[float, float]]:
    """The ``(x, y)`` vertices of a Region; a one-line error for one that is not a number."""
    points = []
    for v in region.iter("Vertex"):
        try:
            x, y = float(v.get("X", "")), float(v.get("Y", ""))
        except ValueError as e:
            raise ProtorefineError(
                f"{what} has a vertex whose X or Y is not a number "
                f"(X={v.get('X')!r}, Y={v.get('Y')!r})"
            ) from e
        if not (math.isfinite(x) and math.isfinite(y)):
            raise ProtorefineError(f"{what} has a vertex that is not finite (X={x}, Y={y})")
        points.append((x, y))
    return points


def parse_aperio(root: ET.Element, source: str, *, allow_empty: bool = False) -> AnnotationSet:
    """Annotations from a parsed ImageScope XML tree (no cleaning, see :func:`read_aperio_xml`)."""
    if root.tag != APERIO_ROOT:
        raise ProtorefineError(
            f"{source}: not an Aperio ImageScope annotation file (root element <{root.tag}>, "
            f"expected <{APERIO_ROOT}>)"
        )
    anns: list[Annotation] = []
    too_few = layers = 0
    for i, layer in enumerate(root.findall("Annotation")):
        layers += 1
        name = (layer.get("Name") or "").strip()
        cls = name or UNCLASSIFIED
        layer_id = layer.get("Id") or str(i + 1)
        positive: list[tuple[str | None, Polygon]] = []
        negative: list[Polygon] = []
        for j, region in enumerate(layer.iter("Region")):
            what = f"{source}: layer {layer_id} ({name or 'unnamed'}) region {region.get('Id') or j + 1}"
            points = _vertices(region, what)
            ellipse = (region.get("Type") or "").strip() == ELLIPSE_TYPE and len(points) == 2
            if len(points) < 3 and not ellipse:
                too_few += 1
                continue
            poly = ellipse_polygon(points) if ellipse else Polygon(points)
            if (region.get("NegativeROA") or "0").strip() == "1":
                negative.append(poly)
            else:
                positive.append(((region.get("Text") or "").strip() or None, poly))
        holes = unary_union([repair(n)[0] for n in negative]) if negative else None
        for text, poly in positive:
            geom = polygonal(repair(poly)[0].difference(holes)) if holes is not None else poly
            anns.append(
                Annotation(
                    geometry=geom,
                    classification=cls,
                    name=text or (name or None),
                    properties={APERIO_LAYER: layer_id},
                )
            )
    warnings: list[str] = []
    if too_few:
        warnings.append(
            f"{source}: left out {too_few} region(s) with fewer than 3 vertices "
            "(arrows, rulers): only areas (polygons, rectangles, ellipses) are read"
        )
    if not anns and not allow_empty:
        if not layers:
            raise ProtorefineError(f"{source}: ImageScope file contains no <Annotation> layer")
        raise ProtorefineError(
            f"{source}: no region with an area found in {layers} ImageScope layer(s)"
            + (f" ({too_few} with fewer than 3 vertices)" if too_few else "")
        )
    return AnnotationSet(annotations=anns, warnings=warnings)


def read_aperio_xml(
    path: str | os.PathLike[str],
    *,
    slide_shape: Sequence[int] | None = None,
    allow_empty: bool = False,
) -> AnnotationSet:
    """Read an Aperio ImageScope XML file: each layer's regions under the layer's name,
    negative regions cut out as holes, repaired and (with ``slide_shape``) clipped."""
    annset = parse_aperio(parse_xml_file(path), str(path), allow_empty=allow_empty)
    return clean(annset, str(path), slide_shape=slide_shape, allow_empty=allow_empty)
