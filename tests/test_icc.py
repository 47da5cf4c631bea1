"""Embedded ICC profiles: read from the slide, converted to sRGB for display only."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from protorefine.errors import ProtorefineError
from protorefine.napari import layers as L
from protorefine.napari.reader import read_slide
from protorefine.slides import open_slide
from protorefine.slides.base import compute
from protorefine.slides.color import icc_profile, srgb_levels, to_srgb

TCGA = "TCGA-CR-7395-01A-01-TS1.svs"


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def linear_rgb_profile() -> bytes:
    """An ICC v2 display profile with sRGB primaries and a linear (gamma 1) tone curve:
    mid-grey 128 in it is sRGB ~188, so a converted slide is visibly different from raw."""
    xyz = {
        b"wtpt": (0.9642, 1.0, 0.8249),
        b"rXYZ": (0.4361, 0.2225, 0.0139),
        b"gXYZ": (0.3851, 0.7169, 0.0971),
        b"bXYZ": (0.1431, 0.0606, 0.7141),
    }
    tags = [(sig, b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in v)) for sig, v in xyz.items()]
    curve = b"curv\0\0\0\0" + struct.pack(">IH", 1, 256) + b"\0\0"  # gamma 1.0 (u8Fixed8)
    tags += [(sig, curve) for sig in (b"rTRC", b"gTRC", b"bTRC")]
    text = b"linear RGB\0"
    tags.append((b"desc", b"desc\0\0\0\0" + struct.pack(">I", len(text)) + text + bytes(79)))
    offset = 128 + 4 + 12 * len(tags)
    table, body = b"", b""
    for sig, data in tags:
        data += bytes(-len(data) % 4)
        table += sig + struct.pack(">II", offset + len(body), len(data))
        body += data
    size = offset + len(body)
    header = struct.pack(">I4sI4s4s4s", size, b"lcms", 0x02100000, b"mntr", b"RGB ", b"XYZ ")
    header += bytes(12) + b"acsp" + bytes(24) + struct.pack(">I", 0)
    header += b"".join(_s15(c) for c in (0.9642, 1.0, 0.8249)) + bytes(48)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + table + body


def _srgb_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _pillow_srgb(rgb: np.ndarray, profile: bytes) -> np.ndarray:
    """The reference: Pillow converting a PIL image with ImageCms.profileToProfile."""
    src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    dst = ImageCms.createProfile("sRGB")
    out = ImageCms.profileToProfile(Image.fromarray(rgb), src, dst, renderingIntent=1)
    assert out is not None
    return np.asarray(out)


def test_tcga_profile_is_read(slides_dir: Path) -> None:
    slide = open_slide(slides_dir / TCGA)
    profile = icc_profile(slide)
    assert profile is not None and len(profile) > 128
    desc = ImageCms.getProfileDescription(ImageCms.ImageCmsProfile(io.BytesIO(profile)))
    assert "sRGB" in desc  # Aperio embeds the HP sRGB IEC61966-2.1 profile


def test_slide_without_profile_is_untouched(slides_dir: Path) -> None:
    slide = open_slide(slides_dir / "CMU-1-Small-Region.svs")
    assert icc_profile(slide) is None
    assert srgb_levels(slide)[0] is slide.levels[0]
    data, meta, _ = read_slide(slides_dir / "CMU-1-Small-Region.svs", srgb=True)
    assert meta["metadata"][L.META_COLOR] == L.COLOR_NO_PROFILE
    shown = data[-1] if meta["multiscale"] else data
    assert np.array_equal(compute(shown), compute(slide.levels[-1]))


def test_srgb_to_srgb_is_identity() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgb[0, :4] = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 120, 180)]  # H&E-ish pink last
    out = to_srgb(rgb, _srgb_bytes())
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb.astype(int)).max() <= 1


def test_linear_profile_converts_like_pillow() -> None:
    grey = np.full((4, 4, 3), 128, np.uint8)
    out = to_srgb(grey, linear_rgb_profile())
    assert 185 <= out[0, 0, 0] <= 190  # linear 0.5 is sRGB ~188
    rgb = np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)
    assert np.array_equal(
        to_srgb(rgb, linear_rgb_profile()), _pillow_srgb(rgb, linear_rgb_profile())
    )


def test_unusable_profile_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "bad_icc.tif"
    tifffile.imwrite(
        path, np.zeros((64, 64, 3), np.uint8), extratags=[(34675, 7, 0, b"not a profile", True)]
    )
    slide = open_slide(path)
    assert icc_profile(slide) == b"not a profile"
    with pytest.raises(ProtorefineError, match="ICC profile"):
        srgb_levels(slide)


def test_tcga_layer_converted_when_on_raw_when_off(slides_dir: Path) -> None:
    slide = open_slide(slides_dir / TCGA)
    raw = compute(slide.levels[-1])
    on, meta_on, _ = read_slide(slides_dir / TCGA, srgb=True)
    off, meta_off, _ = read_slide(slides_dir / TCGA, srgb=False)
    assert meta_on["metadata"][L.META_COLOR] == L.COLOR_SRGB
    assert meta_off["metadata"][L.META_COLOR] == L.COLOR_RAW
    assert np.array_equal(compute(off[-1]), raw)
    profile = icc_profile(slide)
    assert profile is not None
    assert np.array_equal(compute(on[-1]), _pillow_srgb(raw, profile))
    from napari.layers import Layer

    layer = Layer.create(on, meta_on, "image")  # what napari makes of the reader's data
    assert layer.rgb and layer.multiscale
    assert layer.metadata[L.META_COLOR] == L.COLOR_SRGB
    assert np.array_equal(compute(layer.data[-1][:64, :64]), _pillow_srgb(raw[:64, :64], profile))


def test_layer_pixels_change_with_a_non_srgb_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "linear.tif"
    image = np.full((300, 200, 3), 128, np.uint8)
    image[:100] = (200, 60, 150)
    tifffile.imwrite(
        path, image, tile=(128, 128), extratags=[(34675, 7, 0, linear_rgb_profile(), True)]
    )
    data, meta, _ = read_slide(path)  # on by default
    shown = compute(data)
    assert meta["metadata"][L.META_COLOR] == L.COLOR_SRGB
    assert np.array_equal(shown, _pillow_srgb(image, linear_rgb_profile()))
    assert shown[200, 100, 0] > 180  # mid-grey brightened, not the raw 128
    # the raw pixels one setting away; the slide the pipeline reads is never converted
    monkeypatch.setenv(L.DISPLAY_COLOR_ENV, "raw")
    data, meta, _ = read_slide(path)
    assert np.array_equal(compute(data), image)
    assert meta["metadata"][L.META_COLOR] == L.COLOR_RAW
    assert np.array_equal(compute(open_slide(path).levels[0]), image)
    monkeypatch.setenv(L.DISPLAY_COLOR_ENV, "sometimes")
    with pytest.raises(ProtorefineError, match="PROTOREFINE_DISPLAY_COLOR='sometimes'"):
        read_slide(path)


def test_openslide_backend_reads_the_same_profile(slides_dir: Path) -> None:
    pytest.importorskip("openslide")
    from protorefine.slides.openslide import open_openslide

    via_openslide = open_openslide(slides_dir / TCGA, "tcga")
    assert icc_profile(via_openslide) == icc_profile(open_slide(slides_dir / TCGA))
    no_profile = open_openslide(slides_dir / "CMU-1-Small-Region.svs", "cmu")
    assert icc_profile(no_profile) is None
