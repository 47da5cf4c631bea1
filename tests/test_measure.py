"""Tumour measurements: regions, area and greatest dimension of an outline, in µm or pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from shapely.geometry import Point, Polygon, box

from protorefine.annotations import Annotation, AnnotationSet, read_geojson, write_geojson
from protorefine.measure import (
    feret_diameter,
    measure,
    outline_changes,
    prototype_makeup,
    with_measurements,
)
from protorefine.project import Project
from protorefine.slides import convert_to_ome_zarr
from protorefine.slides.base import Slide


def test_feret_diameter_of_simple_shapes():
    assert feret_diameter(box(0, 0, 300, 400)) == pytest.approx(500.0)  # the diagonal
    assert feret_diameter(Point(0, 0).buffer(100, 256)) == pytest.approx(200.0, rel=1e-4)
    assert feret_diameter(Polygon()) == 0.0


def test_regions_areas_and_units():
    outline = AnnotationSet(
        [
            Annotation(box(0, 0, 2000, 1000)),  # 2000 x 1000 px, a 600 x 600 px hole cut below
            Annotation(box(200, 200, 800, 800), classification="Exclusion"),
            Annotation(box(5000, 5000, 5400, 5300)),  # a satellite, 400 x 300 px
            Annotation(box(1900, 0, 2100, 1000)),  # overlaps the first: one region with it
            Annotation(box(9000, 9000, 9900, 9900), classification="Stroma"),  # not tumour
        ]
    )
    m = measure(outline, 0.5)
    assert m.unit == "µm" and len(m.regions) == 2
    big, small = m.regions
    assert big.area == pytest.approx((2100 * 1000 - 600 * 600) * 0.25)
    assert big.diameter == pytest.approx(np.hypot(2100, 1000) * 0.5)
    assert small.area == pytest.approx(400 * 300 * 0.25) and small.centre == (5200, 5150)
    assert m.area == pytest.approx(big.area + small.area)
    assert m.summary() == "2 regions, 0.465 mm², largest 1.16 mm across"
    d = m.as_dict()
    assert d["regions"] == 2 and d["area_um2"] == pytest.approx(m.area)
    assert d["region_areas_um2"] == pytest.approx([big.area, small.area])

    px = measure(outline, None)  # no microns per pixel: figures stay in pixels and say so
    assert px.unit == "px" and px.area == pytest.approx(m.area * 4)
    assert px.summary() == "2 regions, 1,860,000 px², largest 2,326 px across"
    assert measure(AnnotationSet(), 0.25).summary() == "no tumour region"


@pytest.mark.parametrize(
    "size, mpp, said",
    [
        ((100, 50), 0.25, "1 region, 312 µm², largest 28 µm across"),  # 25 x 12.5 µm
        ((1000, 90), 0.5, "1 region, 0.0225 mm², largest 502 µm across"),
        ((6000, 5000), 1.0, "1 region, 30.0 mm², largest 7.81 mm across"),
        ((30000, 20000), 0.5, "1 region, 150 mm², largest 18.0 mm across"),
    ],
)
def test_figures_read_as_a_pathologist_writes_them(size, mpp, said):
    assert measure(box(0, 0, *size), mpp).summary() == said


def test_geojson_measurements_round_trip_for_qupath(tmp_path):
    outline = AnnotationSet([Annotation(box(0, 0, 400, 200)), Annotation(box(1000, 0, 1100, 100))])
    path = write_geojson(with_measurements(outline, 0.25), tmp_path / "m.geojson")
    raw = json.loads(path.read_text())
    got = [
        {m["name"]: m["value"] for m in f["properties"]["measurements"]} for f in raw["features"]
    ]
    assert got == [
        {"Area µm^2": 5000.0, "Max diameter µm": pytest.approx(np.hypot(400, 200) / 4, abs=1e-3)},
        {"Area µm^2": 625.0, "Max diameter µm": pytest.approx(np.hypot(100, 100) / 4, abs=1e-3)},
    ]
    assert len(read_geojson(path)) == 2  # still reads back as the same outline
    assert "measurements" not in outline.annotations[0].properties  # the input is left alone


def test_project_measures_coarse_outline_in_microns(tmp_path):
    image = np.full((512, 512, 3), 230, np.uint8)
    image[100:400, 100:400] = (150, 60, 140)
    slide = convert_to_ome_zarr(Slide.from_array(image, name="s", mpp=0.5), tmp_path / "s.zarr")
    project = Project.create(tmp_path / "proj")
    entry = project.add_slide(slide)
    project.set_coarse(entry.id, AnnotationSet([Annotation(box(100, 100, 300, 300))]))
    m = project.measurements(entry.id)
    assert list(m) == ["coarse"]  # nothing refined yet
    assert m["coarse"].area == pytest.approx(200 * 200 * 0.25)


def test_changes_against_the_coarse_outline_largest_first():
    coarse = AnnotationSet([Annotation(box(0, 0, 1000, 1000))])
    refined = AnnotationSet(
        [
            Annotation(box(0, 0, 1000, 600)),  # the lower 400 px band removed
            Annotation(box(200, 700, 300, 800), classification="Exclusion"),  # nothing there
            Annotation(box(1000, 0, 1200, 200)),  # added beside it
            Annotation(box(1000, 900, 1005, 905)),  # a speck: under 1 % of the coarse area
        ]
    )
    changes = outline_changes(coarse, refined, 0.5)
    assert [(c.kind, c.area) for c in changes] == [
        ("removed", 400_000 * 0.25),
        ("added", 40_000 * 0.25),
    ]
    assert changes[0].bounds == (0, 600, 1000, 1000) and changes[0].centre == (500, 800)
    assert changes[1].centre == (1100, 100)
    assert outline_changes(coarse, coarse, 0.5) == []
    assert len(outline_changes(coarse, refined, None, min_share=0)) == 3
    assert outline_changes(coarse, refined, None, limit=1)[0].area == 400_000


def test_prototype_makeup_of_a_part():
    ids = np.full((4, 6), -1)  # 4 x 6 cells of 100 px; -1: no tissue
    ids[:, :3] = 7
    ids[:, 3:5] = 2
    ids[0, 0] = 5
    # the left half of the grid: 11 cells of prototype 7 and 1 of prototype 5
    assert prototype_makeup(box(0, 0, 300, 400), 100, ids) == [(7, 11 / 12), (5, 1 / 12)]
    # over the prototype 2 cells and the glass beside them: glass does not count
    assert prototype_makeup(box(300, 0, 600, 400), 100, ids, top=3) == [(2, 1.0)]
    # a part smaller than a cell: the cell under it
    assert prototype_makeup(box(410, 210, 420, 220), 100, ids) == [(2, 1.0)]
    assert prototype_makeup(box(510, 10, 520, 20), 100, ids) == []  # on glass
    assert prototype_makeup(Polygon(), 100, ids) == []
