"""napari Shapes data <-> annotations: (y, x) order, layer scale, shape types, holes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from shapely.geometry import MultiPolygon, Polygon, box

from protorefine.annotations import (
    EXCLUDE,
    NORMAL,
    TUMOR,
    Annotation,
    AnnotationSet,
    annotations_to_shapes,
    shapes_to_annotations,
    tumour_geometry,
)
from protorefine.errors import ProtorefineError


def test_yx_order_and_scale() -> None:
    # a rectangle drawn on a layer with scale (2, 4): data rows are (y, x)
    data = [np.array([[10.0, 5.0], [10.0, 15.0], [30.0, 15.0], [30.0, 5.0]])]
    s = shapes_to_annotations(data, ["rectangle"], (2, 4))
    (a,) = s.annotations
    assert a.classification == TUMOR
    assert a.geometry.equals(box(20, 20, 60, 60))  # x = 4 * col, y = 2 * row


def test_scalar_scale_and_positional_call() -> None:
    data = [np.array([[0.0, 0.0], [0.0, 10.0], [10.0, 10.0]])]
    s = shapes_to_annotations(data, "polygon", 1.0)
    assert s.annotations[0].geometry.area == pytest.approx(50)


@pytest.mark.parametrize("scale", [(1, 1), (16, 16), (0.5, 2)])
def test_round_trip_with_holes_and_classes(scale: tuple[float, float]) -> None:
    ring = Polygon(
        [(0, 0), (400, 0), (400, 300), (0, 300)],
        [[(50, 50), (150, 50), (150, 150), (50, 150)], [(200, 100), (300, 100), (250, 200)]],
    )
    original = AnnotationSet(
        [
            Annotation(MultiPolygon([ring, box(500, 500, 600, 640)]), TUMOR),
            Annotation(Polygon([(700, 0), (900, 0), (800, 100)]), NORMAL),
        ]
    )
    data, types, classes = annotations_to_shapes(original, scale)
    assert types == ["polygon"] * 5
    assert classes == [TUMOR, EXCLUDE, EXCLUDE, TUMOR, NORMAL]
    # data are layer coordinates: (y, x) divided by the scale, rings not closed
    np.testing.assert_allclose(data[0][1] * scale, [0, 400])
    assert len(data[0]) == 4
    back = shapes_to_annotations(data, types, scale, classification=classes)
    assert back.warnings == []
    assert back.classes() == [TUMOR, NORMAL]  # holes went back into the outline
    for cls in (TUMOR, NORMAL):
        assert back.union([cls]).equals(original.union([cls]))
    assert tumour_geometry(back).equals(tumour_geometry(original))


def test_exclusion_drawn_over_outline_becomes_a_hole() -> None:
    data = [
        np.array([[0, 0], [0, 100], [100, 100], [100, 0]], float),
        np.array([[20, 20], [20, 40], [40, 40], [40, 20]], float),
        np.array([[200, 200], [200, 210], [210, 210], [210, 200]], float),  # exclusion on nothing
    ]
    s = shapes_to_annotations(data, ["polygon"] * 3, classification=[TUMOR, EXCLUDE, EXCLUDE])
    tum = [a for a in s if a.classification == TUMOR]
    assert len(tum) == 1 and len(tum[0].geometry.interiors) == 1
    assert [a.geometry.area for a in s if a.classification == EXCLUDE] == [100]


def test_overlapping_shapes_are_unioned_per_class() -> None:
    data = [
        np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float),
        np.array([[5, 5], [5, 15], [15, 15], [15, 5]], float),
        np.array([[100, 100], [100, 110], [110, 110], [110, 100]], float),
    ]
    s = shapes_to_annotations(data, "rectangle", classification=[TUMOR, TUMOR, "Stroma"])
    assert sorted((a.classification, a.geometry.area) for a in s) == [("Stroma", 100), (TUMOR, 175)]


def test_ellipse_path_and_self_intersection() -> None:
    ellipse = np.array([[0, 0], [0, 200], [100, 200], [100, 0]], float)  # box 200 wide, 100 tall
    path = np.array([[0, 0], [50, 50], [0, 100]], float)
    bowtie = np.array([[300, 300], [400, 400], [300, 400], [400, 300]], float)
    s = shapes_to_annotations([ellipse, path, bowtie], ["ellipse", "path", "polygon"])
    assert len(s) == 3  # the repaired bowtie is two triangles touching at a point
    areas = sorted(a.geometry.area for a in s)
    assert areas[2] == pytest.approx(np.pi * 100 * 50, rel=0.01)
    assert areas[:2] == pytest.approx([2500, 2500])
    text = " ".join(s.warnings)
    assert "path x1" in text and "repaired 1 self-intersecting polygon(s)" in text
    ell = max(s, key=lambda a: a.geometry.area).geometry
    assert ell.bounds == pytest.approx((0, 0, 200, 100), abs=0.5)


def test_rotated_ellipse_corners() -> None:
    # napari stores a rotated ellipse as its rotated bounding box
    c = np.array([[0, 50], [50, 100], [100, 50], [50, 0]], float)  # diamond, side 70.7
    (a,) = shapes_to_annotations([c], ["ellipse"]).annotations
    assert a.geometry.area == pytest.approx(np.pi * 35.355**2, rel=0.01)
    assert a.geometry.centroid.coords[0] == pytest.approx((50, 50))


def test_mismatched_lengths_and_bad_scale_are_errors() -> None:
    with pytest.raises(ProtorefineError, match="2 shapes but 1 shape types"):
        shapes_to_annotations([np.zeros((3, 2))] * 2, ["polygon"])
    with pytest.raises(ProtorefineError, match="scale"):
        annotations_to_shapes(AnnotationSet(), (0, 1))


def test_importing_annotations_does_not_import_napari_or_qt() -> None:
    code = "import sys, protorefine.annotations; print(any(m.split('.')[0] in ('napari','PyQt6','qtpy','vispy') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_islands_in_holes_survive_the_round_trip() -> None:
    from scipy import ndimage as ndi

    from protorefine.annotations import rasterize, vectorize

    rng = np.random.default_rng(5)
    field = ndi.gaussian_filter(rng.standard_normal((60, 70)), 3)
    m = (field > 0.1 * field.std()) ^ (rng.random((60, 70)) < 0.01)
    m[1:21, 1:21] = True  # a ring with an island in its hole, for sure
    m[4:18, 4:18] = False
    m[8:14, 8:14] = True
    original = vectorize(m, 8)
    data, types, classes = annotations_to_shapes(original, (8, 8))
    assert EXCLUDE in classes
    back = shapes_to_annotations(data, types, (8, 8), classification=classes)
    assert back.classes() == [TUMOR]
    assert back.union().equals(original.union())
    np.testing.assert_array_equal(rasterize(back, (480, 560), 8), m)


def test_exclusion_drawn_before_the_outline_still_removes_tumour() -> None:
    data = [
        np.array([[20, 20], [20, 40], [40, 40], [40, 20]], float),
        np.array([[0, 0], [0, 100], [100, 100], [100, 0]], float),
    ]
    s = shapes_to_annotations(data, "polygon", classification=[EXCLUDE, TUMOR])
    assert s.classes() == [EXCLUDE, TUMOR]
    assert tumour_geometry(s).area == pytest.approx(10000 - 400)
