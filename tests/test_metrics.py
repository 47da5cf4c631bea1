"""Overlap metrics and the evaluate table."""

from __future__ import annotations

import numpy as np
import pytest

from protorefine.errors import ProtorefineError
from protorefine.evaluate import all_metrics, dice, format_table, iou, precision, recall


def test_known_values():
    truth = np.zeros((4, 4), bool)
    truth[:2] = True  # 8 px
    pred = np.zeros((4, 4), bool)
    pred[1:3] = True  # 8 px, 4 overlap
    assert dice(pred, truth) == pytest.approx(0.5)
    assert iou(pred, truth) == pytest.approx(4 / 12)
    assert precision(pred, truth) == pytest.approx(0.5)
    assert recall(pred, truth) == pytest.approx(0.5)
    mask = np.zeros((4, 4), bool)
    mask[:2] = True  # only the truth rows count
    assert dice(pred, truth, mask) == pytest.approx(2 * 4 / (4 + 8))
    assert recall(pred, truth, mask) == pytest.approx(0.5)
    assert precision(pred, truth, mask) == pytest.approx(1.0)


def test_empty_and_perfect_cases():
    z = np.zeros((3, 3), bool)
    assert all_metrics(z, z) == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    o = np.ones((3, 3), bool)
    assert dice(o, o) == 1.0 and dice(z, o) == 0.0 and recall(z, o) == 0.0
    with pytest.raises(ProtorefineError, match="shape"):
        dice(z, np.zeros((2, 2), bool))


def test_table_lists_slides_and_mean():
    m = {"dice": 0.8, "iou": 0.7, "precision": 0.9, "recall": 0.75}
    res = {
        "slides": [{"slide": "a", "refined": m, "coarse": m}],
        "mean": {"refined": m, "coarse": m},
    }
    text = format_table(res)
    lines = text.splitlines()
    assert lines[0].startswith("slide") and "coa dice" in lines[0] and "ref recall" in lines[0]
    assert lines[1].startswith("a") and "0.8000" in lines[1]
    assert lines[2].startswith("mean")


def _slide_like(h: int = 300, w: int = 400) -> np.ndarray:
    """White background with pink-purple tissue: an H&E slide's colours, not a mask's."""
    rng = np.random.default_rng(0)
    img = np.full((h, w, 3), 240, np.uint8)
    tissue = rng.integers(0, 80, (h // 2, w // 2, 3)) + np.array([150, 60, 140])
    img[h // 4 : h // 4 + h // 2, w // 4 : w // 4 + w // 2] = tissue.astype(np.uint8)
    return img


@pytest.mark.parametrize("tile", [None, (64, 64)])
def test_a_slide_tif_in_the_ground_truth_folder_is_refused(tmp_path, tile):
    import tifffile
    from shapely.geometry import box

    from protorefine.annotations import Annotation, AnnotationSet, write_geojson
    from protorefine.evaluate import evaluate_folders

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    tifffile.imwrite(gt / "s1.tif", _slide_like(), photometric="rgb", tile=tile)
    write_geojson(AnnotationSet([Annotation(box(100, 75, 300, 225), "Tumor")]), pred / "s1.geojson")
    with pytest.raises(ProtorefineError, match=r"s1\.tif: .*RGB image.*not a mask") as exc:
        evaluate_folders(pred, gt)
    assert "\n" not in str(exc.value)


def test_rgb_masks_are_still_read(tmp_path):
    """0/255 and 0/1 masks saved as RGB, and masks drawn in a few label colours, still count."""
    import tifffile
    from PIL import Image

    from protorefine.annotations import rasterize, read_annotations

    m = np.zeros((60, 80), bool)
    m[10:40, 20:60] = True
    for name, rgb in {
        "grey.tif": np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=-1),
        "ones.tif": np.repeat(m.astype(np.uint8)[..., None], 3, axis=-1),
        "red.png": np.stack([m * 255, m * 0, m * 0], axis=-1).astype(np.uint8),
    }.items():
        path = tmp_path / name
        if name.endswith(".tif"):
            tifffile.imwrite(path, rgb, photometric="rgb")
        else:
            Image.fromarray(rgb).save(path)
        back = read_annotations(path, slide_shape=(60, 80))
        np.testing.assert_array_equal(rasterize(back, (60, 80), 1), m)
    labels = np.zeros((60, 80, 3), np.uint8)  # three classes in three colours
    labels[5:20, 5:20] = (255, 0, 0)
    labels[30:50, 40:70] = (0, 255, 0)
    labels[25:28, 5:75] = (0, 0, 255)
    Image.fromarray(labels).save(tmp_path / "classes.png")
    back = read_annotations(tmp_path / "classes.png", slide_shape=(60, 80))
    np.testing.assert_array_equal(rasterize(back, (60, 80), 1), labels.max(axis=-1) > 0)


def _png_header_only(path, w: int, h: int) -> None:
    """A PNG that declares ``w`` x ``h`` pixels (8-bit grey) and holds no pixel data."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_gigapixel_truth_mask_without_slides_is_refused_by_declared_size(tmp_path, suffix):
    """A 1.6-gigapixel ground-truth mask without ``--slides``: refused from its header,
    before a byte of it is decoded (it gave a traceback or exhausted memory)."""
    from protorefine.evaluate import evaluate_folders

    gt, pred = tmp_path / "gt", tmp_path / "pred"
    gt.mkdir()
    pred.mkdir()
    truth = gt / f"s{suffix}"
    if suffix == ".png":
        _png_header_only(truth, 40000, 40000)
    else:
        import tifffile

        tifffile.memmap(truth, shape=(40000, 40000), dtype=np.uint8).flush()
    (pred / "s.geojson").write_text(
        '{"type":"Polygon","coordinates":[[[0,0],[10,0],[10,10],[0,0]]]}'
    )
    with pytest.raises(ProtorefineError) as info:
        evaluate_folders(pred, gt)
    msg = str(info.value)
    assert str(truth) in msg and "40000x40000" in msg and "--slides" in msg
    assert "smaller mask" in msg and "\n" not in msg
