"""ASAP XML as CAMELYON16 ships it: groups _0/_1/_2, Tumor/Exclusion, splines, rectangles, dots."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from shapely.geometry import Polygon, box

from protorefine.annotations import (
    EXCLUDE,
    TUMOR,
    Annotation,
    AnnotationSet,
    read_annotations,
    read_asap_xml,
    tumour_geometry,
    write_asap_xml,
    write_geojson,
)
from protorefine.errors import ProtorefineError


def _coords(points: list[tuple[float, float]], comma: bool = False) -> str:
    out = []
    for i, (x, y) in enumerate(points):
        xs, ys = (
            (str(x).replace(".", ",") if comma else str(x)),
            (str(y).replace(".", ",") if comma else str(y)),
        )
        out.append(f'<Coordinate Order="{i}" X="{xs}" Y="{ys}" />')
    return "<Coordinates>" + "".join(out) + "</Coordinates>"


def camelyon_xml(outer_group: str = "_0", hole_group: str = "_2") -> str:
    """A CAMELYON16-style file: two tumour outlines, an exclusion inside one, a spline, a dot."""
    outer = [(1000.5, 1000.25), (3000.0, 1000.0), (3000.0, 3000.0), (1000.0, 3000.0)]
    hole = [(1500.0, 1500.0), (2000.0, 1500.0), (2000.0, 2000.0), (1500.0, 2000.0)]
    second = [(4000.0, 4000.0), (4500.0, 4000.0), (4250.0, 4600.0)]
    return f"""<?xml version="1.0"?>
<ASAP_Annotations>
	<Annotations>
		<Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="{outer_group}" Color="#F4FA58">{_coords(outer)}</Annotation>
		<Annotation Name="Annotation 1" Type="Polygon" PartOfGroup="{hole_group}" Color="#64FE2E">{_coords(list(reversed(hole)))}</Annotation>
		<Annotation Name="Annotation 2" Type="Spline" PartOfGroup="_1" Color="#F4FA58">{_coords(second, comma=True)}</Annotation>
		<Annotation Name="Annotation 3" Type="Dot" PartOfGroup="_1" Color="#F4FA58">{_coords([(10.0, 10.0)])}</Annotation>
		<Annotation Name="Annotation 4" Type="Rectangle" PartOfGroup="_1" Color="#F4FA58">{_coords([(5000.0, 100.0), (5100.0, 100.0), (5100.0, 200.0), (5000.0, 200.0)])}</Annotation>
	</Annotations>
	<AnnotationGroups>
		<Group Name="_0" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>
		<Group Name="_1" PartOfGroup="None" Color="#FF0000"><Attributes /></Group>
		<Group Name="_2" PartOfGroup="None" Color="#00FF00"><Attributes /></Group>
	</AnnotationGroups>
</ASAP_Annotations>
"""


@pytest.mark.parametrize(
    ("outer", "hole"), [("_0", "_2"), ("Tumor", "Exclusion"), ("metastases", "_2")]
)
def test_reads_camelyon16_groups(tmp_path: Path, outer: str, hole: str) -> None:
    path = tmp_path / "tumor_001.xml"
    path.write_text(camelyon_xml(outer, hole))
    s = read_asap_xml(path)
    assert [a.classification for a in s] == [TUMOR, EXCLUDE, TUMOR, TUMOR]
    assert [a.name for a in s] == ["Annotation 0", "Annotation 1", "Annotation 2", "Annotation 4"]
    assert any("1 Dot" in w for w in s.warnings)
    outer_poly = Polygon([(1000.5, 1000.25), (3000, 1000), (3000, 3000), (1000, 3000)])
    expected = (
        outer_poly.difference(box(1500, 1500, 2000, 2000))
        .union(Polygon([(4000, 4000), (4500, 4000), (4250, 4600)]))  # decimal commas read
        .union(box(5000, 100, 5100, 200))
    )
    assert tumour_geometry(s).equals(expected)


def test_round_trip_keeps_groups_and_exclusion(tmp_path: Path) -> None:
    src = tmp_path / "in.xml"
    src.write_text(camelyon_xml())
    s = read_asap_xml(src)
    out = write_asap_xml(s, tmp_path / "out.xml")
    root = ET.parse(out).getroot()
    assert root.tag == "ASAP_Annotations"
    ann = root.find("Annotations").findall("Annotation")
    assert [a.get("PartOfGroup") for a in ann] == ["_0", "_2", "_1", "_1"]
    assert all(a.get("Type") == "Polygon" and a.get("Color", "").startswith("#") for a in ann)
    first = [(float(c.get("X")), float(c.get("Y"))) for c in ann[0].iter("Coordinate")]
    assert first[0] == (1000.5, 1000.25) and len(first) == 4  # ring not closed, as ASAP writes
    assert [c.get("Order") for c in ann[0].iter("Coordinate")] == ["0", "1", "2", "3"]
    groups = [g.get("Name") for g in root.find("AnnotationGroups").findall("Group")]
    assert set(groups) == {"_0", "_1", "_2"}
    back = read_asap_xml(out)
    assert [a.classification for a in back] == [a.classification for a in s]
    assert tumour_geometry(back).equals(tumour_geometry(s))


def test_holes_are_written_as_exclusion_polygons(tmp_path: Path) -> None:
    poly = Polygon(
        [(0, 0), (100, 0), (100, 100), (0, 100)], [[(10, 10), (20, 10), (20, 20), (10, 20)]]
    )
    out = write_asap_xml(AnnotationSet([Annotation(poly, TUMOR)]), tmp_path / "h.xml")
    root = ET.parse(out).getroot()
    groups = [a.get("PartOfGroup") for a in root.iter("Annotation")]
    assert groups == ["Tumor", "Exclusion"]
    assert tumour_geometry(read_asap_xml(out)).equals(poly)


def test_asap_to_geojson_conversion_keeps_region(tmp_path: Path) -> None:
    src = tmp_path / "in.xml"
    src.write_text(camelyon_xml())
    s = read_annotations(src)
    out = write_geojson(s, tmp_path / "out.geojson")
    doc = json.loads(Path(out).read_text())
    assert all("asap_group" not in f["properties"] for f in doc["features"])
    assert tumour_geometry(read_annotations(out)).equals(tumour_geometry(s))


_XXE = """<?xml version="1.0"?>
<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ASAP_Annotations><Annotations><Annotation Name="&xxe;" Type="Polygon" PartOfGroup="Tumor">
<Coordinates><Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="10" Y="0"/>
<Coordinate Order="2" X="10" Y="10"/></Coordinates></Annotation></Annotations>
</ASAP_Annotations>"""
_BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
        for i in range(1, 10)
    )
    + ']>\n<ASAP_Annotations><Annotations Name="&lol9;"/></ASAP_Annotations>'
)


@pytest.mark.parametrize("text", [_XXE, _BOMB], ids=["xxe", "entity-bomb"])
def test_entities_and_dtds_are_refused_by_name(tmp_path: Path, text: str) -> None:
    """XXE and entity bombs: refused, saying so (not just "not valid XML")."""
    path = tmp_path / "evil.xml"
    path.write_text(text)
    with pytest.raises(ProtorefineError) as info:
        read_asap_xml(path)
    msg = str(info.value)
    assert str(path) in msg and "entities / DTD not allowed" in msg and "\n" not in msg


def test_holes_keep_the_camelyon_numbered_groups(tmp_path: Path) -> None:
    """An outline read from CAMELYON16's ``_0`` writes its holes in ``_2``, not ``Exclusion``."""
    src = tmp_path / "in.xml"
    src.write_text(camelyon_xml())
    s = read_asap_xml(src)
    merged = AnnotationSet([Annotation(tumour_geometry(s), TUMOR, properties={"asap_group": "_0"})])
    root = ET.parse(write_asap_xml(merged, tmp_path / "out.xml")).getroot()
    groups = [a.get("PartOfGroup") for a in root.iter("Annotation")]
    assert "_2" in groups and set(groups) == {"_0", "_2"}
    assert tumour_geometry(read_asap_xml(tmp_path / "out.xml")).equals(tumour_geometry(s))


def test_refined_outline_export_keeps_the_coarse_files_groups(tmp_path: Path) -> None:
    """A project whose coarse outline came from a CAMELYON16 file exports its refined outline
    (no groups of its own) as ``_0`` with holes in ``_2``."""
    from protorefine.annotations.asap import with_groups_of
    from protorefine.annotations.geojson import read_geojson

    src = tmp_path / "in.xml"
    src.write_text(camelyon_xml())
    stored = tmp_path / "coarse.geojson"
    write_geojson(read_asap_xml(src), stored, keep_asap_group=True)  # as Project.set_coarse
    coarse = read_geojson(stored)
    refined = AnnotationSet(
        [
            Annotation(box(0, 0, 100, 100).difference(box(10, 10, 20, 20)), TUMOR),
            Annotation(box(200, 200, 300, 300), EXCLUDE),
        ]
    )
    root = ET.parse(write_asap_xml(with_groups_of(refined, coarse), tmp_path / "o.xml")).getroot()
    assert [a.get("PartOfGroup") for a in root.iter("Annotation")] == [
        "_1",
        "_2",
        "_2",
    ]  # most used
    plain = AnnotationSet([Annotation(box(0, 0, 9, 9), TUMOR)])  # a QuPath input keeps Tumor
    root = ET.parse(write_asap_xml(with_groups_of(plain, None), tmp_path / "p.xml")).getroot()
    assert [a.get("PartOfGroup") for a in root.iter("Annotation")] == ["Tumor"]
    write_geojson(coarse, tmp_path / "q.geojson")  # a GeoJSON export does not carry the group
    assert "asap_group" not in (tmp_path / "q.geojson").read_text()
