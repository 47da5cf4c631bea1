"""The pixel stage: dense features without tile seams, a probability per cell learned from
the reliable parts of the coarse outline, and the outline drawn from it in the product."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from protorefine.errors import CancelledError, ProtorefineError
from protorefine.features import dense
from protorefine.features.dense import BLOCK_WIDTHS, DenseEncoder, dense_features, dense_grid
from protorefine.refine import RefineConfig
from protorefine.refine.pixels import PixelSlide, pixel_mask, pixel_outline, pixel_probability
from protorefine.slides.base import Slide


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1, int(a.sum() + b.sum()))


def _he_image(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A pink/purple image with a wobbly dark 'tumour' region, and its truth mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    ang = np.arctan2(yy - size / 2, xx - size / 2)
    truth = np.hypot(yy - size / 2, xx - size / 2) < size * 0.3 * (1 + 0.2 * np.sin(4 * ang))
    img = np.where(truth[..., None], [120, 60, 150], [230, 170, 210]).astype(np.float32)
    img += rng.normal(0, 12, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), truth


@pytest.mark.slow
def test_dense_features_show_no_tile_seams(monkeypatch):
    img, _ = _he_image(768)
    slide = Slide.from_array(img, name="seams", mpp=0.5)
    grid = dense_grid(slide, mpp=0.5, cell=16)
    enc = DenseEncoder("cpu")
    whole = dense_features(slide, grid, enc).astype(np.float32)  # one tile
    monkeypatch.setattr(dense, "TILE", 256)  # nine tiles
    tiled = dense_features(slide, grid, enc).astype(np.float32)
    assert whole.shape == (48, 48, sum(BLOCK_WIDTHS))
    # the halo gives every tile the context its layers see: away from the slide's own
    # border (which both see mirrored), every layer of the tiles agrees with the whole
    m = dense.HALO // 16
    start = 0
    for width in BLOCK_WIDTHS:
        a = whole[m:-m, m:-m, start : start + width]
        b = tiled[m:-m, m:-m, start : start + width]
        start += width
        err = np.abs(a - b).mean() / np.abs(a).mean()
        assert err < 0.08, (width, err)  # measured: 0 for the early layers, 0.06 the last


def test_dense_grid_at_a_physical_resolution():
    img = np.zeros((1000, 800, 3), np.uint8)
    fine = Slide.from_array(img, name="fine", mpp=0.25)
    g = dense_grid(fine, mpp=0.5, cell=16)
    assert g.cell0 == 32 and g.cell_um == pytest.approx(8.0)
    assert (g.rows, g.cols) == (32, 25)
    unknown = Slide.from_array(img, name="unknown", mpp=None)
    g = dense_grid(unknown, mpp=0.5, cell=16)
    assert g.cell0 == 16 and g.mpp is None
    with pytest.raises(ProtorefineError, match="too small for the pixel stage"):
        dense_grid(Slide.from_array(np.zeros((12, 12, 3), np.uint8), name="tiny"), mpp=0.5, cell=16)


def _cells(seed: int, shape=(60, 60), dilate=6, outside=True):
    """Cells whose first two features say tumour or not (plus noise), a truth with stroma
    threads inside, and a coarse outline dilated over them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    truth = np.hypot(yy - 30, xx - 30) < 18
    truth &= ~((np.abs(yy - xx) < 2) & (yy > 20))  # a stroma thread through the tumour
    feats = rng.normal(0, 1, shape + (8,)).astype(np.float32)
    feats[..., :2] += np.where(truth, 1.5, -1.5)[..., None]
    coarse = ndi.binary_dilation(ndi.binary_closing(truth, iterations=3), iterations=dilate)
    if not outside:
        coarse[:] = True
    cell_um = 8.0
    dist = (ndi.distance_transform_edt(coarse) - ndi.distance_transform_edt(~coarse)) * cell_um
    return PixelSlide(feats, dist.astype(np.float32), np.ones(shape, bool)), truth, coarse


def test_pixel_stage_recovers_the_tissue_the_coarse_outline_blurs():
    cfg = RefineConfig()
    cases = [_cells(s) for s in range(3)]
    results = pixel_probability([c[0] for c in cases], cfg)
    for (ps, truth, coarse), res in zip(cases, results, strict=True):
        prob = res.prob
        assert res.pseudo.shape == prob.shape
        mask = pixel_mask(prob, ps.tissue, cfg, cell_um=8.0)
        f = cfg.pixel_upsample
        truth_f = np.kron(truth, np.ones((f, f), bool))
        coarse_f = np.kron(coarse, np.ones((f, f), bool))
        assert _dice(mask, truth_f) > _dice(coarse_f, truth_f) + 0.1


def test_self_training_reports_its_curve_without_changing_the_fit():
    """The Refine pane's pixel plot: per L-BFGS iteration, the loss falls, the agreement with
    the pseudo-labels (and, on a large slide, with confident cells kept out of training) is
    measured; the fit is the same without it."""
    import protorefine.refine.pixels as px

    cfg = RefineConfig()
    ps, _, _ = _cells(0)
    res = pixel_probability([ps], cfg)[0]
    curve = res.curve
    assert len(curve) >= 3 and [p["iteration"] for p in curve] == list(range(1, len(curve) + 1))
    assert curve[-1]["loss"] < curve[0]["loss"]
    assert all(0.0 <= p["agreement"] <= 1.0 for p in curve) and curve[-1]["agreement"] > 0.9
    assert all("held_out_agreement" not in p for p in curve)  # it trained on every candidate
    # a slide with more confident cells than a fit takes: the others are held out
    big, _, _ = _cells(0)
    big.features = np.tile(big.features, (6, 6, 1))
    big.distance, big.tissue = np.tile(big.distance, (6, 6)), np.tile(big.tissue, (6, 6))
    assert big.tissue.sum() > px.MAX_TRAIN
    held = pixel_probability([big], cfg)[0].curve
    assert all(0.0 <= p["held_out_agreement"] <= 1.0 for p in held)
    assert held[-1]["held_out_agreement"] > 0.9  # the confident cells it did not see
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8))
    y = (x[:, 0] > 0).astype(np.int64)
    w = np.ones(500)
    watched = px._Curve((x[:100], y[:100]), None)
    a, b = px._fit(x, y, w, 1.0, 0, watched), px._fit(x, y, w, 1.0, 0)
    assert np.array_equal(a.coef_, b.coef_) and len(watched.points) == a.n_iter_[0]


def test_corrections_win_and_are_learned_from():
    cfg = RefineConfig()
    ps, truth, _ = _cells(0)
    labels = np.full(truth.shape, -1, np.int8)
    labels[28:32, 28:32] = 0  # the pathologist painted normal inside the tumour
    ps.labels = labels
    prob = pixel_probability([ps], cfg)[0].prob
    assert (prob[28:32, 28:32] == 0).all()


def test_an_outline_with_no_tissue_outside_is_refused():
    ps, _, _ = _cells(0, outside=False)
    with pytest.raises(
        ProtorefineError, match="coarse outline of 'slide' leaves no tissue outside"
    ):
        pixel_probability([ps], RefineConfig())


def test_cancel_stops_the_pixel_stage():
    ps, _, _ = _cells(0)
    with pytest.raises(CancelledError, match="patch-level outline is kept"):
        pixel_probability([ps], RefineConfig(), cancel=lambda: True)


def test_outline_polygons_follow_the_fine_mask():
    cfg = RefineConfig()
    ps, truth, _ = _cells(1)
    prob = pixel_probability([ps], cfg)[0].prob
    mask = pixel_mask(prob, ps.tissue, cfg, cell_um=8.0)
    step = 16.0 / cfg.pixel_upsample  # level-0 pixels per fine cell (16 px cells)
    ann = pixel_outline(mask, step, (960, 960), classification="Tumor", smoothing=3)
    from protorefine.annotations import rasterize

    back = rasterize(ann, (960, 960), step)
    assert _dice(back, mask) > 0.95
    assert all(a.classification == "Tumor" for a in ann.annotations)


# ---- the stage in the product ---------------------------------------------------------------
PIPE_CFG = RefineConfig(encoder="colour-texture", device="cpu", epochs=4)


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    from protorefine.project.pipeline import Pipeline, prepare_project
    from refine_synth import write_slide_case

    case = write_slide_case(tmp_path_factory.mktemp("case"), size=1024)
    notes: list[str] = []
    project, _ = prepare_project(
        tmp_path_factory.mktemp("proj") / "p",
        [(case["slide"], case["coarse"])],
        lambda _base: PIPE_CFG,
        warn=notes.append,
    )
    Pipeline(project).run()
    return project, case, notes


@pytest.mark.slow
def test_refine_draws_the_outline_from_the_pixel_stage(refined):
    from protorefine.annotations import rasterize, read_geojson

    project, case, notes = refined
    assert any("records no pixel size; taken as 0.5 µm/px" in n for n in notes)
    assert project.stage_done("pixels")
    prob, cell0 = project.pixel_probability("s1")
    assert cell0 == 16 and prob.shape == (64, 64)  # 8 µm cells at the assumed 0.5 µm/px
    assert ((prob >= 0) & (prob <= 1)).all()
    pseudo, _ = project.pixel_probability("s1", pseudo=True)  # what it self-trained from
    assert pseudo.shape == prob.shape and not np.array_equal(pseudo, prob)
    shape = project.slide("s1").shape
    ds = case["downsample"]
    truth = case["truth"]
    pixel = rasterize(project.refined_annotations("s1"), shape, ds)[
        : truth.shape[0], : truth.shape[1]
    ]
    patch_ann = read_geojson(project.stage_file("output", "{slide}.geojson", "s1"))
    patch = rasterize(patch_ann, shape, ds)[: truth.shape[0], : truth.shape[1]]
    coarse = rasterize(read_geojson(case["coarse"]), shape, ds)[: truth.shape[0], : truth.shape[1]]
    print(_dice(pixel, truth), _dice(patch, truth), _dice(coarse, truth))
    assert _dice(pixel, truth) > _dice(coarse, truth) + 0.02
    assert _dice(pixel, truth) >= _dice(patch, truth) - 0.01


@pytest.mark.slow
def test_cancelling_the_pixel_stage_keeps_the_patch_outline(refined, tmp_path):
    import shutil

    from protorefine.annotations import read_geojson
    from protorefine.project import Project
    from protorefine.project.pipeline import Pipeline

    project, case, _ = refined
    copy = tmp_path / "p"
    shutil.copytree(project.folder, copy)
    p = Project.open(copy)
    p.set_config(p.config.replace(pixel_threshold=0.45))  # the pixel stage must run again
    assert not p.stage_done("pixels") and p.stage_done("output")
    with pytest.raises(CancelledError):
        Pipeline(p).run(cancel=lambda: True)
    assert not p.stage_done("pixels") and p.pixel_probability("s1") is None
    patch = read_geojson(p.stage_file("output", "{slide}.geojson", "s1"))
    assert p.refined_annotations("s1").union().equals(patch.union())


def test_probability_pyramid_levels_halve_and_read_back(tmp_path):
    from protorefine.project.pyramid import CHUNK, read_pyramid, write_pyramid

    rng = np.random.default_rng(0)
    values = rng.random((2 * CHUNK + 77, CHUNK + 9)).astype(np.float32)
    n = write_pyramid(values, tmp_path / "p.zarr")
    levels = read_pyramid(tmp_path / "p.zarr")
    assert n == len(levels) == 3  # 1101x521 -> 551x261 -> 276x131 (fits one chunk)
    assert [lv.shape for lv in levels] == [(1101, 521), (551, 261), (276, 131)]
    np.testing.assert_allclose(levels[0][:], values, atol=1e-3)  # float16
    half = values[:1100, :520].reshape(550, 2, 260, 2).mean((1, 3))
    np.testing.assert_allclose(levels[1][:550, :260], half, atol=2e-3)
    np.testing.assert_allclose(levels[1][550, 260], values[1100, 520], atol=1e-3)  # edge cell
    (tmp_path / "p.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(ProtorefineError, match="p.zarr: the map pyramid does not read back"):
        read_pyramid(tmp_path / "p.zarr")


@pytest.mark.slow
def test_a_damaged_probability_pyramid_makes_the_stage_run_again(refined, tmp_path):
    import shutil

    from protorefine.project import Project
    from protorefine.project.stages import DamagedFileError

    project, _, _ = refined
    levels, cell0 = project.pixel_pyramid("s1")
    assert len(levels) == 1 and levels[0].shape == (64, 64) and cell0 == 16
    copy = tmp_path / "p"
    shutil.copytree(project.folder, copy)
    p = Project.open(copy)
    shutil.rmtree(p.stage_file("pixels", "{slide}_pixels.zarr", "s1") / "0")
    with pytest.raises(DamagedFileError, match="s1_pixels.zarr.*run refine again"):
        p.pixel_probability("s1")
    assert not p.stage_done("pixels") and p.stage_done("output")


def test_a_large_probability_map_is_shown_as_a_multiscale_layer(tmp_path):
    from protorefine.napari.layers import pixel_layer
    from protorefine.project.pyramid import read_pyramid, write_pyramid

    write_pyramid(np.full((1200, 900), 0.25, np.float32), tmp_path / "big.zarr")
    levels = read_pyramid(tmp_path / "big.zarr")
    layer = pixel_layer("pixel tumour probability", levels, cell0=32.0, s=0.25)
    assert layer.multiscale and len(layer.data) == 3
    assert tuple(layer.scale) == (8.0, 8.0)  # 8 µm cells at 0.25 µm/px, shown in µm
    assert layer.data[1].shape == (600, 450) and not layer.visible
    small = pixel_layer("pixel tumour probability", [np.zeros((40, 40), np.float32)], 32.0, 1.0)
    assert not small.multiscale and small.data.shape == (40, 40)


def test_dense_features_skip_tiles_without_tissue(monkeypatch):
    img, _ = _he_image(512)
    slide = Slide.from_array(img, name="glass", mpp=0.5)
    grid = dense_grid(slide, mpp=0.5, cell=16)
    monkeypatch.setattr(dense, "TILE", 256)  # four tiles of 16x16 cells
    enc = DenseEncoder("cpu")
    tissue = np.zeros((grid.rows, grid.cols), bool)
    tissue[3, 20] = True  # one cell, in the top-right tile
    encoded = []
    monkeypatch.setattr(enc, "maps", lambda rgb, f=enc.maps: encoded.append(1) or f(rgb))
    some = dense_features(slide, grid, enc, tissue=tissue).astype(np.float32)
    assert len(encoded) == 1
    every = dense_features(slide, grid, enc).astype(np.float32)
    np.testing.assert_array_equal(some[:16, 16:], every[:16, 16:])
    assert not some[16:].any() and not some[:, :16].any()


def test_dense_features_written_to_a_memory_map_give_back_their_pages(monkeypatch, tmp_path):
    from numpy.lib.format import open_memmap

    img, _ = _he_image(512)
    slide = Slide.from_array(img, name="mm", mpp=0.5)
    grid = dense_grid(slide, mpp=0.5, cell=16)
    monkeypatch.setattr(dense, "TILE", 256)  # two tile rows: pages dropped after each
    enc = DenseEncoder("cpu")
    shape = (grid.rows, grid.cols, sum(BLOCK_WIDTHS))
    mm = open_memmap(tmp_path / "f.npy", mode="w+", dtype=np.float16, shape=shape)
    dense_features(slide, grid, enc, out=mm)
    mm.flush()
    del mm
    back = np.load(tmp_path / "f.npy", mmap_mode="r")
    in_memory = dense_features(slide, grid, enc)
    np.testing.assert_array_equal(np.asarray(back), in_memory)  # nothing lost by dropping
    dense.drop_pages(back[:3])  # a view of a memory map, read back after its pages went
    np.testing.assert_array_equal(np.asarray(back[:3]), in_memory[:3])
