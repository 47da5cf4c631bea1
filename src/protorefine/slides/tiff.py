"""TIFF backend (tifffile): Aperio SVS, OME-TIFF, generic pyramidal or flat TIFF, read lazily."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import dask.array as da
import defusedxml.ElementTree as defused_et
import numpy as np
import tifffile
import zarr
from defusedxml import DefusedXmlException

from protorefine.errors import ProtorefineError
from protorefine.slides._rgb import rgb_numpy, to_rgb
from protorefine.slides._tiffread import TiffRegionReader
from protorefine.slides.base import Slide

_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")
_UNIT_TO_UM = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
_ASSOCIATED = ("label", "macro", "thumbnail")
# Resolution tags below this many pixels per micrometre are screen/print defaults (72, 300 dpi).
_MAX_TAG_MPP = 50.0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _dask_chunks(chunks: tuple[int, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    """Dask chunks: whole source tiles grouped to about 1024 px, so graphs stay small."""
    out = []
    for c, n in zip(chunks, shape, strict=True):
        out.append(min(n, c * max(1, 1024 // max(c, 1))) if n > 16 else n)
    return tuple(out)


def _mpp_from_ome(tf: tifffile.TiffFile) -> float | None:
    try:
        # defusedxml: entity declarations (XXE, entity bombs) and external references are
        # refused whatever the system expat's version
        root = defused_et.fromstring(tf.ome_metadata or "")
    except DefusedXmlException as e:
        raise ProtorefineError(
            f"{tf.filehandle.path}: OME-XML metadata refused: entities / DTD not allowed "
            f"({_one_line(e)})"
        ) from e
    except ET.ParseError:
        return None
    for el in root.iter():
        size_x = el.get("PhysicalSizeX")
        if el.tag.endswith("Pixels") and size_x:
            unit = el.get("PhysicalSizeXUnit", "µm")
            scale = _UNIT_TO_UM.get(unit)
            if scale is None:
                return None
            return float(size_x) * scale
    return None


def _mpp_from_tags(page: tifffile.TiffPage) -> float | None:
    unit = int(page.resolutionunit)
    xres = page.resolution[0] if page.resolution else 0.0
    if not xres or unit not in (2, 3):
        return None
    mpp = (25400.0 if unit == 2 else 10000.0) / xres
    return mpp if 0 < mpp <= _MAX_TAG_MPP else None


def read_mpp(tf: tifffile.TiffFile) -> float | None:
    """Microns per pixel at level 0 from Aperio's ``MPP``, OME ``PhysicalSizeX`` or resolution tags."""
    page = tf.pages.first
    match = _APERIO_MPP.search(page.description or "")
    if match:
        try:
            value = float(match.group(1))
        except ValueError:
            value = 0.0
        if value > 0:
            return value
    if tf.is_ome:
        mpp = _mpp_from_ome(tf)
        if mpp:
            return mpp
    return _mpp_from_tags(page)


def _check_offsets(tf: tifffile.TiffFile, series: tifffile.TiffPageSeries, path: Path) -> None:
    """Raise when any tile or strip of ``series`` points past the end of the file."""
    size = tf.filehandle.size
    for level in series.levels:
        for page in level.pages:
            if page is None:
                continue
            offsets = np.asarray(page.dataoffsets, dtype=np.int64)
            counts = np.asarray(page.databytecounts, dtype=np.int64)
            if offsets.size == 0:
                continue
            end = int((offsets + counts).max())
            if end > size:
                raise ProtorefineError(
                    f"{path}: file is truncated (image data ends at byte {end}, file has {size} bytes)"
                )


def _check_decode(arr: zarr.Array, path: Path, last: bool) -> None:
    """Decode one tile eagerly so a broken codec or corrupt data fails at open, not later."""
    idx = []
    for c, n in zip(arr.chunks, arr.shape, strict=True):
        start = (n - 1) // c * c if last else 0
        idx.append(slice(start, min(n, start + c)))
    try:
        arr[tuple(idx)]
    except Exception as exc:  # any decoder failure: imagecodecs, tifffile, zarr
        raise ProtorefineError(f"{path}: cannot decode image data ({_one_line(exc)})") from exc


def _associated(tf: tifffile.TiffFile, path: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for series in tf.series[1:]:
        name = (series.name or "").lower()
        if name in _ASSOCIATED and name not in out:
            try:
                out[name] = rgb_numpy(series.asarray(), path)
            except Exception:  # an unreadable label must not stop the slide from opening
                continue
    return out


def open_tiff(path: Path, name: str) -> Slide:
    """Open a TIFF-family file as a lazy pyramid, validating tile offsets and decoding eagerly."""
    try:
        tf = tifffile.TiffFile(path)
    except Exception as exc:
        raise ProtorefineError(f"{path}: not a readable TIFF/SVS file ({_one_line(exc)})") from exc
    try:
        if not tf.series:
            raise ProtorefineError(f"{path}: TIFF file holds no image")
        series = tf.series[0]
        _check_offsets(tf, series, path)
        store = series.aszarr()
        root = zarr.open(store, mode="r")
        nodes = (
            [root]
            if isinstance(root, zarr.Array)
            else [root[str(i)] for i in range(len(series.levels))]
        )
        arrays = [node for node in nodes if isinstance(node, zarr.Array)]
        if len(arrays) != len(nodes):  # tifffile's store holds one array per level
            raise TypeError("a pyramid level is a zarr group, not an array")
        _check_decode(arrays[0], path, last=False)
        _check_decode(arrays[-1], path, last=True)
        levels = []
        for arr in arrays:
            lazy = da.from_zarr(arr, chunks=_dask_chunks(arr.chunks, arr.shape))
            levels.append(to_rgb(lazy, series.axes, path))
        mpp = read_mpp(tf)
        icc = series.keyframe.tags.valueof(34675)  # InterColorProfile
        associated = _associated(tf, path)
        reader = TiffRegionReader(tf, series)
    except ProtorefineError:
        tf.close()
        raise
    except Exception as exc:
        tf.close()
        raise ProtorefineError(f"{path}: cannot read TIFF structure ({_one_line(exc)})") from exc
    return Slide(
        path=path,
        name=name,
        levels=levels,
        mpp=mpp,
        associated=associated,
        backend="tifffile",
        region_reader=reader,
        icc_profile=bytes(icc) if isinstance(icc, bytes | bytearray) and icc else None,
    )
