"""napari reader, writer and sample data: layers a user would see, in the right place."""

from __future__ import annotations

import json
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

from protorefine.errors import ProtorefineError
from protorefine.napari.reader import get_reader
from protorefine.napari.writer import write_shapes

TCGA = "TCGA-CR-7395-01A-01-TS1.svs"
CMU = "CMU-1-Small-Region.svs"


def _read(path: Path) -> list:
    reader = get_reader(str(path))
    assert reader is not None, f"reader refused {path}"
    return reader(str(path))


def _square_geojson(path: Path, x0: float, y0: float, x1: float, y1: float) -> Path:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    fc = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
            }
        ],
    }
    path.write_text(json.dumps(fc))
    return path


def _pyramid_tiff(path: Path, size: int = 1024, mpp: float = 0.25) -> np.ndarray:
    """A small tiled pyramidal RGB TIFF (sub-IFDs) with a resolution tag; returns level 0."""
    import tifffile

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    res = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            img,
            tile=(256, 256),
            subifds=2,
            resolution=res,
            resolutionunit="CENTIMETER",
            photometric="rgb",
        )
        for d in (2, 4):
            tif.write(img[::d, ::d], tile=(256, 256), subfiletype=1, photometric="rgb")
    return img


# ---- slides -------------------------------------------------------------------------------


def test_reader_real_svs_two_levels(slides_dir: Path) -> None:
    ((data, meta, kind),) = _read(slides_dir / TCGA)
    assert kind == "image"
    assert meta["rgb"] and meta["multiscale"]
    assert [tuple(level.shape) for level in data] == [(3567, 4443, 3), (1783, 2221, 3)]
    assert all(isinstance(level, da.Array) for level in data), "levels must stay lazy"
    assert meta["name"] == "TCGA-CR-7395-01A-01-TS1"
    assert meta["contrast_limits"] == (0, 255)


def test_reader_real_svs_scale_is_mpp(slides_dir: Path) -> None:
    ((data, meta, _),) = _read(slides_dir / CMU)
    assert meta["scale"] == pytest.approx((0.499, 0.499), abs=1e-3)
    level0 = data[0] if meta["multiscale"] else data
    assert tuple(level0.shape) == (2967, 2220, 3)


def test_reader_broken_svs_one_line_error(slides_dir: Path) -> None:
    reader = get_reader(str(slides_dir / "broken.svs"))
    assert reader is not None
    with pytest.raises(ProtorefineError) as err:
        reader(str(slides_dir / "broken.svs"))
    assert "broken.svs" in str(err.value) and "\n" not in str(err.value)


def test_reader_declines_what_it_cannot_read(tmp_path: Path) -> None:
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    plain_json = tmp_path / "settings.json"
    plain_json.write_text('{"answer": 42}')
    assert get_reader(str(other)) is None
    assert get_reader(str(plain_json)) is None
    assert get_reader(str(tmp_path)) is None  # a plain folder is not a .zarr


def test_reader_pyramidal_tiff(tmp_path: Path) -> None:
    img = _pyramid_tiff(tmp_path / "pyr.tif")
    ((data, meta, _),) = _read(tmp_path / "pyr.tif")
    assert meta["multiscale"]
    assert [level.shape[:2] for level in data] == [(1024, 1024), (512, 512), (256, 256)]
    assert meta["scale"] == pytest.approx((0.25, 0.25))
    np.testing.assert_array_equal(np.asarray(data[0][100:200, 300:400]), img[100:200, 300:400])


def test_reader_png(tmp_path: Path) -> None:
    from skimage.io import imsave

    img = np.zeros((300, 200, 3), np.uint8)
    img[50:100, 20:60] = (200, 30, 90)
    imsave(tmp_path / "tile.png", img, check_contrast=False)
    ((data, meta, kind),) = _read(tmp_path / "tile.png")
    level0 = data[0] if meta["multiscale"] else data
    assert kind == "image" and meta["rgb"]
    np.testing.assert_array_equal(np.asarray(level0), img)
    assert meta["scale"] == (1.0, 1.0)  # no mpp in a PNG: world unit is pixels


def test_reader_ome_zarr_folder(tmp_path: Path) -> None:
    from protorefine.slides import convert_to_ome_zarr

    img = _pyramid_tiff(tmp_path / "src.tif", size=2048)
    out = convert_to_ome_zarr(tmp_path / "src.tif", tmp_path / "src.zarr")
    ((data, meta, _),) = _read(Path(out))
    assert meta["multiscale"] and len(data) >= 2
    assert data[0].shape[:2] == (2048, 2048)
    assert meta["scale"] == pytest.approx((0.25, 0.25))
    np.testing.assert_array_equal(np.asarray(data[0][:64, :64]), img[:64, :64])


# ---- annotations ---------------------------------------------------------------------------


def test_reader_geojson_as_shapes_in_level0_pixels(tmp_path: Path) -> None:
    path = _square_geojson(tmp_path / "outline.geojson", 100, 50, 300, 150)
    ((data, meta, kind),) = _read(path)
    assert kind == "shapes"
    assert len(data) == 1
    yx = np.asarray(data[0])
    assert yx[:, 0].min() == pytest.approx(50) and yx[:, 0].max() == pytest.approx(150)
    assert yx[:, 1].min() == pytest.approx(100) and yx[:, 1].max() == pytest.approx(300)


def test_reader_asap_xml_as_shapes(tmp_path: Path) -> None:
    xml = tmp_path / "tumor_001.xml"
    xml.write_text(
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        '<Annotation Name="_0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58"><Coordinates>'
        '<Coordinate Order="0" X="10" Y="20"/><Coordinate Order="1" X="110" Y="20"/>'
        '<Coordinate Order="2" X="110" Y="220"/><Coordinate Order="3" X="10" Y="220"/>'
        "</Coordinates></Annotation></Annotations>"
        '<AnnotationGroups><Group Name="_0" PartOfGroup="None" Color="#ff0000"><Attributes/></Group>'
        "</AnnotationGroups></ASAP_Annotations>"
    )
    ((data, _, kind),) = _read(xml)
    assert kind == "shapes" and len(data) == 1
    yx = np.asarray(data[0])
    assert (yx[:, 0].min(), yx[:, 0].max()) == pytest.approx((20, 220))
    assert (yx[:, 1].min(), yx[:, 1].max()) == pytest.approx((10, 110))


def test_reader_geojson_takes_scale_of_slide_beside_it(tmp_path: Path) -> None:
    _pyramid_tiff(tmp_path / "case.tif", mpp=0.5)
    path = _square_geojson(tmp_path / "case.geojson", 100, 50, 300, 150)
    ((_, meta, _),) = _read(path)
    assert meta["scale"] == pytest.approx((0.5, 0.5))


def test_writer_round_trip_honours_scale(tmp_path: Path) -> None:
    from protorefine.annotations import read_geojson

    square = np.array([[50.0, 100.0], [50.0, 300.0], [150.0, 300.0], [150.0, 100.0]])
    # a Shapes layer drawn at scale 0.5 µm/px over a slide of 0.5 µm/px: data are level-0 pixels
    meta = {"scale": (0.5, 0.5), "translate": (0.0, 0.0), "shape_type": ["polygon"], "metadata": {}}
    out = write_shapes(str(tmp_path / "out.geojson"), [square], meta)
    annset = read_geojson(out[0])
    assert annset.annotations[0].geometry.bounds == pytest.approx((100, 50, 300, 150))
    # the same outline in world units (µm) on a layer of scale 1 tagged with the slide's pixel scale
    meta2 = {
        "scale": (1.0, 1.0),
        "translate": (0.0, 0.0),
        "shape_type": ["polygon"],
        "metadata": {"protorefine_pixel_scale": 0.5},
    }
    out2 = write_shapes(str(tmp_path / "out2.geojson"), [square * 0.5], meta2)
    assert read_geojson(out2[0]).annotations[0].geometry.bounds == pytest.approx(
        (100, 50, 300, 150)
    )


def test_writer_reader_round_trip(tmp_path: Path) -> None:
    path = _square_geojson(tmp_path / "a.geojson", 10, 20, 400, 500)
    ((data, meta, _),) = _read(path)
    out = write_shapes(str(tmp_path / "b.geojson"), data, meta)
    ((data2, _, _),) = _read(Path(out[0]))
    np.testing.assert_allclose(
        np.sort(np.asarray(data2[0]), axis=0), np.sort(np.asarray(data[0]), axis=0)
    )


def test_writer_refuses_empty_layer(tmp_path: Path) -> None:
    with pytest.raises(ProtorefineError, match="no polygons"):
        write_shapes(str(tmp_path / "x.geojson"), [], {"scale": (1, 1), "shape_type": []})
    assert not (tmp_path / "x.geojson").exists()


# ---- sample data and the viewer -------------------------------------------------------------


def test_sample_data_slide_and_outline_overlap() -> None:
    from protorefine.napari.sample import sample_slide

    (img, img_meta, img_kind), (shapes, sh_meta, sh_kind) = sample_slide()
    assert (img_kind, sh_kind) == ("image", "shapes")
    level0 = img[0] if img_meta["multiscale"] else img
    assert level0.shape[:2] == (4096, 4096)
    assert shapes, "the sample must come with a coarse outline"
    assert img_meta["scale"] == sh_meta["scale"]
    allv = np.concatenate([np.asarray(s) for s in shapes])
    # the outline lies over the slide (a coarse outline may overshoot the edge a little)
    assert allv.min() >= -0.05 * 4096 and allv.max() <= 1.05 * 4096
    assert np.ptp(allv, axis=0).min() > 0.1 * 4096


@pytest.mark.gui
def test_viewer_opens_slide_then_annotation_aligned(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    _pyramid_tiff(tmp_path / "slide.tif", mpp=0.5)
    (image,) = viewer.open(str(tmp_path / "slide.tif"), plugin="protorefine")
    other = tmp_path / "elsewhere"
    other.mkdir()
    path = _square_geojson(other / "outline.geojson", 100, 50, 300, 150)
    (shapes,) = viewer.open(str(path), plugin="protorefine")
    assert image.multiscale and image.rgb
    # the outline's corner (x=100, y=50 level-0 px) lands on the same world point as that pixel
    corner = np.asarray(shapes.data[0]).min(axis=0)
    np.testing.assert_allclose(shapes.data_to_world(corner), image.data_to_world([50, 100]))


@pytest.mark.gui
def test_viewer_open_broken_slide_changes_nothing(make_napari_viewer, slides_dir: Path) -> None:
    viewer = make_napari_viewer()
    with pytest.raises(ProtorefineError, match="broken.svs"):
        viewer.open(str(slides_dir / "broken.svs"), plugin="protorefine")
    assert len(viewer.layers) == 0


@pytest.mark.gui
def test_sample_menu_contribution(make_napari_viewer) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open_sample("protorefine", "synthetic")
    kinds = sorted(type(layer).__name__ for layer in layers)
    assert kinds == ["Image", "Shapes"]


@pytest.mark.gui
def test_save_shapes_layer_from_viewer(make_napari_viewer, tmp_path: Path) -> None:
    from protorefine.annotations import read_geojson

    viewer = make_napari_viewer()
    _pyramid_tiff(tmp_path / "slide.tif", mpp=0.5)
    viewer.open(str(tmp_path / "slide.tif"), plugin="protorefine")
    layer = viewer.add_shapes(
        [np.array([[10.0, 20.0], [10.0, 200.0], [100.0, 200.0], [100.0, 20.0]])],
        shape_type="polygon",
        scale=(0.5, 0.5),
    )
    viewer.layers.selection.active = layer
    written = viewer.layers.save(
        str(tmp_path / "drawn.geojson"), selected=True, plugin="protorefine"
    )
    assert written == [str(tmp_path / "drawn.geojson")]
    annset = read_geojson(tmp_path / "drawn.geojson")
    # drawn over a 0.5 um/px slide: the file holds level-0 pixels
    assert annset.annotations[0].geometry.bounds == pytest.approx((20, 10, 200, 100))


def test_grid_layer_cells_cover_their_patches() -> None:
    from types import SimpleNamespace

    from napari.layers import Image

    from protorefine.napari.layers import TUMOUR_LABEL, grid_layer

    mpp, step = 0.5, 64.0  # 64 level-0 pixels per grid cell
    rc = np.array([[0, 0], [2, 3]])
    grid = SimpleNamespace(downsample=step, rc=rc, yx=rc * int(step))
    values = np.zeros((4, 5), bool)
    values[2, 3] = True
    layer = grid_layer("refined", values, grid, mpp)
    image = Image(np.zeros((256, 320, 3), np.uint8), rgb=True, scale=(mpp, mpp))
    assert layer.data[2, 3] == TUMOUR_LABEL and layer.data.sum() == TUMOUR_LABEL
    # the outer corners of cell (2, 3) sit on the outer corners of its 64 x 64 patch
    y0, x0 = 2 * step, 3 * step
    np.testing.assert_allclose(
        layer.data_to_world([2 - 0.5, 3 - 0.5]), image.data_to_world([y0 - 0.5, x0 - 0.5])
    )
    np.testing.assert_allclose(
        layer.data_to_world([2 + 0.5, 3 + 0.5]),
        image.data_to_world([y0 + step - 0.5, x0 + step - 0.5]),
    )
