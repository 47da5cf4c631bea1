"""``protorefine demo``: the headless run (a sample refined, the before/after picture and
result.json), the real H&E sample, and the docked napari window."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from protorefine import demo
from protorefine.cli import demo as cli_demo
from protorefine.cli import main

SMALL = ((768, 768), (512, 768), (768, 512))


@pytest.fixture
def small_cohort(monkeypatch):
    """Keep the demo quick in tests: small synthetic slides, same code path."""
    monkeypatch.setattr(demo, "COHORT_SHAPES", SMALL)
    monkeypatch.setattr(demo, "HEADLESS_SHAPES", SMALL[:1])


def _colour_fraction(png: Path, colour: tuple[int, int, int]) -> float:
    from skimage.io import imread

    img = imread(png)[..., :3].astype(int)
    return float((np.abs(img - np.array(colour)).max(axis=-1) < 40).mean())


def _yellow_fraction(png: Path) -> float:
    return _colour_fraction(png, demo.COARSE_COLOUR)


def _check_before_after(out: Path, sid: str, capsys_out: str) -> dict:
    """The picture and result.json a user gets: both outlines drawn, Dice given, paths said."""
    from skimage.io import imread

    png = out / f"{sid}_before_after.png"
    result = json.loads((out / "result.json").read_text())
    assert result["picture"] == str(png) and f"picture: {png}" in capsys_out
    coarse, refined = (result["scores"][k]["dice"] for k in ("coarse", "refined"))
    assert refined > coarse, "the refined outline must be closer to the truth than the coarse one"
    assert f"{coarse:.3f} (coarse) -> {refined:.3f} (refined)" in capsys_out
    img = imread(png)[..., :3]
    band = img[: img.shape[0] - img.shape[1]]  # the legend above the (square) thumbnail
    assert band.shape[0] > 40
    assert (band == 255).all(axis=-1).mean() > 0.5 and (band < 80).all(axis=-1).any()  # text
    assert 0.002 < _colour_fraction(png, demo.COARSE_COLOUR) < 0.2
    assert 0.002 < _colour_fraction(png, demo.REFINED_COLOUR) < 0.2
    return result


@pytest.mark.slow
def test_headless_demo_refines_and_writes_the_before_after_picture(
    small_cohort, tmp_path: Path, capsys
) -> None:
    from protorefine.refine.config import RefineConfig
    from protorefine.slides import open_slide

    args = ["demo", "--headless", "--sample", "synthetic", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "--headless" in out.splitlines()[0]
    result = _check_before_after(tmp_path, "synthetic_01", out)
    assert result["config"] == RefineConfig(patch_size=demo.DEMO_PATCH_SIZE).to_dict()
    assert demo.DEMO_PATCH_SIZE == RefineConfig().patch_size  # the product's defaults
    slide = open_slide(tmp_path / "slides" / "synthetic_01.zarr")
    assert slide.shape == SMALL[0] and slide.mpp == pytest.approx(0.5)


def test_demo_without_display_says_so_and_refines_the_real_sample(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """No display: one line says so, then the headless run on the real sample (the run
    itself is the slow test below)."""
    calls = []
    monkeypatch.setattr(cli_demo.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(
        cli_demo, "headless_demo", lambda out, cache, sample, progress: calls.append(sample) or 0
    )
    assert main(["demo", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "no display" in lines[0] and "real sample" in lines[0]
    assert calls == ["real"]


def test_the_real_sample_opens_with_its_outlines() -> None:
    from protorefine.annotations import rasterize, read_annotations, tumour_geometry
    from protorefine.evaluate import dice
    from protorefine.slides import open_slide

    files = demo.real_sample()
    slide = open_slide(files.slide)
    assert slide.shape == (1536, 1536) and slide.mpp == pytest.approx(0.5)
    assert len(slide.levels) == 2
    assert sum(p.stat().st_size for p in files.slide.parent.iterdir()) < 3_000_000
    pixels = np.asarray(slide.levels[1])
    assert pixels.std() > 20 and pixels.mean() < 220  # tissue, not glass
    masks = [
        rasterize(tumour_geometry(read_annotations(p, slide_shape=slide.shape)), slide.shape, 16)
        for p in (files.coarse, files.truth)
    ]
    assert 0.1 < masks[1].mean() < 0.7
    assert 0.7 < dice(*masks) < 0.85  # coarse, as pathologists draw them
    readme = (files.slide.parent / "README.md").read_text()
    assert "CC0" in readme and "CAMELYON" in readme


def test_napari_offers_the_real_sample() -> None:
    from protorefine.napari.sample import real_sample_slide

    (img, img_meta, img_kind), truth, coarse = real_sample_slide()
    assert img_kind == "image" and img_meta["multiscale"]
    assert img[0].shape[:2] == (1536, 1536)
    assert truth[2] == coarse[2] == "shapes"
    assert truth[1]["scale"] == coarse[1]["scale"] == img_meta["scale"]
    assert not truth[1]["visible"] and coarse[0] and truth[0]


@pytest.mark.slow
def test_headless_demo_on_the_real_sample(tmp_path: Path, capsys) -> None:
    t0 = time.perf_counter()
    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    result = _check_before_after(tmp_path, "camelyon_sample", out)
    assert result["sample"] == "real" and result["scores"]["refined"]["dice"] > 0.85
    assert time.perf_counter() - t0 < 600


def test_sample_cohort_reuses_converted_slides(tmp_path: Path) -> None:
    project, cohort = demo.make_sample_cohort(
        tmp_path / "a", SMALL[:2], slides_dir=tmp_path / "cache"
    )
    assert [s.id for s in project.slides] == ["synthetic_01", "synthetic_02"]
    assert all(
        project.coarse(s.id) is not None and len(project.coarse(s.id)) for s in project.slides
    )
    stamps = [p.stat().st_mtime_ns for p in cohort.slide_paths]
    _, again = demo.make_sample_cohort(tmp_path / "b", SMALL[:2], slides_dir=tmp_path / "cache")
    assert [p.stat().st_mtime_ns for p in again.slide_paths] == stamps


def test_overlay_marks_the_outline_where_it_is(tmp_path: Path) -> None:
    from protorefine.annotations import read_geojson

    project, cohort = demo.make_sample_cohort(tmp_path, SMALL[:1])
    sid = project.slides[0].id
    png = demo.overlay_png(project, sid, tmp_path / "o.png")
    from skimage.io import imread

    img = imread(png)[..., :3].astype(int)
    yellow = (img[..., 0] > 200) & (img[..., 1] > 170) & (img[..., 2] < 60)
    ys, xs = np.nonzero(yellow)
    minx, miny, maxx, maxy = project.coarse(sid).union().bounds
    ds = SMALL[0][1] / img.shape[1]
    assert xs.min() * ds == pytest.approx(max(minx, 0), abs=3 * ds)
    assert ys.max() * ds == pytest.approx(min(maxy, SMALL[0][0] - 1), abs=3 * ds)
    assert len(read_geojson(cohort.truth_paths[0]))


@pytest.mark.gui
def test_demo_window_has_project_and_docked_widgets(small_cohort, tmp_path: Path) -> None:
    import napari
    from napari.layers import Image, Shapes
    from napari.settings import get_settings

    from protorefine.napari.demo import open_demo_viewer

    prefs = dict(get_settings().plugins.extension2reader)

    viewer, state, docked = open_demo_viewer(tmp_path, show=False)
    try:
        assert {"Project and slides", "Coarse annotation"} <= set(docked)
        assert len(state.project.slides) == 3
        assert state.slide_id == "synthetic_01"
        # the result layers come as empty, hidden placeholders, one per event-loop turn
        from qtpy.QtWidgets import QApplication

        deadline = time.monotonic() + 30
        while state.placeholders_pending and time.monotonic() < deadline:
            QApplication.processEvents()
        assert not state.placeholders_pending
        images = [layer for layer in viewer.layers if isinstance(layer, Image)]
        shown = [im.name for im in images if not state.is_placeholder(im)]
        assert shown == ["synthetic_01"]
        assert state.grid_layers() == {}  # no results yet: nothing a user could take for one
        assert all(not im.visible for im in images if state.is_placeholder(im))
        coarse = viewer.layers["coarse"]
        assert isinstance(coarse, Shapes) and len(coarse.data) > 0
        table = docked["Project and slides"].table
        assert table.rowCount() == 3
    finally:
        viewer.close()
        napari.Viewer.close_all()
        get_settings().plugins.extension2reader = prefs


@pytest.mark.gui
def test_the_real_sample_is_in_naparis_sample_menu(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open_sample("protorefine", "camelyon")
    assert [type(layer).__name__ for layer in layers] == ["Image", "Shapes", "Shapes"]
    assert layers[0].data[0].shape[:2] == (1536, 1536)
    assert len(layers[2].data) >= 1 and layers[2].visible and not layers[1].visible
