"""Rasterise / vectorise: pixel-centre sampling, holes, exact round trips, tumour classes."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from scipy import ndimage as ndi
from shapely.geometry import MultiPolygon, Polygon, box

from protorefine.annotations import (
    EXCLUDE,
    NORMAL,
    TUMOR,
    UNCLASSIFIED,
    Annotation,
    AnnotationSet,
    is_exclusion_class,
    is_tumour_class,
    mask_shape,
    rasterize,
    smooth_outline,
    tumour_geometry,
    vectorize,
)
from protorefine.errors import ProtorefineError


def blobby_mask(shape: tuple[int, int], seed: int, sigma: float = 3.0) -> np.ndarray:
    """Random smooth blobs with holes, islands in holes and diagonal (saddle) contacts."""
    rng = np.random.default_rng(seed)
    field = ndi.gaussian_filter(rng.standard_normal(shape), sigma)
    mask = field > 0.1 * field.std()
    speckle = rng.random(shape) < 0.01  # single pixels make saddles and one-pixel holes
    return mask ^ speckle


def test_blobby_masks_have_holes_and_saddles() -> None:
    m = blobby_mask((80, 90), 0)
    filled = ndi.binary_fill_holes(m)
    assert (filled & ~m).any(), "test masks must contain holes"
    a, b, c, d = m[:-1, :-1], m[:-1, 1:], m[1:, :-1], m[1:, 1:]
    assert ((a == d) & (b == c) & (a != b)).any(), "test masks must contain saddles"


@pytest.mark.parametrize("downsample", [1, 4, 16, 2.5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorize_rasterize_round_trip_is_exact(seed: int, downsample: float) -> None:
    m = blobby_mask((61, 77), seed)
    h, w = int(61 * downsample), int(77 * downsample)
    assert mask_shape((h, w), downsample) == m.shape
    annset = vectorize(m, downsample)
    assert len(annset) > 3
    for ann in annset:
        assert ann.geometry.is_valid
        assert ann.classification == TUMOR
    holes = sum(
        len(p.interiors) for a in annset for p in getattr(a.geometry, "geoms", [a.geometry])
    )
    assert holes > 0
    np.testing.assert_array_equal(rasterize(annset, (h, w), downsample), m)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorize_in_tiles_gives_the_same_polygons(seed: int) -> None:
    # a whole slide's mask is traced tile by tile; parts crossing tile edges (with holes,
    # saddles and one-pixel specks on them) are merged into the same regions
    m = blobby_mask((150, 170), seed)
    whole = vectorize(m, 2.0)
    tiled = vectorize(m, 2.0, tile=32)
    assert len(tiled) == len(whole)
    assert all(a.geometry.is_valid for a in tiled)
    assert tiled.union().symmetric_difference(whole.union()).area == 0
    np.testing.assert_array_equal(rasterize(tiled, (300, 340), 2.0), m)


def test_vectorize_area_equals_pixel_count() -> None:
    m = blobby_mask((50, 50), 3)
    total = sum(a.geometry.area for a in vectorize(m, 4))
    assert total == pytest.approx(m.sum() * 16)


def test_vectorize_traces_pixel_edges() -> None:
    m = np.zeros((5, 6), bool)
    m[1:4, 2:5] = True
    m[2, 3] = False
    (ann,) = vectorize(m, 2).annotations
    assert ann.geometry.equals(
        Polygon([(4, 2), (10, 2), (10, 8), (4, 8)], [box(6, 4, 8, 6).exterior.coords])
    )
    # no redundant collinear vertices: a square ring has 5 coordinates
    assert len(ann.geometry.exterior.coords) == 5


def test_vectorize_diagonal_pixels_stay_separate_and_valid() -> None:
    m = np.zeros((4, 4), bool)
    m[1, 1] = m[2, 2] = True
    annset = vectorize(m)
    assert len(annset) == 2
    assert all(a.geometry.is_valid for a in annset)
    np.testing.assert_array_equal(rasterize(annset, m.shape, 1), m)


def test_vectorize_min_area_drops_parts_and_fills_holes() -> None:
    m = np.zeros((20, 20), bool)
    m[2:12, 2:12] = True
    m[5, 5] = False  # 1-pixel hole
    m[15, 15] = True  # 1-pixel island
    annset = vectorize(m, 1, min_area=2)
    assert len(annset) == 1
    assert annset.annotations[0].geometry.equals(box(2, 2, 12, 12))
    assert len(vectorize(m, 1)) == 2


def test_vectorize_rejects_non_2d_and_empty_is_empty() -> None:
    with pytest.raises(ProtorefineError, match="2-D"):
        vectorize(np.zeros((3, 3, 3), bool))
    assert len(vectorize(np.zeros((10, 10), bool))) == 0


def test_rasterize_samples_pixel_centres() -> None:
    # box [3, 13) x [5, 9) at downsample 2: pixel centres are at odd level-0 numbers,
    # centres on the top/left edge count, on the bottom/right edge do not
    m = rasterize(box(3, 5, 13, 9), (20, 20), 2)
    assert m.shape == (10, 10)
    rows, cols = np.nonzero(m)
    assert set(rows) == {2, 3} and set(cols) == {1, 2, 3, 4, 5}
    # strictly inside: centres 7 (y) and 5..11 (x) for box (4, 6)-(12, 8.5)
    rows, cols = np.nonzero(rasterize(box(4, 6, 12, 8.5), (20, 20), 2))
    assert set(rows) == {3} and set(cols) == {2, 3, 4, 5}
    np.testing.assert_array_equal(rasterize(box(0, 0, 7, 5), (5, 7), 1), np.ones((5, 7), bool))


def test_rasterize_shape_is_ceil_and_clips_outside_geometry() -> None:
    m = rasterize(box(-50, -50, 500, 500), (101, 37), 16)
    assert m.shape == (7, 3) and m.all()
    assert not rasterize(box(200, 200, 300, 300), (100, 100), 1).any()


def test_rasterize_respects_holes_and_overlapping_annotations() -> None:
    outer = Polygon(
        [(0, 0), (40, 0), (40, 40), (0, 40)], [[(10, 10), (30, 10), (30, 30), (10, 30)]]
    )
    m = rasterize(outer, (40, 40), 1)
    assert m.sum() == 40 * 40 - 20 * 20
    assert not m[20, 20]
    # two overlapping annotations of the same class: union, not even-odd cancellation
    s = AnnotationSet([Annotation(box(0, 0, 20, 20)), Annotation(box(10, 10, 30, 30))])
    assert rasterize(s, (40, 40), 1).sum() == 400 + 400 - 100


def test_rasterize_many_vertices_matches_pixelwise_test() -> None:
    t = np.linspace(0, 2 * np.pi, 5000, endpoint=False)
    r = 180 + 60 * np.sin(7 * t) + 20 * np.cos(31 * t)
    star = Polygon(np.c_[250 + r * np.cos(t), 260 + r * np.sin(t)])
    m = rasterize(star, (520, 500), 1)
    from shapely import contains_xy

    yy, xx = np.mgrid[0:520, 0:500]
    expected = contains_xy(star, xx.ravel() + 0.5, yy.ravel() + 0.5).reshape(520, 500)
    assert (m != expected).sum() == 0


def test_rasterize_annotation_set_uses_tumour_region_or_classes() -> None:
    s = AnnotationSet(
        [
            Annotation(box(0, 0, 40, 40), TUMOR),
            Annotation(box(10, 10, 20, 20), EXCLUDE),
            Annotation(box(50, 50, 60, 60), "Stroma"),
        ]
    )
    tum = rasterize(s, (64, 64), 1)
    assert tum.sum() == 1600 - 100 and not tum[15, 15] and not tum[55, 55]
    stroma = rasterize(s, (64, 64), 1, classes=["Stroma"])
    assert stroma.sum() == 100 and stroma[55, 55]


def test_bad_downsample_is_a_clear_error() -> None:
    with pytest.raises(ProtorefineError, match="downsample"):
        rasterize(box(0, 0, 1, 1), (10, 10), 0)


@pytest.mark.parametrize(
    "name",
    ["Tumor", "tumour", "TUMOR", "Tumor: Positive", "metastases", "_0", "_1", UNCLASSIFIED, None],
)
def test_tumour_class_names(name: str | None) -> None:
    assert is_tumour_class(name) and not is_exclusion_class(name)


@pytest.mark.parametrize("name", ["Exclusion", "_2", "normal", NORMAL, "Non-tumor", "Ignore*"])
def test_exclusion_class_names(name: str) -> None:
    assert is_exclusion_class(name) and not is_tumour_class(name)


def test_tumour_geometry_rules() -> None:
    s = AnnotationSet(
        [
            Annotation(box(0, 0, 100, 100), "_0"),
            Annotation(box(200, 0, 300, 100), "metastases"),
            Annotation(box(10, 10, 20, 20), "_2"),
            Annotation(box(30, 30, 40, 40), NORMAL),
            Annotation(box(400, 0, 500, 100), "Stroma"),
        ]
    )
    g = tumour_geometry(s)
    assert g.area == pytest.approx(2 * 10000 - 2 * 100)
    assert isinstance(g, MultiPolygon)
    # only an unknown class: it is the outline the user meant
    only = AnnotationSet(
        [Annotation(box(0, 0, 10, 10), "Region*"), Annotation(box(2, 2, 4, 4), EXCLUDE)]
    )
    assert tumour_geometry(only).area == pytest.approx(96)
    assert tumour_geometry(AnnotationSet()).is_empty


def test_rasterize_in_bands_matches_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import protorefine.annotations.raster as raster

    m = blobby_mask((70, 50), 7)
    annset = vectorize(m, 3)
    monkeypatch.setattr(raster, "_BAND_PIXELS", 7 * 51 + 5)  # bands of 7 rows
    np.testing.assert_array_equal(rasterize(annset, (210, 150), 3), m)


def test_tumour_geometry_tolerates_invalid_geometry_built_in_code() -> None:
    bowtie = Polygon([(0, 0), (10, 10), (10, 0), (0, 10)])
    s = AnnotationSet([Annotation(bowtie, TUMOR), Annotation(box(20, 20, 30, 30), TUMOR)])
    g = tumour_geometry(s)
    assert g.is_valid and g.area == pytest.approx(50 + 100)


def _axis_parallel_share(geom) -> float:
    """Share of outline edges that run exactly along x or y (1.0 for a pixel staircase)."""
    edges = np.concatenate(
        [
            np.diff(shapely.get_coordinates(r), axis=0)
            for r in shapely.get_rings(shapely.get_parts(geom))
        ]
    )
    return float(np.mean((np.abs(edges) < 1e-9).any(axis=1)))


@pytest.mark.parametrize("passes", [1, 2, 3, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_smoothed_outline_keeps_every_pixel_and_topology(seed: int, passes: int) -> None:
    m = blobby_mask((61, 77), seed)
    d = 4.0
    exact = vectorize(m, d)
    smoothed = [smooth_outline(a.geometry, d, passes) for a in exact]
    assert all(g.is_valid and not g.is_empty for g in smoothed)
    # same parts, same holes: nothing merges, nothing disappears
    assert [len(shapely.get_parts(g)) for g in smoothed] == [1] * len(exact)
    assert [len(g.interiors) for g in smoothed] == [len(a.geometry.interiors) for a in exact]
    back = rasterize(shapely.union_all(smoothed), (61 * 4, 77 * 4), d)
    np.testing.assert_array_equal(back, m)


def test_smoothed_circle_loses_its_stairs() -> None:
    yy, xx = np.mgrid[:60, :60]
    m = (yy - 29.5) ** 2 + (xx - 29.5) ** 2 <= 25**2
    d = 16.0
    exact = vectorize(m, d).annotations[0].geometry
    smooth = smooth_outline(exact, d)
    true_length = 2 * np.sqrt(np.pi * exact.area)  # the circle of the mask's area
    assert exact.length / true_length > 1.25  # a staircase is 4/pi too long
    assert smooth.length / true_length == pytest.approx(1.0, abs=0.05)
    assert smooth.area / exact.area == pytest.approx(1.0, abs=0.01)
    assert _axis_parallel_share(exact) == 1.0 and _axis_parallel_share(smooth) < 0.1
    assert smooth.hausdorff_distance(exact) <= d / 2 + 1e-6
    assert smooth_outline(exact, d, 0).equals(exact)


def test_fit_mask_crops_and_pads() -> None:
    from protorefine.annotations import fit_mask

    m = np.ones((3, 5), bool)
    out = fit_mask(m, (4, 4))
    assert out.shape == (4, 4) and out[:3].all() and not out[3].any()


def test_a_mask_declaring_gigapixels_is_refused_before_decoding(tmp_path):
    """A decompression bomb: a tiny PNG whose header declares 40000 x 40000 pixels is
    refused from its header, in one line naming the file, without decoding a pixel."""
    import struct
    import zlib

    import pytest

    from protorefine.annotations import read_annotations
    from protorefine.errors import ProtorefineError

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    side = 40000
    row = b"\x00" + b"\x00" * (side // 8)  # filter byte + one 1-bit row of zeros
    idat = zlib.compress(row * 64)  # only the first rows: a decoder would fail later
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
    png += chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(png)
    with pytest.raises(ProtorefineError, match=r"bomb\.png: a 40000x40000 mask \(1\.6 Gpixel\)"):
        read_annotations(path, slide_shape=(side, side))
