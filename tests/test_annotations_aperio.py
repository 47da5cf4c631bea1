"""Aperio ImageScope XML: layers, negative regions as holes, told apart from ASAP XML."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from shapely.geometry import Point, Polygon, box

from protorefine.annotations import (
    TUMOR,
    UNCLASSIFIED,
    read_annotations,
    read_aperio_xml,
    tumour_geometry,
)
from protorefine.errors import ProtorefineError


def _region(
    rid: int, points: list[tuple[float, float]], negative: bool = False, kind: int = 0
) -> str:
    verts = "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in points)
    return (
        f'<Region Id="{rid}" Type="{kind}" Zoom="0.5" Selected="0" ImageLocation="" ImageFocus="-1" '
        f'Length="0" Area="0" LengthMicrons="0" AreaMicrons="0" Text="" '
        f'NegativeROA="{int(negative)}" InputRegionId="0" Analyze="1" DisplayId="{rid}">'
        f"<Attributes/><Vertices>{verts}</Vertices></Region>"
    )


def _layer(lid: int, name: str, regions: str) -> str:
    return (
        f'<Annotation Id="{lid}" Name="{name}" ReadOnly="0" NameReadOnly="0" '
        f'LineColorReadOnly="0" Incremental="0" Type="4" LineColor="65280" Visible="1" '
        f'Selected="1" MarkupImagePath="" MacroName="">'
        f'<Attributes><Attribute Name="Description" Id="0" Value=""/></Attributes>'
        f"<Regions><RegionAttributeHeaders>"
        f'<AttributeHeader Id="9999" Name="Region" ColumnWidth="-1"/>'
        f"</RegionAttributeHeaders>{regions}</Regions><Plots/></Annotation>"
    )


SQUARE = [(1000.0, 1000.0), (3000.0, 1000.0), (3000.0, 3000.0), (1000.0, 3000.0)]
HOLE = [(1500.0, 1500.0), (2000.0, 1500.0), (2000.0, 2000.0), (1500.0, 2000.0)]
STROMA = [(4000.0, 4000.0), (4500.0, 4000.0), (4500.0, 4500.0)]


def imagescope_xml() -> str:
    """As ImageScope saves it: a tumour layer with a negative region, a second layer,
    an arrow (two vertices) and a freehand region with a closing vertex."""
    tumour = (
        _region(1, SQUARE)
        + _region(2, HOLE, negative=True)
        + _region(3, [(100.0, 100.0), (900.0, 900.0)], kind=3)
        + _region(4, [(5000.5, 100.25), (5100, 100), (5100, 200), (5000, 200), (5000.5, 100.25)])
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Annotations MicronsPerPixel="0.252100">'
        + _layer(1, "Tumor", tumour)
        + _layer(2, "Stroma", _region(1, STROMA))
        + "</Annotations>\n"
    )


def test_reads_layers_and_negative_regions_as_holes(tmp_path: Path) -> None:
    path = tmp_path / "TCGA-XX.xml"
    path.write_text(imagescope_xml())
    s = read_annotations(path, slide_shape=(8000, 8000))
    assert [a.classification for a in s] == [TUMOR, TUMOR, "Stroma"]
    assert any("1 region(s) with fewer than 3 vertices" in w for w in s.warnings)
    expected = Polygon(SQUARE, [HOLE]).union(
        Polygon([(5000.5, 100.25), (5100, 100), (5100, 200), (5000, 200)])
    )
    assert tumour_geometry(s).equals(expected)
    assert s.annotations[0].geometry.equals(Polygon(SQUARE, [HOLE]))  # a hole, not a cut-out class
    assert s.annotations[2].geometry.equals(Polygon(STROMA))  # other layers keep their area
    assert read_aperio_xml(path).union().equals(s.union())


def test_an_ellipse_region_is_the_ellipse_in_its_two_corners(tmp_path: Path) -> None:
    """ImageScope saves an ellipse (Type 2) as two vertices, its bounding box's corners."""
    path = tmp_path / "ellipse.xml"
    ellipse = _region(1, [(3000.0, 1000.0), (1000.0, 2000.0)], kind=2)  # any two opposite corners
    arrow = _region(2, [(100.0, 100.0), (900.0, 900.0)], kind=3)
    path.write_text("<Annotations>" + _layer(1, "Tumor", ellipse + arrow) + "</Annotations>")
    s = read_annotations(path, slide_shape=(8000, 8000))
    assert len(s) == 1 and any("1 region(s) with fewer than 3" in w for w in s.warnings)
    geom = s.annotations[0].geometry
    assert geom.bounds == pytest.approx((1000, 1000, 3000, 2000))
    assert geom.area == pytest.approx(math.pi * 1000 * 500, rel=2e-3)  # not the box's 2e6
    assert geom.contains(Point(2000, 1500)) and not geom.contains(Point(1100, 1100))


def test_unnamed_layer_is_unclassified_and_counts_as_tumour(tmp_path: Path) -> None:
    path = tmp_path / "a.xml"
    path.write_text("<Annotations>" + _layer(1, "", _region(1, SQUARE)) + "</Annotations>")
    s = read_annotations(path)
    assert [a.classification for a in s] == [UNCLASSIFIED]
    assert tumour_geometry(s).equals(box(1000, 1000, 3000, 3000))


BAD = {
    "no_layer": ("<Annotations/>", "contains no <Annotation> layer"),
    "only_arrows": (
        "<Annotations>"
        + _layer(1, "Tumor", _region(1, [(1, 2), (3, 4)], kind=3))
        + "</Annotations>",
        r"no region with an area found in 1 ImageScope layer\(s\) \(1 with fewer than 3",
    ),
    "bad_number": (
        "<Annotations>"
        + _layer(1, "Tumor", _region(1, [(1, 2), (3, 4), ("x", 5)]))
        + "</Annotations>",
        r"layer 1 \(Tumor\) region 1 has a vertex whose X or Y is not a number \(X='x'",
    ),
    "nan": (
        "<Annotations>"
        + _layer(1, "Tumor", _region(1, [(1, 2), (3, 4), ("nan", 5)]))
        + "</Annotations>",
        "has a vertex that is not finite",
    ),
    "broken": ("<Annotations><Annotation>", r"not valid XML \(line 1"),
    "other_xml": (
        "<Foo/>",
        r"not an ASAP or Aperio ImageScope annotation file \(root element <Foo>",
    ),
    "entity": (
        '<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e "x">]><Annotations/>',
        "entities / DTD not allowed",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_imagescope_files_are_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    text, pattern = BAD[case]
    path = tmp_path / f"{case}.xml"
    path.write_text(text)
    with pytest.raises(ProtorefineError, match=pattern) as e:
        read_annotations(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)
    assert path.read_text() == text
