"""Files protorefine writes, as other tools read them: the mask TIFF's pixel size (tifffile,
tiffslide), the napari reader laying the mask over its slide, an ASAP export in the
coarse file's CAMELYON16 groups."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
from shapely.geometry import box

from protorefine.annotations import Annotation, AnnotationSet, read_mask_array, write_mask
from protorefine.napari.reader import get_reader, read_paths

SLIDE = (1000, 1200)  # level-0 (H, W)


def _outline() -> AnnotationSet:
    return AnnotationSet([Annotation(box(160, 80, 480, 400), "Tumor")])


@pytest.mark.parametrize("size", [SLIDE, (40, 50)])
def test_mask_tiff_carries_its_pixel_size_and_is_tiled(tmp_path: Path, size) -> None:
    """XResolution / YResolution in pixels per cm from the slide mpp x downsample, tiled
    even when small, read back in place by protorefine."""
    path = write_mask(_outline(), tmp_path / "s1_mask.tif", size, 8, mpp=0.25)
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        assert page.is_tiled
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        x = page.tags["XResolution"].value
        y = page.tags["YResolution"].value
    assert x[0] / x[1] == pytest.approx(1e4 / 2.0) and y[0] / y[1] == pytest.approx(1e4 / 2.0)
    mask, d, _ = read_mask_array(path)
    assert d == 8 and mask.shape == (-(-size[0] // 8), -(-size[1] // 8))


def test_tiffslide_reads_the_mask_pixel_size(tmp_path: Path) -> None:
    tiffslide = pytest.importorskip("tiffslide")
    path = write_mask(_outline(), tmp_path / "s1_mask.tif", SLIDE, 8, mpp=0.25)
    with tiffslide.TiffSlide(path) as ts:
        assert ts.properties["tiffslide.mpp-x"] == pytest.approx(2.0)
        assert ts.properties["tiffslide.mpp-y"] == pytest.approx(2.0)
        assert ts.dimensions == (150, 125)


def test_png_mask_carries_its_pixel_size(tmp_path: Path) -> None:
    from PIL import Image

    path = write_mask(_outline(), tmp_path / "s1_mask.png", SLIDE, 8, mpp=0.25)
    with Image.open(path) as im:
        dpi = im.info["dpi"]
    assert dpi[0] == pytest.approx(25400 / 2.0, rel=1e-3)


def test_napari_reader_lays_the_mask_over_its_slide(tmp_path: Path) -> None:
    """A protorefine mask opens as a Labels layer, one mask pixel over its 8x8 level-0
    pixels of the slide (scale = downsample x slide scale), not as an RGB image at scale 1."""
    path = write_mask(_outline(), tmp_path / "s1_mask.tif", SLIDE, 8, mpp=0.25)
    assert get_reader(str(path)) is not None
    ((data, meta, kind),) = read_paths(str(path))
    assert kind == "labels" and data.shape == (125, 150)
    s, d = 0.25, 8
    assert meta["scale"] == pytest.approx((d * s, d * s))
    # mask pixel (r, c) covers level-0 pixels [r d, (r+1) d); the slide layer puts level-0
    # pixel i's centre at world i s, so the block's centre is at ((r + 0.5) d - 0.5) s
    r, c = 10, 20  # inside the outline: level-0 y 80..88, x 160..168
    assert data[r, c] > 0 and data[9, 19] == 0
    world = np.asarray((r, c)) * meta["scale"] + np.asarray(meta["translate"])
    assert np.allclose(world, (((r + 0.5) * d - 0.5) * s, ((c + 0.5) * d - 0.5) * s))
    assert tuple(meta["units"]) == ("micrometer", "micrometer")


def test_a_plain_tiff_still_opens_as_a_slide(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8))
    ((_, meta, kind),) = read_paths(str(path))
    assert kind == "image" and meta["rgb"]


@pytest.mark.slow
def test_refine_exports_keep_camelyon_groups_and_the_mask_pixel_size(tmp_path: Path) -> None:
    """``refine --asap-xml --mask-downsample 8`` on a slide of 0.25 µm/px whose coarse
    outline is a CAMELYON16 file: the ASAP outline is in ``_0`` (holes ``_2``), the mask
    records 2 µm/px."""
    import imageio.v3 as iio

    from protorefine.annotations import read_geojson, write_asap_xml
    from protorefine.cli import main
    from refine_synth import write_slide_case

    case = write_slide_case(tmp_path / "case", size=1024)
    slide = tmp_path / "s1.tif"
    image = iio.imread(case["slide"])[..., :3]
    tifffile.imwrite(slide, image, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    coarse = read_geojson(case["coarse"])
    for a in coarse:
        a.properties["asap_group"] = "_0"
    write_asap_xml(coarse, tmp_path / "s1.xml")
    out = tmp_path / "out"
    fast = ["--patch-size", "64", "--encoder", "colour-texture", "--device", "cpu"]
    args = ["refine", str(slide), "--coarse", str(tmp_path / "s1.xml"), "--out", str(out), *fast]
    assert main([*args, "--asap-xml", "--mask-downsample", "8"]) == 0
    groups = {a.get("PartOfGroup") for a in ET.parse(out / "s1.xml").getroot().iter("Annotation")}
    assert "_0" in groups and groups <= {"_0", "_2"}
    with tifffile.TiffFile(out / "s1_mask.tif") as tif:
        x = tif.pages[0].tags["XResolution"].value
        assert tif.pages[0].is_tiled
    assert x[0] / x[1] == pytest.approx(1e4 / 2.0)


def test_manifest_patterns_cover_every_slide_file_the_library_opens() -> None:
    """napari offers protorefine for NDPI, MRXS, SCN, BIF, QPTIFF... as for SVS."""
    import yaml

    from protorefine.slides.dispatch import SUPPORTED

    manifest = yaml.safe_load((Path(__file__).resolve().parents[1] / "napari.yaml").read_text())
    (reader,) = manifest["contributions"]["readers"]
    patterns = set(reader["filename_patterns"])
    assert {f"*{s}" for s in SUPPORTED} <= patterns
    assert {"*.ndpi", "*.mrxs", "*.scn", "*.bif", "*.qptiff"} <= patterns


@pytest.mark.parametrize("suffix", [".mrxs", ".scn", ".bif"])
def test_openslide_formats_without_openslide_name_the_extra(tmp_path, monkeypatch, suffix) -> None:
    """The reader takes an OpenSlide format and, with OpenSlide absent, says in one line
    which extra to install instead of napari's 'no reader found'."""
    from protorefine.errors import ProtorefineError
    from protorefine.slides import openslide as openslide_backend

    monkeypatch.setattr(openslide_backend, "available", lambda: False)
    path = tmp_path / f"slide{suffix}"
    path.write_bytes(b"II*\x00" + bytes(64))
    reader = get_reader(str(path))
    assert reader is not None
    with pytest.raises(ProtorefineError) as e:
        reader(str(path))
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg
    assert "protorefine[openslide]" in msg


def test_tiff_family_slides_open_in_napari_without_openslide(tmp_path) -> None:
    """QPTIFF (like NDPI) is a TIFF that tifffile reads: it opens with no extra."""
    path = tmp_path / "slide.qptiff"
    tifffile.imwrite(path, np.full((64, 80, 3), 200, np.uint8))
    assert get_reader(str(tmp_path / "other.ndpi")) is not None
    reader = get_reader(str(path))
    assert reader is not None
    ((data, meta, kind),) = reader(str(path))
    assert kind == "image" and data.shape[:2] == (64, 80) and meta["name"] == "slide"
