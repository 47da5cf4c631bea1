"""open_slide over real SVS files and synthetic files of every supported format; bad input; tissue mask."""

from __future__ import annotations

import shutil
from pathlib import Path

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import skimage.io
import tifffile
import zarr
from scipy import ndimage as ndi

from protorefine.cli import main as cli_main
from protorefine.errors import ProtorefineError
from protorefine.slides import Slide, convert_to_ome_zarr, open_slide, tissue_mask
from protorefine.synthetic import synthetic_slide


def _image(h: int = 600, w: int = 800, seed: int = 0) -> np.ndarray:
    """A small RGB test image with structure (gradients + noise) so misplaced pixels show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(yy * 255 // h), (xx * 255 // w), ((yy + xx) % 256)], axis=-1)
    img = img + rng.integers(0, 20, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _pyramid(img: np.ndarray, n: int) -> list[np.ndarray]:
    out = [img]
    for _ in range(n - 1):
        prev = out[-1]
        h, w = prev.shape[0] // 2 * 2, prev.shape[1] // 2 * 2
        out.append(prev[:h:2, :w:2].copy())
    return out


def write_pyramidal_tiff(path: Path, img: np.ndarray, levels: int = 3, mpp: float = 0.25) -> list:
    """A tiled pyramidal TIFF (SubIFDs) with resolution tags in centimetres."""
    pyr = _pyramid(img, levels)
    res = 1e4 / mpp
    with tifffile.TiffWriter(path) as tw:
        for i, lvl in enumerate(pyr):
            tw.write(
                lvl,
                photometric="rgb",
                tile=(128, 128),
                compression="zlib",
                subifds=levels - 1 if i == 0 else None,
                subfiletype=1 if i else 0,
                resolution=(res / 2**i, res / 2**i),
                resolutionunit="CENTIMETER",
            )
    return pyr


def write_ome_tiff(path: Path, img: np.ndarray, mpp: float = 0.5) -> list:
    """A pyramidal OME-TIFF as tifffile writes it, with PhysicalSizeX."""
    pyr = _pyramid(img, 2)
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(
            pyr[0],
            photometric="rgb",
            tile=(128, 128),
            subifds=1,
            metadata={"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp},
        )
        tw.write(pyr[1], photometric="rgb", tile=(128, 128), subfiletype=1)
    return pyr


# --------------------------------------------------------------------------- real slides


def test_cmu_svs_shape_mpp_associated_pixels(slides_dir: Path) -> None:
    path = slides_dir / "CMU-1-Small-Region.svs"
    slide = open_slide(path)
    assert slide.name == "CMU-1-Small-Region"
    assert slide.shape == (2967, 2220)  # (height, width): the file is 2220 wide, 2967 high
    assert len(slide.levels) == 1
    assert slide.mpp == pytest.approx(0.499)
    assert set(slide.associated) == {"label", "macro", "thumbnail"}
    assert slide.associated["macro"].shape == (431, 1280, 3)
    lvl = slide.levels[0]
    assert isinstance(lvl, da.Array) and lvl.dtype == np.uint8 and lvl.shape == (2967, 2220, 3)
    np.testing.assert_array_equal(np.asarray(lvl), tifffile.imread(path))
    # a region read through the Slide API matches too, with white outside the slide
    region = slide.read_region(0, 2900, 2200, 100, 40)
    np.testing.assert_array_equal(region[:67, :20], tifffile.imread(path)[2900:, 2200:])
    assert (region[67:] == 255).all() and (region[:, 20:] == 255).all()


def test_tcga_svs_two_levels_jpeg2000_pixels(slides_dir: Path) -> None:
    path = slides_dir / "TCGA-CR-7395-01A-01-TS1.svs"
    slide = open_slide(path)
    assert slide.shape == (3567, 4443)
    assert [lvl.shape for lvl in slide.levels] == [(3567, 4443, 3), (1783, 2221, 3)]
    assert slide.downsamples[1] == pytest.approx(2.0, abs=0.01)
    assert slide.mpp is None  # the file's description carries no MPP
    assert "thumbnail" in slide.associated
    for i, lvl in enumerate(slide.levels):
        np.testing.assert_array_equal(np.asarray(lvl), tifffile.imread(path, series=0, level=i))


# --------------------------------------------------------------------------- formats


def _make(kind: str, folder: Path) -> tuple[Path, list[np.ndarray], float | None]:
    """Write a test file of ``kind``; return its path, expected levels and mpp."""
    img = _image()
    if kind == "flat-tiff":
        path = folder / "flat.tif"
        tifffile.imwrite(path, img, photometric="rgb", rowsperstrip=64)
        return path, [img], None
    if kind == "gray-tiff":
        path = folder / "gray.tiff"
        tifffile.imwrite(path, img[..., 0])
        return path, [np.repeat(img[..., :1], 3, axis=2)], None
    if kind == "pyramidal-tiff":
        path = folder / "pyr.tif"
        return path, write_pyramidal_tiff(path, img, 3, mpp=0.25), 0.25
    if kind == "ome-tiff":
        path = folder / "slide.ome.tif"
        return path, write_ome_tiff(path, img, mpp=0.5), 0.5
    if kind == "png":
        path = folder / "img.png"
        skimage.io.imsave(path, img, check_contrast=False)
        return path, [img], None
    if kind == "rgba-png":
        path = folder / "rgba.png"
        rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 128, np.uint8)], axis=2)
        skimage.io.imsave(path, rgba, check_contrast=False)
        return path, [img], None
    if kind == "jpeg":
        path = folder / "img.jpg"
        iio.imwrite(path, img, quality=95)
        # JPEG is lossy: the reference is the decoded file, not the array written
        return path, [np.asarray(skimage.io.imread(path))], None
    if kind == "ome-zarr":
        src = Slide.from_array(img, name="src", mpp=0.75)
        path = convert_to_ome_zarr(src, folder / "roundtrip.zarr", tile=256, min_size=128)
        return path, _pyramid(img, 1), 0.75
    raise AssertionError(kind)


FORMATS = [
    "flat-tiff",
    "gray-tiff",
    "pyramidal-tiff",
    "ome-tiff",
    "png",
    "rgba-png",
    "jpeg",
    "ome-zarr",
]


@pytest.mark.parametrize("kind", FORMATS)
def test_open_formats(kind: str, tmp_path: Path) -> None:
    path, expected, mpp = _make(kind, tmp_path)
    slide = open_slide(path)
    assert slide.shape == expected[0].shape[:2]
    for lvl in slide.levels:
        assert lvl.ndim == 3 and lvl.shape[2] == 3 and lvl.dtype == np.uint8
    for lvl, ref in zip(slide.levels, expected, strict=False):
        np.testing.assert_array_equal(np.asarray(lvl), ref)
    if kind == "pyramidal-tiff":
        assert [lvl.shape[:2] for lvl in slide.levels] == [e.shape[:2] for e in expected]
    if kind == "ome-zarr":
        assert slide.backend == "ome-zarr"
        assert [lvl.shape[:2] for lvl in slide.levels] == [
            (600, 800),
            (300, 400),
            (150, 200),
            (75, 100),
        ]
    assert slide.mpp == (pytest.approx(mpp) if mpp else None)
    # the backend's fast region reads give exactly the lazy levels' pixels
    if kind.endswith("tiff"):
        assert slide.region_reader is not None
    for i, ref in enumerate(expected):
        np.testing.assert_array_equal(slide.read_region(i, 0, 0, *ref.shape[:2]), ref)
        part = ref[37:187, 101:231]
        region = slide.read_region(i, 37, 101, 150, 130)
        np.testing.assert_array_equal(region[: part.shape[0], : part.shape[1]], part)
    assert slide.name == {"ome-tiff": "slide", "ome-zarr": "roundtrip"}.get(kind, path.stem)


def test_levels_are_lazy(slides_dir: Path) -> None:
    slide = open_slide(slides_dir / "TCGA-CR-7395-01A-01-TS1.svs")
    # dask arrays over the file's tiles: a small read decodes only a few chunks
    lvl = slide.levels[0]
    assert lvl.numblocks[0] > 1 and lvl.numblocks[1] > 1
    assert lvl[:10, :10].compute().shape == (10, 10, 3)


# --------------------------------------------------------------------------- bad input


def _assert_one_line(exc: pytest.ExceptionInfo, name: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert name in msg


def test_broken_svs(slides_dir: Path) -> None:
    with pytest.raises(ProtorefineError) as exc:
        open_slide(slides_dir / "broken.svs")
    _assert_one_line(exc, "broken.svs")
    assert "TIFF" in str(exc.value)


@pytest.mark.parametrize("fraction", [0.3, 0.7, 0.97])
def test_truncated_tiff(tmp_path: Path, fraction: float) -> None:
    good = tmp_path / "good.tif"
    write_pyramidal_tiff(good, _image(1000, 1000), 3)
    data = good.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ProtorefineError) as exc:
        open_slide(cut)
    _assert_one_line(exc, "cut.tif")


def test_truncated_real_svs(slides_dir: Path, tmp_path: Path) -> None:
    data = (slides_dir / "CMU-1-Small-Region.svs").read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ProtorefineError) as exc:
        open_slide(cut)
    _assert_one_line(exc, "cut.svs")
    assert "truncated" in str(exc.value)


def test_corrupt_tile_data_fails_at_open(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.tif"
    tifffile.imwrite(path, _image(256, 256), photometric="rgb", tile=(128, 128), compression="jpeg")
    with tifffile.TiffFile(path) as tf:
        offset, count = tf.pages[0].dataoffsets[0], tf.pages[0].databytecounts[0]
    raw = bytearray(path.read_bytes())
    raw[offset : offset + count] = b"\x00" * count
    path.write_bytes(bytes(raw))
    with pytest.raises(ProtorefineError) as exc:
        open_slide(path)
    _assert_one_line(exc, "corrupt.tif")
    assert "decode" in str(exc.value)


def test_unsupported_missing_and_plain_folder(tmp_path: Path) -> None:
    other = tmp_path / "notes.docx"
    other.write_bytes(b"hello")
    with pytest.raises(ProtorefineError) as exc:
        open_slide(other)
    _assert_one_line(exc, "notes.docx")
    assert "unsupported" in str(exc.value)

    with pytest.raises(ProtorefineError) as exc:
        open_slide(tmp_path / "absent.svs")
    _assert_one_line(exc, "absent.svs")
    assert "not found" in str(exc.value)

    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "a.txt").write_text("x")
    with pytest.raises(ProtorefineError) as exc:
        open_slide(folder)
    _assert_one_line(exc, "plain")

    # a zarr group without NGFF metadata is not an OME-Zarr image either
    z = zarr.open_group(tmp_path / "bare.zarr", mode="w")
    z.create_array("0", shape=(10, 10), dtype=np.uint8)
    with pytest.raises(ProtorefineError) as exc:
        open_slide(tmp_path / "bare.zarr")
    _assert_one_line(exc, "bare.zarr")
    assert "OME-Zarr" in str(exc.value)


def test_bad_png(tmp_path: Path) -> None:
    path = tmp_path / "fake.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(ProtorefineError) as exc:
        open_slide(path)
    _assert_one_line(exc, "fake.png")


def test_cli_convert_bad_input_exits_2(slides_dir: Path, tmp_path: Path, capsys) -> None:
    code = cli_main(["convert", str(slides_dir / "broken.svs"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("protorefine: error:") and "broken.svs" in err[0]
    assert not (tmp_path / "out" / "broken.zarr").exists()


# --------------------------------------------------------------------------- tissue mask


def test_tissue_mask_real_slide(slides_dir: Path) -> None:
    slide = open_slide(slides_dir / "CMU-1-Small-Region.svs")
    mask, down = tissue_mask(slide, max_size=1024)
    assert mask.dtype == bool and max(mask.shape) <= 1024
    assert down == pytest.approx(slide.shape[1] / mask.shape[1])
    assert 0.15 < mask.mean() < 0.6  # a strip of skin on white glass
    assert not mask[:40, :40].any()  # top-left corner is glass
    # where the mask says tissue the thumbnail is clearly darker than where it says glass
    thumb = np.asarray(slide.levels[0][:: int(down), :: int(down)])[
        : mask.shape[0], : mask.shape[1]
    ]
    assert thumb[mask].mean() < thumb[~mask].mean() - 40


def test_tissue_mask_synthetic_white_background_and_full_tissue() -> None:
    slide, truth, d = synthetic_slide((1024, 1024), seed=4, tile=256)
    mask, down = tissue_mask(slide, max_size=256)
    assert mask.shape == (256, 256) and down == pytest.approx(4.0)
    # tumour is tissue: tumour blocks (one block in from the blocky truth border) are in the mask
    inner = ndi.binary_erosion(truth)
    tumour = np.kron(inner, np.ones((4, 4), bool))[: mask.shape[0], : mask.shape[1]]
    assert mask[tumour].mean() > 0.99
    assert not mask[:8, :8].any() and not mask[-8:, -8:].any()  # glass corners
    assert 0.3 < mask.mean() < 0.95
    # the pale stroma is tissue too: what is not near-white is in the mask, glass is not
    thumb = np.asarray(slide.levels[0])[::4, ::4]
    not_white = thumb.min(axis=2) < 215
    assert mask[not_white].mean() > 0.95 and mask[~not_white].mean() < 0.1

    # a slide filled with tissue (no glass at all): the mask must not split the tissue
    crop = slide.read_region(0, 256, 256, 512, 512)
    assert (crop.min(axis=2) > 235).mean() < 0.2
    full = Slide.from_array(crop, name="full")
    fmask, _ = tissue_mask(full)
    assert fmask.mean() > 0.85


@pytest.mark.slow
def test_tissue_mask_keeps_pale_tumour(shared_data: Path) -> None:
    """Pale squamous carcinoma (OCDC tiles) and lymph-node metastases (CAMELYON tiles) are
    tissue: the mask keeps their tumour pixels (a split of pale from dark tissue used to
    drop up to 81 % of an OCDC tile's tumour)."""
    from skimage.io import imread

    kept = {}
    for cohort in ("ocdc", "camelyon-tiles"):
        for image in sorted((shared_data / cohort / "images").glob("*.jpg")):
            truth = imread(shared_data / cohort / "masks" / f"{image.stem}.png") > 127
            if truth.any():
                mask, _ = tissue_mask(open_slide(image))
                kept.setdefault(cohort, []).append(mask[truth].mean())
    assert len(kept["ocdc"]) == 10 and min(kept["ocdc"]) > 0.85
    assert np.mean(kept["camelyon-tiles"]) > 0.97


def test_tissue_mask_blank_slide() -> None:
    blank = Slide.from_array(np.full((300, 400, 3), 245, np.uint8), name="blank")
    mask, down = tissue_mask(blank)
    assert mask.shape == (300, 400) and down == 1.0
    assert not mask.any()


def test_tissue_mask_uses_small_level_lazily(tmp_path: Path) -> None:
    img = np.full((2048, 2048, 3), 245, np.uint8)
    img[512:1536, 512:1536] = (180, 90, 150)
    path = tmp_path / "p.tif"
    write_pyramidal_tiff(path, img, 3)
    slide = open_slide(path)
    mask, down = tissue_mask(slide, max_size=600)
    assert down == pytest.approx(4.0)
    assert mask.shape == (512, 512)
    assert mask[128:384, 128:384].all() and not mask[:100].any()


def test_open_slide_from_copied_zarr_folder(tmp_path: Path) -> None:
    src = Slide.from_array(_image(300, 300), name="x", mpp=0.5)
    out = convert_to_ome_zarr(src, tmp_path / "x.zarr", tile=128, min_size=64)
    moved = tmp_path / "renamed.ome.zarr"
    shutil.copytree(out, moved)
    slide = open_slide(moved)
    assert slide.name == "renamed" and slide.mpp == pytest.approx(0.5)


def test_openslide_backend_matches_tifffile(slides_dir: Path) -> None:
    pytest.importorskip("openslide")
    from protorefine.slides.openslide import open_openslide

    path = slides_dir / "CMU-1-Small-Region.svs"
    slide = open_openslide(path, "cmu")
    assert slide.backend == "openslide" and slide.shape == (2967, 2220)
    assert slide.mpp == pytest.approx(0.499)
    assert {"label", "macro", "thumbnail"} <= set(slide.associated)
    np.testing.assert_array_equal(np.asarray(slide.levels[0]), tifffile.imread(path))

    path = slides_dir / "TCGA-CR-7395-01A-01-TS1.svs"
    slide = open_openslide(path, "tcga")
    assert [lvl.shape for lvl in slide.levels] == [(3567, 4443, 3), (1783, 2221, 3)]
    np.testing.assert_array_equal(
        np.asarray(slide.levels[0][:1024, :1024]), tifffile.imread(path)[:1024, :1024]
    )
    # level 1 has a non-integer downsample (2.0005): OpenSlide resamples by < 0.5 px
    diff = np.abs(np.asarray(slide.levels[1]).astype(int) - tifffile.imread(path, level=1))
    assert diff.mean() < 5


def test_openslide_formats_need_the_extra_or_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "scan.mrxs"
    path.write_bytes(b"not a mirax file")
    with pytest.raises(ProtorefineError) as exc:
        open_slide(path)
    _assert_one_line(exc, "scan.mrxs")


def test_open_ome_zarr_written_by_ome_zarr_py(tmp_path: Path) -> None:
    # an NGFF 0.5 (zarr v3) image from ome-zarr-py's own writer, channel-first, in nanometres
    from ome_zarr.writer import write_image

    img = _image(300, 400)
    group = zarr.open_group(tmp_path / "other.ome.zarr", mode="w")
    write_image(
        np.moveaxis(img, 2, 0),
        group,
        axes=["c", "y", "x"],
        axes_units={"y": "nanometer", "x": "nanometer"},
        scale={"c": 1.0, "y": 250.0, "x": 250.0},
    )
    slide = open_slide(tmp_path / "other.ome.zarr")
    assert slide.name == "other" and slide.backend == "ome-zarr"
    assert slide.mpp == pytest.approx(0.25)
    assert len(slide.levels) >= 2 and slide.levels[1].shape[2] == 3
    np.testing.assert_array_equal(np.asarray(slide.levels[0]), img)


@pytest.mark.parametrize(
    ("resolution", "unit", "mpp"),
    [
        (25400 / 0.5, "INCH", 0.5),
        (1e4 / 0.25, "CENTIMETER", 0.25),
        (72, "INCH", None),
        (1, "NONE", None),
    ],
)
def test_mpp_from_resolution_tags(
    tmp_path: Path, resolution: float, unit: str, mpp: float | None
) -> None:
    path = tmp_path / "res.tif"
    tifffile.imwrite(
        path,
        _image(64, 64),
        photometric="rgb",
        resolution=(resolution, resolution),
        resolutionunit=unit,
    )
    got = open_slide(path).mpp
    assert got == (pytest.approx(mpp) if mpp else None)  # 72 dpi is a screen default, not a scan


def test_region_reads_are_thread_safe(slides_dir: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    path = slides_dir / "CMU-1-Small-Region.svs"
    ref = tifffile.imread(path)
    slide = open_slide(path)
    rng = np.random.default_rng(1)
    boxes = [(int(rng.integers(0, 2700)), int(rng.integers(0, 1950)), 256, 256) for _ in range(48)]

    def read(box):
        y, x, h, w = box
        return slide.read_region(0, y, x, h, w)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(read, boxes))
    for (y, x, h, w), got in zip(boxes, results, strict=True):
        np.testing.assert_array_equal(got, ref[y : y + h, x : x + w])


def test_reads_stay_out_of_global_dask_callbacks() -> None:
    """napari's global dask cache is not thread-safe (two threads on one chunk raise
    KeyError): reads from worker threads must not run global dask callbacks."""
    from concurrent.futures import ThreadPoolExecutor

    from dask.cache import Cache
    from dask.callbacks import Callback

    from protorefine.features.extract import RegionReader

    image = np.random.default_rng(3).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    slide = Slide.from_array(image, chunk=64)
    seen: list = []

    class Spy(Callback):
        def _pretask(self, key, dsk, state) -> None:
            seen.append(key)

    def read(k: int):
        y, x = (k * 37) % 400, (k * 53) % 400
        return (
            y,
            x,
            slide.read_region(0, y, x, 96, 96),
            RegionReader(slide.levels[0]).read(y, x, 96, 96),
        )

    with Cache(10**7), Spy():
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(read, range(64)))
        tissue_mask(slide)
    assert seen == []
    for y, x, a, b in results:
        np.testing.assert_array_equal(a, image[y : y + 96, x : x + 96])
        np.testing.assert_array_equal(b, image[y : y + 96, x : x + 96])


def test_ome_xml_with_entities_is_refused_by_name() -> None:
    """OME-XML is parsed with defusedxml: an entity declaration is refused, saying so."""
    from types import SimpleNamespace

    from protorefine.slides.tiff import _mpp_from_ome

    evil = (
        '<?xml version="1.0"?><!DOCTYPE OME [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        '<OME><Image><Pixels PhysicalSizeX="0.5" Name="&x;"/></Image></OME>'
    )
    tf = SimpleNamespace(ome_metadata=evil, filehandle=SimpleNamespace(path="/d/evil.ome.tif"))
    with pytest.raises(ProtorefineError, match=r"evil\.ome\.tif: .*entities / DTD not allowed"):
        _mpp_from_ome(tf)  # type: ignore[arg-type]


def test_tissue_mask_of_a_grayscale_slide_finds_the_tissue(tmp_path: Path) -> None:
    """A grayscale slide (a grey PNG, read as R = G = B) has no saturation: tissue is what is
    darker than the glass (it said "no tissue found")."""
    slide, _, _ = synthetic_slide((512, 512), seed=4, tile=256)
    rgb = np.asarray(slide.levels[0])
    grey = np.round(rgb.mean(axis=2)).astype(np.uint8)
    iio.imwrite(tmp_path / "grey.png", grey)
    mask, _ = tissue_mask(open_slide(tmp_path / "grey.png"))
    colour, _ = tissue_mask(slide)
    assert mask.any()
    agree = (mask == colour).mean()
    assert agree > 0.9, agree
    # a blank grey slide is still no tissue
    blank = Slide.from_array(np.full((300, 400, 3), 245, np.uint8), name="blank")
    assert not tissue_mask(blank)[0].any()
