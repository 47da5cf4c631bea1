"""Turn any backend's lazy array into the ``(H, W, 3)`` uint8 form every Slide level uses."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np

from protorefine.errors import ProtorefineError
from protorefine.slides.base import compute

# Axis letters used by tifffile and NGFF: sample/channel axes and spatial axes.
_CHANNEL = "SC"
_SPATIAL = "YX"


def to_rgb(arr: da.Array, axes: str, path: Path) -> da.Array:
    """Reorder ``arr`` (with ``axes`` letters) to ``(Y, X, 3)`` uint8, lazily.

    Extra axes (time, z, series) of length 1 are dropped and longer ones are cut to
    their first index; gray becomes three equal channels; alpha is dropped; 16-bit
    and float images are scaled to 8 bits.
    """
    axes = axes.upper()
    if len(axes) != arr.ndim or "Y" not in axes or "X" not in axes:
        raise ProtorefineError(f"{path}: cannot read image axes {axes!r} of shape {arr.shape}")
    channel = next((a for a in axes if a in _CHANNEL and arr.shape[axes.index(a)] > 1), None)
    index: list[slice | int] = []
    kept = ""
    for a in axes:
        if a in _SPATIAL or a == channel:
            index.append(slice(None))
            kept += a
        else:
            index.append(0)
    arr = arr[tuple(index)]
    if channel is None:
        arr = arr[..., None] if kept == "YX" else arr.T[..., None]
        kept = "YXC"
    order = [kept.index(a) for a in ("Y", "X", channel or "C")]
    arr = arr.transpose(order)
    nchan = arr.shape[2]
    if nchan == 1:
        arr = da.concatenate([arr, arr, arr], axis=2)
    elif nchan == 2:
        arr = da.concatenate([arr[..., :1]] * 3, axis=2)
    elif nchan > 3:
        arr = arr[..., :3]
    return to_uint8(arr, path)


def to_uint8(arr: da.Array, path: Path) -> da.Array:
    """Scale a lazy array to uint8 (unchanged when it already is)."""
    dt = np.dtype(arr.dtype)
    if dt == np.uint8:
        return arr
    if dt == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if dt.kind in "ui":
        top = float(np.iinfo(dt).max)
        scaled = arr.astype(np.float32) * np.float32(255.0 / top)
    elif dt.kind == "f":
        scaled = arr.astype(np.float32) * np.float32(255.0)
    else:
        raise ProtorefineError(f"{path}: unsupported pixel type {dt} (expected 8-bit RGB)")
    return da.clip(da.round(scaled), 0, 255).astype(np.uint8)


def rgb_numpy(image: np.ndarray, path: Path) -> np.ndarray:
    """The in-memory version of :func:`to_rgb` for small images (``YX``, ``YXC``)."""
    axes = "YX" if image.ndim == 2 else "YXC"
    if image.ndim not in (2, 3):
        raise ProtorefineError(f"{path}: expected a 2-D gray or RGB image, got shape {image.shape}")
    return compute(to_rgb(da.from_array(image), axes, path), "threads")
