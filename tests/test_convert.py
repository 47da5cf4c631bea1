"""convert_to_ome_zarr: exact level 0, pyramid rules, NGFF metadata, napari-style reading, atomicity."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Multiscales, Reader

from protorefine.cli import main as cli_main
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.slides import Slide, convert_to_ome_zarr, open_slide


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _mean2(a: np.ndarray) -> np.ndarray:
    """Rounded 2x2 area mean (half up), trimming an odd last row/column."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    b = a[:h, :w].astype(np.uint16)
    s = b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


def _attrs(path: Path) -> dict:
    return dict(zarr.open_group(path, mode="r").attrs)


def test_convert_real_svs_exact_and_readable_by_ome_zarr(slides_dir: Path, tmp_path: Path) -> None:
    src = slides_dir / "CMU-1-Small-Region.svs"
    calls: list[tuple[int, int, str]] = []
    out = convert_to_ome_zarr(
        src, tmp_path / "cmu.zarr", tile=512, min_size=256, progress=lambda *a: calls.append(a)
    )
    assert out == tmp_path / "cmu.zarr" and out.is_dir()
    # only the target is left in the folder: no temporary leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["cmu.zarr"]

    slide = open_slide(out)
    assert slide.backend == "ome-zarr"
    assert slide.mpp == pytest.approx(0.499)
    shapes = [lvl.shape[:2] for lvl in slide.levels]
    assert shapes == [(2967, 2220), (1483, 1110), (741, 555), (370, 277), (185, 138)]
    assert max(shapes[-1]) <= 256 < max(shapes[-2])
    level0 = np.asarray(slide.levels[0])
    np.testing.assert_array_equal(level0, tifffile.imread(src))
    np.testing.assert_array_equal(np.asarray(slide.levels[1]), _mean2(level0))

    # NGFF metadata: c, y, x axes; scale is micrometres per pixel for each level
    ms = _attrs(out)["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]
    assert ms["axes"][2]["unit"] == "micrometer"
    scales = [ds["coordinateTransformations"][0]["scale"] for ds in ms["datasets"]]
    assert scales[0] == pytest.approx([1.0, 0.499, 0.499])
    assert scales[3] == pytest.approx([1.0, 0.499 * 8, 0.499 * 8])

    # ome-zarr-py's reader (what napari-ome-zarr uses): multiscale dask arrays
    nodes = list(Reader(parse_url(str(out)))())
    image = nodes[0]
    assert any(isinstance(spec, Multiscales) for spec in image.specs)
    assert all(isinstance(d, da.Array) for d in image.data)
    assert [d.shape for d in image.data] == [(3,) + s for s in shapes]
    np.testing.assert_array_equal(
        np.asarray(image.data[2][:, :50, :60]), np.moveaxis(_mean2(_mean2(level0))[:50, :60], 2, 0)
    )

    # progress counts every tile of every level and ends at the total
    total = calls[-1][1]
    assert calls[0][0] == 0 and calls[-1][0] == total
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert total == sum(-(-h // 512) * -(-w // 512) for h, w in shapes)


def test_source_levels_reused_when_power_of_two(slides_dir: Path, tmp_path: Path) -> None:
    src = open_slide(slides_dir / "TCGA-CR-7395-01A-01-TS1.svs")
    out = convert_to_ome_zarr(src, tmp_path / "tcga.zarr", tile=1024, min_size=1024)
    slide = open_slide(out)
    assert [lvl.shape[:2] for lvl in slide.levels] == [
        (3567, 4443),
        (1783, 2221),
        (891, 1110),
        (445, 555),
    ]
    # level 1 is the scanner's own level, copied exactly; level 2 is built from it
    level1 = np.asarray(src.levels[1])
    np.testing.assert_array_equal(np.asarray(slide.levels[1]), level1)
    np.testing.assert_array_equal(np.asarray(slide.levels[2]), _mean2(level1))
    assert slide.mpp is None
    ms = _attrs(out)["multiscales"][0]
    assert "unit" not in ms["axes"][2]
    assert ms["datasets"][2]["coordinateTransformations"][0]["scale"] == [1.0, 4.0, 4.0]


def test_non_power_of_two_source_levels_are_rebuilt(tmp_path: Path) -> None:
    img = _image(900, 1300)
    odd = img[::3, ::3].copy()  # a 3x level (like some scanners' 4x, but not 2**k of 2x)
    slide = Slide(
        path=Path("odd"),
        name="odd",
        levels=[da.from_array(img, chunks=(256, 256, 3)), da.from_array(odd)],
        mpp=0.3,
    )
    out = convert_to_ome_zarr(slide, tmp_path / "odd.zarr", tile=256, min_size=330)
    got = open_slide(out)
    assert [lvl.shape[:2] for lvl in got.levels] == [(900, 1300), (450, 650), (225, 325)]
    np.testing.assert_array_equal(np.asarray(got.levels[0]), img)
    np.testing.assert_array_equal(np.asarray(got.levels[1]), _mean2(img))
    np.testing.assert_array_equal(np.asarray(got.levels[2]), _mean2(_mean2(img)))


def test_compressed_and_lossless(tmp_path: Path) -> None:
    img = np.zeros((1024, 1024, 3), np.uint8)
    img[:, :, 0] = np.arange(1024)[None, :] // 4
    img[:, :, 1] = 200
    out = convert_to_ome_zarr(Slide.from_array(img), tmp_path / "c.zarr", tile=512)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < img.nbytes / 10  # smooth content compresses well
    np.testing.assert_array_equal(np.asarray(open_slide(out).levels[0]), img)
    meta = zarr.open_array(out / "0", mode="r")
    assert meta.chunks == (3, 512, 512)


def test_cancel_leaves_nothing_and_keeps_old_target(tmp_path: Path) -> None:
    target = tmp_path / "s.zarr"
    old = Slide.from_array(_image(300, 300, seed=1), name="s")
    convert_to_ome_zarr(old, target, tile=128, min_size=128)
    new = Slide.from_array(_image(1500, 1500, seed=2), name="s")
    seen = []

    def cancel() -> bool:
        seen.append(1)
        return len(seen) > 5

    with pytest.raises(CancelledError) as exc:
        convert_to_ome_zarr(new, target, tile=128, cancel=cancel)
    assert "s.zarr" in str(exc.value)
    # the previous conversion is intact and nothing temporary is left behind
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]
    np.testing.assert_array_equal(
        np.asarray(open_slide(target).levels[0]), np.asarray(old.levels[0])
    )


def test_failure_mid_way_leaves_nothing(tmp_path: Path) -> None:
    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][:2] == (2, 2):
            raise OSError("disk read failed")
        return block

    base = da.from_array(_image(800, 800), chunks=(128, 128, 3))
    slide = Slide(path=Path("x"), name="x", levels=[base.map_blocks(boom, dtype=np.uint8)])
    with pytest.raises(OSError):
        convert_to_ome_zarr(slide, tmp_path / "x.zarr", tile=128)
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments(tmp_path: Path) -> None:
    slide = Slide.from_array(_image(64, 64))
    with pytest.raises(ProtorefineError, match="tile=4"):
        convert_to_ome_zarr(slide, tmp_path / "a.zarr", tile=4)
    with pytest.raises(ProtorefineError, match="min_size=0"):
        convert_to_ome_zarr(slide, tmp_path / "a.zarr", min_size=0)
    with pytest.raises(ProtorefineError, match="missing.svs"):
        convert_to_ome_zarr(tmp_path / "missing.svs", tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()


def test_cli_convert(tmp_path: Path, capsys) -> None:
    path = tmp_path / "in.tif"
    img = _image(700, 500)
    tifffile.imwrite(path, img, photometric="rgb", tile=(256, 256))
    code = cli_main(["convert", str(path), "--out", str(tmp_path / "out"), "--tile", "256"])
    assert code == 0
    out = tmp_path / "out" / "in.zarr"
    assert capsys.readouterr().out.strip() == str(out)
    slide = open_slide(out)
    np.testing.assert_array_equal(np.asarray(slide.levels[0]), img)
    assert len(slide.levels) == 1  # 700 px long side is already <= 1024


def test_thin_image_and_white_chunks(tmp_path: Path) -> None:
    # narrower than one tile in y, several tiles in x, with an all-white stretch
    img = _image(100, 700)
    img[:, 256:512] = 255
    out = convert_to_ome_zarr(Slide.from_array(img), tmp_path / "thin.zarr", tile=256, min_size=64)
    slide = open_slide(out)
    np.testing.assert_array_equal(np.asarray(slide.levels[0]), img)
    assert [lvl.shape[:2] for lvl in slide.levels] == [
        (100, 700),
        (50, 350),
        (25, 175),
        (12, 87),
        (6, 43),
    ]
    np.testing.assert_array_equal(np.asarray(slide.levels[1]), _mean2(img))
    # the all-white chunk is not stored: readers fill it with the array's fill value
    assert not (out / "0" / "0" / "0" / "1").exists()
    assert (out / "0" / "0" / "0" / "2").exists()
    assert zarr.open_array(out / "0", mode="r").fill_value == 255


def test_convert_replaces_its_own_output_but_never_a_foreign_folder(tmp_path: Path) -> None:
    target = tmp_path / "s.zarr"
    convert_to_ome_zarr(Slide.from_array(_image(200, 200, seed=1), name="s"), target)
    new = Slide.from_array(_image(300, 300, seed=2), name="s")
    convert_to_ome_zarr(new, target)  # a rerun replaces the earlier conversion
    np.testing.assert_array_equal(np.asarray(open_slide(target).levels[0]), _image(300, 300, 2))

    foreign = tmp_path / "f.zarr"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("the user's work")
    with pytest.raises(ProtorefineError, match=r"f\.zarr: .*not written by protorefine"):
        convert_to_ome_zarr(new, foreign)
    assert (foreign / "keep.txt").read_text() == "the user's work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.zarr", "s.zarr"]
