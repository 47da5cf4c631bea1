"""Colour prototypes below the patch: stain statistics per fine cell, clusters, the outline."""

from __future__ import annotations

import numpy as np
import pytest

from protorefine.errors import ProtorefineError
from protorefine.features import make_grid
from protorefine.refine.config import RefineConfig
from protorefine.refine.postprocess import prob_to_fine_mask
from protorefine.refine.stain_clusters import (
    cell_features,
    cell_sums,
    colour_prototype_prob,
    stain_channels,
)
from protorefine.slides.base import Slide

PURPLE = (90, 60, 150)  # haematoxylin-rich: dense nuclei
PINK = (230, 150, 190)  # eosin-rich: cytoplasm, stroma


def two_colour_slide(boundary: int, size: int = 256) -> np.ndarray:
    """Purple left of column ``boundary``, pink right of it, with a little noise."""
    rng = np.random.default_rng(0)
    img = np.empty((size, size, 3), np.float32)
    img[:, :boundary] = PURPLE
    img[:, boundary:] = PINK
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def test_stain_channels_tell_nuclei_from_cytoplasm_and_glass() -> None:
    pixels = np.array([[PURPLE, PINK, (255, 255, 255)]], np.uint8)
    h, e, od = np.moveaxis(stain_channels(pixels)[0], -1, 0)
    assert h[0] > h[1] and e[1] > e[0]  # purple is haematoxylin, pink eosin
    assert od[2] == pytest.approx(0, abs=1e-6) and od[0] > od[1] > 0


def test_cell_sums_match_the_pixels_of_each_fine_cell() -> None:
    img = two_colour_slide(96)
    slide = Slide.from_array(img)
    grid = make_grid(slide, patch_size=64, tissue=True)
    sums = cell_sums(slide, grid, 4)
    assert sums.shape == (16, 16, 7)
    assert (sums[..., 0] == 16 * 16).all()  # every fine cell: 16 x 16 pixels
    stains = stain_channels(img)
    cell = stains[32:48, 80:96].reshape(-1, 3).astype(np.float64)  # fine cell (2, 5)
    np.testing.assert_allclose(sums[2, 5, 1:4], cell.sum(0), rtol=1e-5)
    np.testing.assert_allclose(sums[2, 5, 4:7], (cell**2).sum(0), rtol=1e-5)
    feats = cell_features(sums)
    assert feats.shape == (16, 16, 18)
    assert feats[8, 2, 0] > feats[8, 10, 0]  # mean haematoxylin: purple side above pink
    # no tissue anywhere: nothing is read
    grid.tissue[:] = False
    assert not cell_sums(slide, grid, 4).any()


def test_each_cluster_takes_the_mean_probability_of_its_cells() -> None:
    feats = np.zeros((4, 4, 2), np.float32)
    feats[:, :2] = (1.0, 0.0)
    feats[:, 2:] = (0.0, 1.0)
    prob = np.where(np.arange(4)[None, :] < 2, 0.8, 0.3).astype(np.float32).repeat(4, 0)
    prob[0, 0] = 0.4  # one odd cell in the first colour
    valid = np.ones((4, 4), bool)
    valid[3, 3] = False
    out = colour_prototype_prob(feats, prob, valid, k=2)
    assert out[1, 1] == pytest.approx((0.4 + 7 * 0.8) / 8)
    assert out[1, 3] == pytest.approx(0.3)
    assert out[3, 3] == prob[3, 3]  # outside tissue: as it was


def test_the_outline_moves_to_the_colour_boundary_inside_a_patch() -> None:
    """Tumour (purple) ends 32 px into the second patch column; the patch probabilities only
    say 'mixed' there. With colour prototypes the outline lands on the colour boundary."""
    img = two_colour_slide(96)
    slide = Slide.from_array(img)
    grid = make_grid(slide, patch_size=64, tissue=True)
    prob = np.tile(np.array([0.95, 0.55, 0.1, 0.05], np.float32), (4, 1))
    colour = cell_features(cell_sums(slide, grid, 4))
    truth = np.zeros((16, 16), bool)
    truth[:, :6] = True  # fine columns 0-5: x < 96

    def dice(mask: np.ndarray) -> float:
        return 2 * (mask & truth).sum() / (mask.sum() + truth.sum())

    config = RefineConfig(colour_prototypes=2, colour_weight=0.5, min_area=0, max_hole=0)
    plain = prob_to_fine_mask(prob, config=config, factor=4)
    with_colour = prob_to_fine_mask(prob, config=config, factor=4, colour=colour)
    assert dice(with_colour) == 1.0 > dice(plain)
    off = config.replace(colour_prototypes=0)
    assert (prob_to_fine_mask(prob, config=off, factor=4, colour=colour) == plain).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [({"colour_prototypes": 1}, "colour_prototypes=1"), ({"colour_weight": 1.5}, "colour_weight")],
)
def test_bad_colour_settings_are_named(change, message) -> None:
    with pytest.raises(ProtorefineError, match=message):
        RefineConfig(**change)


def test_no_speck_hangs_on_by_a_corner() -> None:
    """Parts of the fine mask that touch only at a corner are traced as separate polygons
    (a tiny diamond once rounded), so each must reach ``min_area`` on its own."""
    from scipy import ndimage

    prob = np.zeros((3, 3), np.float32)
    prob[0, 0] = prob[1, 1] = 1.0  # two 2 x 2 blocks of fine cells, corner to corner
    loose = RefineConfig(smooth_sigma=0.0, threshold=0.5, min_area=1, max_hole=0)
    fine = prob_to_fine_mask(prob, config=loose, factor=2)
    lab, n = ndimage.label(fine)
    assert n == 2 and fine.sum() == 8  # min_area 1 patch = 4 fine cells: both kept
    strict = loose.replace(min_area=2)  # 8 fine cells: each corner-joined block is too small
    assert not prob_to_fine_mask(prob, config=strict, factor=2).any()
