"""Benchmark cohorts: tumour maps, pure squares, canvases whose truth matches their pixels, coarse calibration."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imsave

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cohorts as C  # noqa: E402

RED, BLUE = (200, 40, 40), (40, 40, 200)


def _fake_tiles(folder: Path, n: int = 4, size: int = 256) -> None:
    """Tiles whose left part is tumour (red) and right part normal (blue), with masks."""
    (folder / "images").mkdir(parents=True)
    (folder / "masks").mkdir()
    for i in range(n):
        split = size // 4 + i * size // (2 * n)
        img = np.zeros((size, size, 3), np.uint8)
        img[:, :split] = RED
        img[:, split:] = BLUE
        mask = np.zeros((size, size), np.uint8)
        mask[:, :split] = 255
        imsave(folder / "images" / f"t{i}.jpg", img, check_contrast=False)
        imsave(folder / "masks" / f"t{i}.png", mask, check_contrast=False)


def test_tumour_map_is_deterministic_and_has_the_asked_fraction():
    a = C.tumour_map((40, 40), np.random.default_rng(3), fraction=0.4)
    b = C.tumour_map((40, 40), np.random.default_rng(3), fraction=0.4)
    c = C.tumour_map((40, 40), np.random.default_rng(4), fraction=0.4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert 0.25 < a.mean() < 0.55


def test_cut_squares_keeps_only_pure_tissue_squares():
    img = np.zeros((128, 128, 3), np.uint8)
    img[:, :64] = RED
    img[:, 64:] = BLUE
    img[64:, 64:] = 255  # glass in one quadrant
    mask = np.zeros((128, 128), bool)
    mask[:, :64] = True
    sq = C.cut_squares(img, mask, 32)
    assert len(sq[1]) == 21  # 7 x 3 positions on a 16 px stride inside the red half
    assert all((s == RED).all() for s in sq[1])
    blue = [(s == BLUE).all(-1).mean() for s in sq[0]]
    glass = [(s == 255).all(-1).mean() for s in sq[0]]
    assert all(b + g == 1.0 for b, g in zip(blue, glass, strict=True))  # no mixed square
    assert max(glass) <= 0.5 and len(sq[0]) == 21 - 9  # all-glass squares are left out


def test_canvas_pixels_follow_the_truth_map():
    rng = np.random.default_rng(0)
    tmap = C.tumour_map((9, 9), rng)
    pools = {1: [np.full((32, 32, 3), RED, np.uint8)], 0: [np.full((32, 32, 3), BLUE, np.uint8)]}
    img = C.render_canvas(tmap, pools, 32, (256, 256), rng, offset=12)
    truth = C.truth_at(tmap, 32, (256, 256), 4, offset=12)
    red = (img[::4, ::4] == RED).all(axis=-1)
    assert truth.shape == (64, 64)
    assert np.array_equal(red, truth)
    # the offset puts square borders off the 32 px grid
    assert not np.array_equal(red, np.kron(tmap[:8, :8], np.ones((8, 8), bool)))


def test_canvas_cohort_slides_use_their_own_tiles(tmp_path):
    _fake_tiles(tmp_path / "tiles")
    slides, notes = C.build_canvas_cohort(
        tmp_path / "tiles", n_slides=2, squares=6, size=64, patch_size=32, seed=1, offset=16
    )
    assert len(slides) == 2
    assert not set(slides[0].sources) & set(slides[1].sources)
    assert sorted(slides[0].sources + slides[1].sources) == ["t0", "t1", "t2", "t3"]
    for s in slides:
        assert s.image.shape == (384, 384, 3)
        assert s.eval_downsample == 16 and s.truth.shape == (24, 24)
        red = np.abs(s.image[8::16, 8::16].astype(int) - RED).sum(-1) < 60
        assert (red == s.truth).mean() > 0.99  # JPEG blurs colours a little
    again, _ = C.build_canvas_cohort(
        tmp_path / "tiles", n_slides=2, squares=6, size=64, patch_size=32, seed=1, offset=16
    )
    assert np.array_equal(again[1].image, slides[1].image)


def test_coarse_calibration_reaches_the_target_dice():
    pytest.importorskip("protorefine.synthetic")
    rng = np.random.default_rng(5)
    slides = []
    for k in range(3):
        truth = np.kron(C.tumour_map((17, 17), rng), np.ones((4, 4), bool))[:64, :64]
        img = np.zeros((1024, 1024, 3), np.uint8)
        slides.append(C.BenchSlide(f"s{k}", img, truth, np.ones_like(truth), 16))
    notes = C.add_coarse(slides, seed=0, target=0.8)
    assert abs(notes["coarse_dice"] - 0.8) < 0.05
    got = np.mean([C.dice(s.coarse_mask, s.truth) for s in slides])
    assert got == pytest.approx(notes["coarse_dice"], abs=1e-4)
    assert all(len(s.coarse) > 0 for s in slides)


def test_build_cohort_skips_a_missing_data_folder(tmp_path):
    said = []
    out = C.build_cohort("ocdc-canvas", data=tmp_path / "nowhere", cache=tmp_path, log=said.append)
    assert out is None
    assert "nowhere" in said[0] and "absent" in said[0]
    with pytest.raises(ValueError, match="unknown cohort"):
        C.build_cohort("nope", cache=tmp_path)


def test_build_cohort_caches_what_it_built(tmp_path, monkeypatch):
    pytest.importorskip("protorefine.synthetic")
    monkeypatch.setitem(C.SPECS, "ocdc-canvas", dict(C.SPECS["ocdc-canvas"], squares=4, n_slides=2))
    _fake_tiles(tmp_path / "ocdc")
    first = C.build_cohort(
        "ocdc-canvas", data=tmp_path, cache=tmp_path / "cache", log=lambda m: None
    )
    files = list((tmp_path / "cache" / "cohorts").glob("*.npz"))
    assert len(files) == 1 and first.key in files[0].name
    second = C.build_cohort(
        "ocdc-canvas", data=tmp_path, cache=tmp_path / "cache", log=lambda m: None
    )
    assert second.notes == first.notes
    for a, b in zip(first.slides, second.slides, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.coarse_mask, b.coarse_mask)
        assert a.coarse.annotations[0].geometry.equals(b.coarse.annotations[0].geometry)


def test_real_tiles_cohort_keeps_two_class_tiles(shared_data):
    slides, notes = C.build_tiles_cohort(shared_data / "camelyon-tiles")
    assert len(slides) >= 50
    for s in slides:
        assert 0.05 <= s.truth.mean() <= 0.95
        assert s.truth.shape == (s.image.shape[0] // 8, s.image.shape[1] // 8)
