"""NGFF labels written into a slide's OME-Zarr: readable, placed over the right patches, atomic."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from protorefine.errors import ProtorefineError
from protorefine.project.labels_export import write_grid_labels
from protorefine.slides import convert_to_ome_zarr, open_slide
from protorefine.slides.base import Slide


@pytest.fixture
def slide_zarr(tmp_path):
    """A small two-level OME-Zarr slide with mpp 0.5."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    slide = Slide.from_array(image, name="tiny", mpp=0.5)
    return convert_to_ome_zarr(slide, tmp_path / "tiny.zarr", min_size=64)


def test_labels_are_listed_scaled_and_read_back(slide_zarr):
    grid = np.zeros((10, 13), np.uint8)
    grid[2:5, 3:7] = 1
    out = write_grid_labels(
        slide_zarr, "refined", grid, 32.0, colors=[{"label-value": 1, "rgba": [255, 0, 0, 255]}]
    )
    assert out == slide_zarr / "labels" / "refined"
    listing = json.loads((slide_zarr / "labels" / ".zattrs").read_text())
    assert listing["labels"] == ["refined"]
    group = zarr.open_group(out, mode="r")
    attrs = dict(group.attrs)
    assert attrs["image-label"]["colors"][0]["label-value"] == 1
    ms = attrs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    tfs = {t["type"]: t for t in ms["datasets"][0]["coordinateTransformations"]}
    assert tfs["scale"]["scale"] == [1.0, 16.0, 16.0]  # 32 level-0 pixels of 0.5 um
    assert tfs["translation"]["translation"] == pytest.approx([0.0, 7.75, 7.75])
    data = np.asarray(zarr.open_array(out / ms["datasets"][0]["path"], mode="r"))
    assert data.shape == (1, 10, 13) and np.array_equal(data[0], grid)
    # the slide itself still opens, pixels untouched
    assert open_slide(slide_zarr).shape == (300, 400)


def test_rewriting_replaces_and_keeps_one_listing(slide_zarr):
    write_grid_labels(slide_zarr, "refined", np.ones((3, 3), np.uint8), 100.0)
    write_grid_labels(slide_zarr, "other", np.zeros((3, 3), np.uint8), 100.0)
    write_grid_labels(slide_zarr, "refined", np.full((3, 3), 2, np.uint8), 100.0)
    listing = json.loads((slide_zarr / "labels" / ".zattrs").read_text())
    assert listing["labels"] == ["other", "refined"]
    labels = slide_zarr / "labels" / "refined"
    path = dict(zarr.open_group(labels, mode="r").attrs)["multiscales"][0]["datasets"][0]["path"]
    data = np.asarray(zarr.open_array(labels / path, mode="r"))
    assert (data == 2).all()
    leftovers = [p.name for p in slide_zarr.iterdir() if p.name.startswith(".") and p.is_dir()]
    assert leftovers == []


def test_bad_targets_name_the_problem(tmp_path, slide_zarr):
    with pytest.raises(ProtorefineError, match="not a zarr"):
        write_grid_labels(tmp_path / "missing.zarr", "refined", np.zeros((2, 2), np.uint8), 8.0)
    with pytest.raises(ProtorefineError, match="2-D integer"):
        write_grid_labels(slide_zarr, "refined", np.zeros((2, 2), np.float32), 8.0)
    with pytest.raises(ProtorefineError, match="plain folder name"):
        write_grid_labels(slide_zarr, "../x", np.zeros((2, 2), np.uint8), 8.0)
    assert not (slide_zarr / "labels").exists()
