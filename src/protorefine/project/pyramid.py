"""A per-cell map of a slide (the pixel stage's probability) as a zarr pyramid in the project:
written one chunk-row of tiles at a time, read lazily, so a whole slide's map never has to be
loaded to be shown (napari takes the levels as one multiscale layer)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import zarr

from protorefine.errors import ProtorefineError

#: Side of a chunk (cells); also the size under which no coarser level is added.
CHUNK = 512


def _halved(level: zarr.Array) -> Iterator[tuple[slice, np.ndarray]]:
    """The next pyramid level of ``level`` (2x2 means, edges averaged over what exists),
    one band of ``2 * CHUNK`` rows at a time."""
    rows = level.shape[0]
    for a in range(0, rows, 2 * CHUNK):
        band = np.asarray(level[a : a + 2 * CHUNK], np.float32)
        h, w = band.shape
        pad = np.pad(band, ((0, h % 2), (0, w % 2)), mode="edge")
        out = pad.reshape(pad.shape[0] // 2, 2, pad.shape[1] // 2, 2).mean((1, 3))
        yield slice(a // 2, a // 2 + out.shape[0]), out


def write_pyramid(values: np.ndarray, path: str | os.PathLike[str]) -> int:
    """``values`` (rows, cols) as a zarr group at ``path``: array ``"0"`` the cells as float16,
    each next array half the size, until the coarsest fits one chunk. Returns the level count.

    ``path`` is a folder the caller owns (the pixel stage writes into its own stage folder,
    which the pipeline renames into place when the stage is done)."""
    group = zarr.open_group(Path(path), mode="w")
    level = group.create_array(
        "0", shape=values.shape, chunks=(CHUNK, CHUNK), dtype="float16", fill_value=0
    )
    for a in range(0, values.shape[0], CHUNK):
        level[a : a + CHUNK] = np.asarray(values[a : a + CHUNK], np.float16)
    n = 1
    while max(level.shape) > CHUNK:
        shape = ((level.shape[0] + 1) // 2, (level.shape[1] + 1) // 2)
        nxt = group.create_array(
            str(n), shape=shape, chunks=(CHUNK, CHUNK), dtype="float16", fill_value=0
        )
        for rows, part in _halved(level):
            nxt[rows] = part.astype(np.float16)
        level, n = nxt, n + 1
    group.attrs["levels"] = n
    return n


def read_pyramid(path: str | os.PathLike[str]) -> list[zarr.Array]:
    """The levels of a pyramid written by :func:`write_pyramid`, finest first (lazy arrays)."""
    try:
        group = zarr.open_group(Path(path), mode="r")
        n = group.attrs["levels"]
        if not isinstance(n, int):
            raise TypeError(f"levels {n!r}")
        levels = [group[str(k)] for k in range(n)]
    except (KeyError, ValueError, TypeError, OSError, zarr.errors.BaseZarrError) as err:
        raise ProtorefineError(f"{path}: the map pyramid does not read back ({err})") from None
    return [lvl for lvl in levels if isinstance(lvl, zarr.Array)]
