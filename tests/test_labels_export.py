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
    # the image's pyramid, scale only: placed as the image is by every NGFF reader
    image = dict(zarr.open_group(slide_zarr, mode="r").attrs)["multiscales"][0]["datasets"]
    assert [d["coordinateTransformations"] for d in ms["datasets"]] == [
        d["coordinateTransformations"] for d in image
    ]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [1.0, 0.5, 0.5]}
    ]
    data = np.asarray(zarr.open_array(out / ms["datasets"][0]["path"], mode="r"))
    # level-0 pixel (y, x) holds the 32-pixel cell it lies in
    assert data.shape == (1, 300, 400)
    assert np.array_equal(data[0], np.kron(grid, np.ones((32, 32), np.uint8))[:300, :400])
    half = np.asarray(zarr.open_array(out / ms["datasets"][1]["path"], mode="r"))
    assert half.shape == (1, 150, 200) and np.array_equal(half[0], data[0, ::2, ::2])
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
    assert (data[0, :, :300] == 2).all() and (data[0, :, 300:] == 0).all()  # 3 cells of 100
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


def test_napari_ome_zarr_places_the_labels_on_the_tissue(slide_zarr):
    """napari-ome-zarr (which applies only a dataset's first transformation) puts each label
    pixel where the image pixel it covers is: same world transform, same level-0 grid."""
    reader_module = pytest.importorskip("napari_ome_zarr._reader")
    grid = np.zeros((10, 13), np.uint8)
    grid[2:5, 3:7] = 1
    write_grid_labels(slide_zarr, "refined", grid, 32.0)
    layers = reader_module.napari_get_reader(str(slide_zarr))()
    kinds = [kind for _, _, kind in layers]
    assert "labels" in kinds and "image" in kinds
    image_data, image_meta, _ = layers[kinds.index("image")]
    labels_data, labels_meta, _ = layers[kinds.index("labels")]

    def world(meta, index):
        """World (y, x) of a level-0 pixel index (napari: affine after scale)."""
        scale = np.asarray(meta["scale"], dtype=float)[-2:]
        affine = meta.get("affine")
        shift = np.asarray(affine.translate, dtype=float)[-2:] if affine is not None else 0.0
        return np.asarray(index, dtype=float) * scale + shift

    # the cell (2, 3) covers level-0 pixels y 64..96, x 96..128; pixel (70, 100) is in it
    level0 = np.asarray(labels_data[0])
    assert level0[..., 70, 100].item() == 1 and level0[..., 63, 100].item() == 0
    assert np.allclose(world(labels_meta, (70, 100)), world(image_meta, (70, 100)))
    assert np.allclose(world(labels_meta, (70, 100)), (35.0, 50.0))  # 0.5 um per pixel
    assert labels_data[0].shape[-2:] == image_data[0].shape[-2:]
