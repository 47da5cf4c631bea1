"""Synthetic H&E-like slides (deterministic, seam-free, H&E colours) and the coarse-outline simulator."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from skimage.color import rgb2hsv

from protorefine.annotations.model import TUMOR, AnnotationSet
from protorefine.errors import ProtorefineError
from protorefine.slides import convert_to_ome_zarr, open_slide
from protorefine.synthetic import simulate_coarse, synthetic_slide


def _raster(annset: AnnotationSet, shape: tuple[int, int], d: float) -> np.ndarray:
    """Mask at downsample ``d``: True where the block centre is inside an annotation."""
    geom = shapely.union_all([a.geometry for a in annset])
    ys = (np.arange(shape[0]) + 0.5) * d
    xs = (np.arange(shape[1]) + 0.5) * d
    xx, yy = np.meshgrid(xs, ys)
    return shapely.contains_xy(geom, xx, yy)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.fixture(scope="module")
def small():
    slide, truth, d = synthetic_slide((1024, 1280), seed=3, tile=256)
    return slide, truth, d, np.asarray(slide.levels[0])


def test_shape_levels_truth_and_metadata(small) -> None:
    slide, truth, d, level0 = small
    assert slide.shape == (1024, 1280) and slide.mpp == 0.5
    assert [lvl.shape for lvl in slide.levels] == [(1024, 1280, 3), (256, 320, 3), (64, 80, 3)]
    assert all(lvl.dtype == np.uint8 for lvl in slide.levels)
    assert d == 16 and truth.shape == (64, 80) and truth.dtype == bool
    assert 0.1 < truth.mean() < 0.5
    # level 1 is the 4x area mean of level 0
    mean4 = level0.reshape(256, 4, 320, 4, 3).mean(axis=(1, 3))
    assert np.abs(np.asarray(slide.levels[1]).astype(float) - mean4).max() <= 0.5 + 1e-6


def test_lazy_and_deterministic(small) -> None:
    slide, truth, _, level0 = small
    again, truth2, _ = synthetic_slide((1024, 1280), seed=3, tile=256)
    assert slide.levels[0].numblocks == (4, 5, 1)  # one task per tile, nothing computed yet
    np.testing.assert_array_equal(
        np.asarray(again.levels[0][300:700, 500:900]), level0[300:700, 500:900]
    )
    np.testing.assert_array_equal(truth, truth2)
    other, truth3, _ = synthetic_slide((1024, 1280), seed=4, tile=256)
    assert not np.array_equal(truth, truth3)
    assert np.abs(np.asarray(other.levels[1]).astype(int) - np.asarray(slide.levels[1])).mean() > 10


def test_no_seams_same_pixels_whatever_the_tiling(small) -> None:
    _, _, _, level0 = small
    big_tiles, _, _ = synthetic_slide((1024, 1280), seed=3, tile=512)
    # every pattern is a function of global coordinates: tiles of 256 and 512 agree exactly
    np.testing.assert_array_equal(np.asarray(big_tiles.levels[0]), level0)
    # and no visible step at tile borders: the jump across a border row is like any other row
    diffs = np.abs(np.diff(level0.astype(np.int16), axis=0)).mean(axis=(1, 2))
    borders = diffs[[255, 511, 767]]
    assert borders.max() < 2.0 * np.median(diffs)


def test_looks_like_he(small) -> None:
    _, truth, d, level0 = small
    tumour = np.kron(truth, np.ones((d, d), bool))
    hsv = rgb2hsv(level0)
    bright = level0.min(axis=2)
    # white glass around the tissue
    corner = level0[:48, :48]
    assert corner.min() > 200 and np.ptp(corner.mean(axis=2)) < 30
    tissue = (hsv[..., 1] > 0.1) & (bright < 235)
    assert 0.3 < tissue.mean() < 0.95
    normal = tissue & ~tumour
    # H&E hues: pink-to-purple (red/magenta/violet), never green or yellow
    hue = hsv[..., 0][tissue]
    assert ((hue > 0.6) | (hue < 0.05)).mean() > 0.95
    # tumour is darker and more purple (haematoxylin) than normal tissue
    assert level0[tumour].mean() < level0[normal].mean() - 15
    blue_red = level0[..., 2].astype(float) - level0[..., 0]
    assert blue_red[tumour].mean() > blue_red[normal].mean() + 8
    # crowded dark nuclei: far more nuclear pixels in tumour than in normal tissue
    nuclear = (bright < 110) & (level0[..., 2] > level0[..., 1])
    assert nuclear[tumour].mean() > 0.25
    assert nuclear[tumour].mean() > 2 * nuclear[normal].mean()


def test_lymphocytes_are_dense_purple_but_not_tumour_texture() -> None:
    # the confounder: lymphocyte aggregates are as dark as tumour, with smaller round nuclei
    from scipy import ndimage as ndi

    slide, truth, d = synthetic_slide((1536, 1536), seed=7, tile=512)
    img = np.asarray(slide.levels[0])
    nuclear = (img.min(axis=2) < 110) & (img[..., 2] > img[..., 1])
    tumour = np.kron(truth, np.ones((d, d), bool))
    # nuclear "thickness": distance from a nuclear pixel to the nearest non-nuclear pixel
    depth = ndi.distance_transform_edt(nuclear)
    crowded = ndi.uniform_filter(nuclear.astype(float), 31) > 0.3  # dense purple areas
    lymph = crowded & ~tumour
    assert lymph.sum() > 5000, "expected lymphocyte aggregates outside the tumour"
    assert nuclear[lymph].mean() > 0.3  # as dense as tumour at low power
    t90 = np.percentile(depth[nuclear & tumour], 90)
    l90 = np.percentile(depth[nuclear & lymph], 90)
    assert t90 > 1.5 * l90


def test_converts_and_reopens(tmp_path, small) -> None:
    slide, _, _, level0 = small
    out = convert_to_ome_zarr(slide, tmp_path / "syn.zarr", tile=256, min_size=256)
    back = open_slide(out)
    np.testing.assert_array_equal(np.asarray(back.levels[0]), level0)
    assert back.mpp == pytest.approx(0.5)


def test_bad_arguments() -> None:
    with pytest.raises(ProtorefineError, match="shape"):
        synthetic_slide((10, 10))
    with pytest.raises(ProtorefineError, match="tile=100"):
        synthetic_slide((512, 512), tile=100)
    with pytest.raises(ProtorefineError, match="mpp"):
        synthetic_slide((512, 512), mpp=0)


# --------------------------------------------------------------------------- coarse outlines


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coarse_dice_about_0_8_and_falls_with_strength(seed: int) -> None:
    slide, truth, d = synthetic_slide((2048, 2048), seed=seed)  # truth only: nothing rendered
    dices = []
    for strength in (0.0, 0.5, 1.0, 2.0):
        ann = simulate_coarse(truth, d, strength=strength, seed=seed)
        assert len(ann) > 0 and all(a.classification == TUMOR for a in ann)
        assert all(a.geometry.is_valid for a in ann)
        dices.append(_dice(_raster(ann, truth.shape, d), truth))
    assert dices[0] > 0.99  # strength 0 traces the truth
    assert 0.75 <= dices[2] <= 0.9
    assert dices[0] > dices[1] > dices[2] > dices[3]


def test_coarse_is_generous_in_level0_coordinates() -> None:
    slide, truth, d = synthetic_slide((2048, 3072), seed=5)
    ann = simulate_coarse(truth, d, strength=1.0, seed=5)
    coarse = _raster(ann, truth.shape, d)
    # the outline is drawn around the tumour: it covers most of it and adds some margin
    assert (coarse & truth).sum() / truth.sum() > 0.85
    assert coarse.sum() > truth.sum()
    xmin, ymin, xmax, ymax = shapely.union_all([a.geometry for a in ann]).bounds
    assert -200 < xmin and xmax < 3072 + 200 and -200 < ymin and ymax < 2048 + 200
    assert xmax - xmin > 1000  # level-0 pixels, not mask pixels
    # fewer, smoother parts than the truth, with no holes smaller than the closing
    simple = simulate_coarse(truth, d, strength=0.0)
    vertices = sum(len(shapely.get_coordinates(a.geometry)) for a in ann)
    assert vertices < sum(len(shapely.get_coordinates(a.geometry)) for a in simple) / 2


def test_coarse_deterministic_and_edge_cases() -> None:
    _, truth, d = synthetic_slide((1024, 1024), seed=1)
    a = simulate_coarse(truth, d, seed=9)
    b = simulate_coarse(truth, d, seed=9)
    assert [x.geometry.wkb for x in a] == [x.geometry.wkb for x in b]
    assert len(simulate_coarse(np.zeros((32, 32), bool), 16)) == 0
    with pytest.raises(ProtorefineError, match="strength"):
        simulate_coarse(truth, d, strength=-1)
    with pytest.raises(ProtorefineError, match="2-D"):
        simulate_coarse(np.zeros(5, bool), 16)
