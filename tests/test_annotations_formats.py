"""Round trips through every file format, and every kind of bad input, via read_annotations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Polygon, box

from protorefine.annotations import (
    EXCLUDE,
    TUMOR,
    Annotation,
    AnnotationSet,
    rasterize,
    read_annotations,
    tumour_geometry,
    write_annotations,
    write_geojson,
    write_mask,
)
from protorefine.errors import ProtorefineError

SLIDE = (1000, 1200)  # (H, W) level-0


def sample_set() -> AnnotationSet:
    """Tumour MultiPolygon with holes, a separate tumour triangle and an exclusion inside."""
    ring = Polygon(
        [(100, 100), (600, 120), (640, 500), (120, 560)],
        [[(200, 200), (300, 200), (300, 300), (200, 300)], [(400, 350), (500, 350), (450, 450)]],
    )
    island = Polygon([(800, 600), (1100, 650), (900, 950)])
    return AnnotationSet(
        [
            Annotation(MultiPolygon([ring, island]), TUMOR, name="coarse"),
            Annotation(box(850, 700, 900, 750), EXCLUDE, name="benign duct"),
        ]
    )


@pytest.mark.parametrize("suffix", [".geojson", ".json", ".xml"])
def test_vector_round_trip_keeps_tumour_region(tmp_path: Path, suffix: str) -> None:
    s = sample_set()
    path = write_annotations(s, tmp_path / f"a{suffix}")
    back = read_annotations(path, slide_shape=SLIDE)
    assert back.warnings == []
    assert tumour_geometry(back).equals(tumour_geometry(s))
    assert set(back.classes()) == {TUMOR, EXCLUDE}


def test_geojson_round_trip_is_exact_per_annotation(tmp_path: Path) -> None:
    s = sample_set()
    write_geojson(s, tmp_path / "a.geojson")
    back = read_annotations(tmp_path / "a.geojson")
    assert [a.classification for a in back] == [a.classification for a in s]
    assert [a.name for a in back] == [a.name for a in s]
    for a, b in zip(s, back, strict=True):
        assert b.geometry.equals(a.geometry)
        assert type(b.geometry) is type(a.geometry)
    # the MultiPolygon keeps both holes of its first part
    assert len(back.annotations[0].geometry.geoms[0].interiors) == 2
    # ids are stable across a second write
    write_geojson(back, tmp_path / "b.geojson")
    assert [a.id for a in read_annotations(tmp_path / "b.geojson")] == [a.id for a in back]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("downsample", [1, 4, 16])
def test_mask_round_trip_at_downsamples(tmp_path: Path, suffix: str, downsample: int) -> None:
    s = sample_set()
    path = tmp_path / f"mask{suffix}"
    write_mask(s, path, SLIDE, downsample)
    expected = rasterize(s, SLIDE, downsample)
    assert expected.shape == (int(np.ceil(1000 / downsample)), int(np.ceil(1200 / downsample)))
    for slide_shape in (SLIDE, None):  # inferred from size, or from the file's own metadata
        back = read_annotations(path, slide_shape=slide_shape)
        np.testing.assert_array_equal(rasterize(back, SLIDE, downsample), expected)
        # level-0 region agrees with the vector original up to the pixel size
        diff = tumour_geometry(back).symmetric_difference(tumour_geometry(s)).area
        assert diff < tumour_geometry(s).length * downsample
    assert any(
        f"downsample {downsample}" in w for w in read_annotations(path, slide_shape=SLIDE).warnings
    )


def test_foreign_mask_downsample_inferred_from_slide_shape(tmp_path: Path) -> None:
    from PIL import Image

    m = np.zeros((63, 75), np.uint8)  # ceil(1000/16), ceil(1200/16)
    m[10:30, 20:50] = 255
    Image.fromarray(m).save(tmp_path / "ext.png")
    back = read_annotations(tmp_path / "ext.png", slide_shape=SLIDE)
    assert tumour_geometry(back).equals(box(320, 160, 800, 480))
    assert any("downsample 16" in w for w in back.warnings)
    # without a slide shape a foreign mask is level 0, and the warning says so
    lvl0 = read_annotations(tmp_path / "ext.png")
    assert tumour_geometry(lvl0).equals(box(20, 10, 50, 30))
    assert any("downsample 1" in w for w in lvl0.warnings)


def test_mask_with_wrong_aspect_ratio_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    m = np.zeros((100, 100), np.uint8)
    m[10:20, 10:20] = 255
    Image.fromarray(m).save(tmp_path / "square.png")
    with pytest.raises(ProtorefineError, match="aspect ratio") as e:
        read_annotations(tmp_path / "square.png", slide_shape=SLIDE)
    assert "square.png" in str(e.value) and "\n" not in str(e.value)


def test_real_camelyon_mask_reads_exactly(shared_data: Path) -> None:
    masks = sorted((shared_data / "camelyon-tiles" / "masks").glob("*.png"))
    from PIL import Image

    tested = 0
    for path in masks[:8]:
        truth = np.asarray(Image.open(path).convert("L")) > 0
        if not truth.any():
            continue
        back = read_annotations(path, slide_shape=truth.shape)
        np.testing.assert_array_equal(rasterize(back, truth.shape, 1), truth)
        assert all(a.geometry.is_valid for a in back)
        tested += 1
    assert tested >= 3


def test_writers_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "keep.geojson"
    target.write_text("previous content")
    import protorefine.annotations.geojson as gj

    def boom(annset: AnnotationSet) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(gj, "to_geojson_text", boom)
    with pytest.raises(RuntimeError):
        write_geojson(sample_set(), target)
    assert target.read_text() == "previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.geojson"]


def test_mask_writer_refuses_jpeg_and_needs_shape(tmp_path: Path) -> None:
    with pytest.raises(ProtorefineError, match="JPEG"):
        write_mask(sample_set(), tmp_path / "m.jpg", SLIDE, 4)
    with pytest.raises(ProtorefineError, match="slide shape"):
        write_annotations(sample_set(), tmp_path / "m.png")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- bad input


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(content.encode() if isinstance(content, str) else content)
    return p


def _feature(coords: list, **props: object) -> dict:
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": coords},
        "properties": props,
    }


BAD_INPUTS = {
    "missing": (None, "file not found"),
    "not_json": (
        '{"type": "FeatureCollection",\n  "features": [}',
        r"not valid JSON .*line 2, column",
    ),
    "empty_file": ("", "empty file"),
    "no_polygons": (
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Point", "coordinates": [1, 2]},
                        "properties": {},
                    }
                ],
            }
        ),
        "no Polygon or MultiPolygon.*1 Point",
    ),
    "no_features": (json.dumps({"type": "FeatureCollection", "features": []}), "no features"),
    "not_geojson": (json.dumps({"hello": 1}), "not GeoJSON"),
    "zero_area": (
        json.dumps(_feature([[[0, 0], [10, 0], [20, 0], [0, 0]]])),
        "no polygon annotation",
    ),
    "outside": (
        json.dumps(_feature([[[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]]])),
        "entirely outside the 1200x1000 slide",
    ),
    "not_xml": ("<ASAP_Annotations><Annotations>", r"not valid XML \(line 1"),
    "not_asap": (
        '<?xml version="1.0"?><Regions><Annotation/></Regions>',
        "not an ASAP or Aperio ImageScope annotation file",
    ),
    "asap_empty": ("<ASAP_Annotations><Annotations/></ASAP_Annotations>", "no <Annotation>"),
    "asap_dots_only": (
        '<ASAP_Annotations><Annotations><Annotation Name="d" Type="Dot" PartOfGroup="_0"><Coordinates>'
        '<Coordinate Order="0" X="1" Y="2"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
        "no polygon annotation found.*Dot",
    ),
    "asap_bad_number": (
        '<ASAP_Annotations><Annotations><Annotation Name="a" Type="Polygon" PartOfGroup="_0"><Coordinates>'
        '<Coordinate Order="0" X="x" Y="2"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
        "not a number",
    ),
    "not_an_image": ("this is not a png", "cannot read as a PNG mask"),
    "wrong_extension": ("x", "unsupported annotation extension '.txt'"),
}
SUFFIX = {
    "not_xml": ".xml",
    "not_asap": ".xml",
    "asap_empty": ".xml",
    "asap_dots_only": ".xml",
    "asap_bad_number": ".xml",
    "not_an_image": ".png",
    "wrong_extension": ".txt",
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_naming_the_file(tmp_path: Path, case: str) -> None:
    content, pattern = BAD_INPUTS[case]
    name = f"{case}{SUFFIX.get(case, '.geojson')}"
    path = tmp_path / name if content is None else _write(tmp_path, name, content)
    with pytest.raises(ProtorefineError, match=pattern) as e:
        read_annotations(path, slide_shape=SLIDE)
    msg = str(e.value)
    assert name in msg and "\n" not in msg


def test_empty_mask_is_an_error(tmp_path: Path) -> None:
    write_mask(np.zeros((63, 75), bool), tmp_path / "empty.png", SLIDE, 16)
    with pytest.raises(ProtorefineError, match="empty.png: mask has no tumour pixels"):
        read_annotations(tmp_path / "empty.png", slide_shape=SLIDE)


@pytest.mark.parametrize("fmt", ["geojson", "xml"])
def test_self_intersecting_polygon_is_repaired_with_warning(tmp_path: Path, fmt: str) -> None:
    bowtie = [(0, 0), (100, 100), (100, 0), (0, 100)]
    if fmt == "geojson":
        path = _write(
            tmp_path, "bow.geojson", json.dumps(_feature([[list(p) for p in bowtie + bowtie[:1]]]))
        )
    else:
        coords = "".join(
            f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(bowtie)
        )
        xml = f'<ASAP_Annotations><Annotations><Annotation Name="b" Type="Polygon" PartOfGroup="_0"><Coordinates>{coords}</Coordinates></Annotation></Annotations></ASAP_Annotations>'
        path = _write(tmp_path, "bow.xml", xml)
    back = read_annotations(path)
    assert any("repaired 1 self-intersecting polygon(s)" in w for w in back.warnings)
    g = tumour_geometry(back)
    assert g.is_valid and g.area == pytest.approx(5000)


@pytest.mark.parametrize("fmt", ["geojson", "xml"])
def test_partly_outside_is_clipped_with_warning(tmp_path: Path, fmt: str) -> None:
    s = AnnotationSet(
        [Annotation(box(1100, 900, 1300, 1100), TUMOR), Annotation(box(10, 10, 50, 50), TUMOR)]
    )
    path = write_annotations(s, tmp_path / f"edge.{fmt}")
    back = read_annotations(path, slide_shape=SLIDE)
    assert any(
        "clipped 1 annotation(s) partly outside the 1200x1000 slide" in w for w in back.warnings
    )
    assert tumour_geometry(back).equals(box(1100, 900, 1200, 1000).union(box(10, 10, 50, 50)))
    # without a slide shape nothing is clipped
    assert read_annotations(path).warnings == []


@pytest.mark.parametrize("fmt", ["geojson", "xml"])
def test_classes_neither_tumour_nor_exclusion_are_named_as_not_used(tmp_path: Path, fmt) -> None:
    """A QuPath outline with Necrosis and Stroma beside Tumor: the tumour region is the
    Tumor polygons, and the user is told which classes were not used and how to use them."""
    s = AnnotationSet(
        [
            Annotation(box(100, 100, 600, 600), TUMOR),
            Annotation(box(200, 200, 300, 300), "Necrosis"),
            Annotation(box(700, 700, 800, 800), "Stroma"),
            Annotation(box(650, 100, 700, 150), "Stroma"),
        ]
    )
    path = write_annotations(s, tmp_path / f"mixed.{fmt}")
    back = read_annotations(path, slide_shape=SLIDE)
    assert tumour_geometry(back).equals(box(100, 100, 600, 600))
    assert back.warnings == [
        f"{path}: not used, as neither tumour nor exclusion: 'Necrosis' (1), 'Stroma' (2); "
        "name the class Tumor (or Exclusion, for a hole) to use it"
    ]
    # no tumour class at all: the other classes are the outline, and the note says so
    alone = write_annotations(AnnotationSet(s.annotations[1:]), tmp_path / f"alone.{fmt}")
    back = read_annotations(alone, slide_shape=SLIDE)
    assert tumour_geometry(back).area == pytest.approx(100 * 100 * 2 + 50 * 50)
    assert back.warnings == [
        f"{alone}: no tumour class, so 'Necrosis' (1), 'Stroma' (2) make the tumour outline"
    ]


def test_jpeg_mask_is_thresholded_at_half(tmp_path: Path) -> None:
    from PIL import Image

    m = np.zeros((63, 75), np.uint8)
    m[10:40, 20:60] = 255
    Image.fromarray(m).save(tmp_path / "lossy.jpg", quality=70)
    assert (np.asarray(Image.open(tmp_path / "lossy.jpg")) != m).any()  # really lossy
    back = read_annotations(tmp_path / "lossy.jpg", slide_shape=SLIDE)
    np.testing.assert_array_equal(rasterize(back, SLIDE, 16), m > 0)


@pytest.mark.parametrize("suffix", [".geojson", ".xml", ".png"])
def test_empty_set_round_trips_only_when_allowed(tmp_path: Path, suffix: str) -> None:
    path = write_annotations(AnnotationSet(), tmp_path / f"none{suffix}", slide_shape=SLIDE)
    with pytest.raises(ProtorefineError, match="empty annotation|no tumour pixels"):
        read_annotations(path, slide_shape=SLIDE)
    back = read_annotations(path, slide_shape=SLIDE, allow_empty=True)
    assert len(back) == 0 and tumour_geometry(back).is_empty


def test_feature_with_empty_coordinates_is_named_in_the_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "hollow.geojson", json.dumps(_feature([])))
    with pytest.raises(ProtorefineError, match="hollow.geojson: no Polygon.*1 empty Polygon"):
        read_annotations(path)
