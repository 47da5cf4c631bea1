"""``protorefine demo``: headless run (OME-Zarr + overlay PNG) and the docked napari window."""

from __future__ import annotations

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


def _yellow_fraction(png: Path) -> float:
    from skimage.io import imread

    img = imread(png)[..., :3].astype(int)
    yellow = (img[..., 0] > 200) & (img[..., 1] > 170) & (img[..., 2] < 60)
    return float(yellow.mean())


def test_headless_demo_writes_zarr_and_overlay(small_cohort, tmp_path: Path, capsys) -> None:
    from protorefine.slides import open_slide

    assert main(["demo", "--headless", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "--headless" in out.splitlines()[0]
    png = tmp_path / "synthetic_01_overlay.png"
    assert png.exists()
    assert 0.002 < _yellow_fraction(png) < 0.2, "the coarse outline must be drawn on the thumbnail"
    slide = open_slide(tmp_path / "slides" / "synthetic_01.zarr")
    assert slide.shape == SMALL[0] and slide.mpp == pytest.approx(0.5)


def test_demo_without_display_says_so_and_runs_headless(
    small_cohort, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(cli_demo.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "no display" in lines[0]
    assert (tmp_path / "synthetic_01_overlay.png").exists()


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
