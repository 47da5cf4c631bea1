"""QuPath GeoJSON: the structure we write, and the layouts QuPath and other tools export."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import shapely
from shapely.geometry import LinearRing, MultiPolygon, Polygon, box

from protorefine.annotations import (
    EXCLUDE,
    TUMOR,
    UNCLASSIFIED,
    Annotation,
    AnnotationSet,
    read_geojson,
    tumour_class_name,
    tumour_geometry,
    write_geojson,
)
from protorefine.errors import ProtorefineError

SQUARE = [[[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]]
HOLE_SQUARE = SQUARE + [[[20, 20], [40, 20], [40, 40], [20, 40], [20, 20]]]


def _write_json(tmp_path: Path, obj: object, name: str = "in.geojson") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj, indent=2))
    return p


def test_written_geojson_has_the_structure_qupath_imports(tmp_path: Path) -> None:
    s = AnnotationSet(
        [
            Annotation(
                MultiPolygon([Polygon(SQUARE[0], HOLE_SQUARE[1:]), box(200, 0, 300, 50)]),
                TUMOR,
                name="outline",
            ),
            Annotation(box(10, 60, 30, 80), EXCLUDE),
            Annotation(box(500, 500, 510, 520), UNCLASSIFIED),
        ]
    )
    path = write_geojson(s, tmp_path / "out.geojson")
    doc = json.loads(Path(path).read_text())
    assert doc["type"] == "FeatureCollection"
    assert isinstance(doc["features"], list) and len(doc["features"]) == 3
    ids = set()
    for f in doc["features"]:
        assert f["type"] == "Feature"
        uuid.UUID(f["id"])  # QuPath object ids are UUID strings
        ids.add(f["id"])
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["isLocked"] is False
        rings = f["geometry"]["coordinates"]
        polys = rings if f["geometry"]["type"] == "MultiPolygon" else [rings]
        for poly in polys:
            for ring in poly:
                assert ring[0] == ring[-1] and len(ring) >= 4  # closed linear rings
                assert all(
                    len(pt) == 2 and all(isinstance(v, int | float) for v in pt) for pt in ring
                )
    assert len(ids) == 3
    first, second, third = doc["features"]
    assert first["properties"]["name"] == "outline"
    assert first["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    assert len(first["geometry"]["coordinates"][0]) == 2  # exterior + hole of part 1
    cls = second["properties"]["classification"]
    assert cls["name"] == "Exclusion" and len(cls["color"]) == 3
    assert all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
    assert "classification" not in third["properties"]  # QuPath's "unclassified"


def test_reads_feature_collection_from_qupath_04(tmp_path: Path) -> None:
    fid = str(uuid.uuid4())
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": fid,
                "geometry": {"type": "Polygon", "coordinates": HOLE_SQUARE},
                "properties": {
                    "objectType": "annotation",
                    "name": "T1",
                    "classification": {"name": "Tumor", "color": [10, 20, 30]},
                    "isLocked": True,
                    "measurements": {"Area": 1.0},
                },
            }
        ],
    }
    back = read_geojson(_write_json(tmp_path, doc))
    (a,) = back.annotations
    assert a.classification == TUMOR and a.name == "T1" and a.id == fid
    assert a.geometry.equals(Polygon(HOLE_SQUARE[0], HOLE_SQUARE[1:]))
    assert a.properties["isLocked"] is True and a.properties["measurements"] == {"Area": 1.0}
    # writing it back keeps the colour, lock state and id
    out = json.loads(Path(write_geojson(back, tmp_path / "o.geojson")).read_text())["features"][0]
    assert out["id"] == fid
    assert out["properties"]["classification"]["color"] == [10, 20, 30]
    assert out["properties"]["isLocked"] is True


def test_reads_qupath_02_list_export_with_colorrgb(tmp_path: Path) -> None:
    doc = [
        {
            "type": "Feature",
            "id": "PathAnnotationObject",
            "geometry": {"type": "Polygon", "coordinates": SQUARE},
            "properties": {
                "classification": {"name": "Tumor", "colorRGB": -3670016},
                "isLocked": False,
                "measurements": [],
            },
        },
        {
            "type": "Feature",
            "id": "PathAnnotationObject",
            "geometry": {
                "type": "Polygon",
                "coordinates": [[[200, 0], [300, 0], [300, 50], [200, 0]]],
            },
            "properties": {"isLocked": False, "measurements": []},
        },
    ]
    back = read_geojson(_write_json(tmp_path, doc, "old.json"))
    assert [a.classification for a in back] == [TUMOR, UNCLASSIFIED]
    assert back.annotations[0].properties["class_color"] == [200, 0, 0]
    assert back.annotations[0].id is None  # "PathAnnotationObject" is not an object id
    assert tumour_geometry(back).area == pytest.approx(10000 + 2500)


@pytest.mark.parametrize(
    "obj",
    [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": SQUARE},
            "properties": {"classification": "Tumor"},
        },
        {"type": "Polygon", "coordinates": SQUARE},
        [{"type": "Polygon", "coordinates": SQUARE}],
        {
            "type": "GeometryCollection",
            "geometries": [
                {"type": "Polygon", "coordinates": SQUARE},
                {"type": "Point", "coordinates": [5, 5]},
            ],
        },
        {
            "features": [
                {
                    "type": "Feature",
                    "geometry": {"type": "MultiPolygon", "coordinates": [SQUARE]},
                    "properties": {"classification": {"names": ["Tumor", "Positive"]}},
                }
            ]
        },
    ],
    ids=[
        "feature-string-class",
        "bare-geometry",
        "list-of-geometries",
        "geometry-collection",
        "collection-no-type-derived-class",
    ],
)
def test_reads_other_layouts(tmp_path: Path, obj: object) -> None:
    back = read_geojson(_write_json(tmp_path, obj))
    assert len(back) == 1
    assert tumour_geometry(back).equals(box(0, 0, 100, 100))


def test_detections_and_lines_are_skipped_with_warnings(tmp_path: Path) -> None:
    doc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": SQUARE},
                "properties": {"objectType": "annotation"},
            },
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": SQUARE},
                "properties": {"objectType": "cell"},
            },
            {
                "type": "Feature",
                "geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]},
                "properties": {},
            },
        ],
    }
    back = read_geojson(_write_json(tmp_path, doc))
    assert len(back) == 1
    text = " ".join(back.warnings)
    assert "1 cell object(s)" in text and "1 LineString" in text


@pytest.mark.parametrize(
    ("classes", "expected"),
    [
        ([("Metastasis", 100), ("Tumor", 10)], "Metastasis"),  # the largest tumour annotation's
        ([("Stroma", 400), ("Tumor: Positive", 100)], "Tumor: Positive"),  # QuPath sub-class kept
        ([("_0", 100), ("_2", 900)], "_0"),  # CAMELYON's ASAP group
        ([(UNCLASSIFIED, 100)], TUMOR),  # nothing to keep
        ([], TUMOR),
    ],
)
def test_refined_outline_keeps_the_users_tumour_class(classes, expected) -> None:
    annset = AnnotationSet([Annotation(box(0, 0, side, side), name) for name, side in classes])
    assert tumour_class_name(annset) == expected


def _tumour_feature(coords: list, *, fid: str | None = None, **props: object) -> dict:
    feat: dict = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": coords},
        "properties": {"classification": {"name": "Tumor", "colorRGB": -3670016}, **props},
    }
    if fid is not None:
        feat["id"] = fid
    return feat


FAR = [[[500, 500], [600, 500], [600, 600], [500, 600], [500, 500]]]


def test_qupath_02_detections_and_cells_are_left_out_and_named(tmp_path: Path) -> None:
    """QuPath 0.2 lists say what an object is only in ``id``: a Tumor detection or cell is
    not part of the outline."""
    doc = [
        _tumour_feature(SQUARE, fid="PathAnnotationObject"),
        _tumour_feature(FAR, fid="PathDetectionObject"),
        _tumour_feature(FAR, fid="PathCellObject"),
        _tumour_feature(FAR, fid="PathCellObject"),
        _tumour_feature(FAR, fid="PathTileObject"),
    ]
    back = read_geojson(_write_json(tmp_path, doc, "qupath02.json"))
    assert tumour_geometry(back).equals(box(0, 0, 100, 100))
    text = " ".join(back.warnings)
    assert "qupath02.json: ignored 1 detection, 2 cell, 1 tile object(s)" in text


def test_qupath_03_object_type_detections_and_cells_are_left_out_and_named(tmp_path: Path) -> None:
    """QuPath 0.3 wrote ``properties.object_type``; 0.4+ ``objectType``."""
    doc = {
        "type": "FeatureCollection",
        "features": [
            _tumour_feature(SQUARE, fid=str(uuid.uuid4()), object_type="annotation"),
            _tumour_feature(FAR, fid=str(uuid.uuid4()), object_type="detection"),
            _tumour_feature(FAR, fid=str(uuid.uuid4()), object_type="cell"),
            _tumour_feature(FAR, fid=str(uuid.uuid4()), object_type="tile"),
        ],
    }
    back = read_geojson(_write_json(tmp_path, doc, "qupath03.geojson"))
    assert len(back) == 1 and tumour_geometry(back).equals(box(0, 0, 100, 100))
    text = " ".join(back.warnings)
    assert "qupath03.geojson: ignored 1 detection, 1 cell, 1 tile object(s)" in text
    # only detections: no outline at all, said as such
    doc["features"] = doc["features"][1:]
    with pytest.raises(ProtorefineError, match="no Polygon or MultiPolygon annotation found"):
        read_geojson(_write_json(tmp_path, doc, "cells.geojson"))


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_coordinates_are_refused_naming_file_and_feature(
    tmp_path: Path, bad: str
) -> None:
    good = '{"type":"Feature","geometry":{"type":"Polygon","coordinates":[[[0,0],[50,0],[50,50],[0,0]]]},"properties":{"name":"ok"}}'
    poisoned = (
        '{"type":"Feature","geometry":{"type":"Polygon","coordinates":'
        f'[[[0,0],[{bad},10],[10,10],[0,0]]]}},"properties":{{"name":"bad one"}}}}'
    )
    p = tmp_path / "nan.geojson"
    p.write_text('{"type":"FeatureCollection","features":[' + good + "," + poisoned + "]}")
    with pytest.raises(ProtorefineError) as info:
        read_geojson(p)
    msg = str(info.value)
    assert str(p) in msg and "annotation 2" in msg and "'bad one'" in msg
    assert "not finite" in msg and "\n" not in msg


@pytest.mark.parametrize("reverse", [False, True])
def test_rings_follow_rfc_7946_winding_as_a_geojson_consumer_reads_them(
    tmp_path: Path, reverse: bool
) -> None:
    """Exteriors counter-clockwise and holes clockwise in the written numbers (RFC 7946
    3.1.6), whatever winding the annotation had; on screen (y down) exteriors run clockwise."""
    outer = [(0, 0), (100, 0), (100, 100), (0, 100)]
    hole = [(10, 10), (10, 20), (20, 20), (20, 10)]
    poly = Polygon(outer[::-1] if reverse else outer, [hole[::-1] if reverse else hole])
    multi = MultiPolygon([poly, Polygon([(200, 0), (200, 50), (250, 50)])])
    path = tmp_path / "w.geojson"
    write_geojson(AnnotationSet([Annotation(poly, TUMOR), Annotation(multi, TUMOR)]), path)
    feats = json.loads(path.read_text())["features"]
    polygons = [feats[0]["geometry"]["coordinates"], *feats[1]["geometry"]["coordinates"]]
    for rings in polygons:
        assert shapely.is_ccw(LinearRing(rings[0]))
        assert not any(shapely.is_ccw(LinearRing(r)) for r in rings[1:])
    assert read_geojson(path).union().equals(poly.union(multi))
