"""Coarse label per patch: how much of it the coarse outline covers, and how far it is from the edge."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from protorefine.annotations import rasterize, tumour_geometry
from protorefine.annotations.model import AnnotationSet
from protorefine.features.grid import PatchGrid, _box_means

#: Raster cells per grid cell side used for the inside fraction (capped by MAX_RASTER_PIXELS).
SUPERSAMPLE = 4
MAX_RASTER_PIXELS = 16_000_000


def _raster(annset: AnnotationSet, shape: tuple[int, int], pixel: float) -> np.ndarray:
    """``shape`` raster (``pixel`` level-0 px each): True where a pixel centre is in the tumour."""
    extent = (round(shape[0] * pixel), round(shape[1] * pixel))
    mask = rasterize(tumour_geometry(annset), extent, pixel)
    out = np.zeros(shape, dtype=bool)
    h, w = min(shape[0], mask.shape[0]), min(shape[1], mask.shape[1])
    out[:h, :w] = mask[:h, :w]
    return out


def coarse_labels(grid: PatchGrid, annset: AnnotationSet) -> tuple[np.ndarray, np.ndarray]:
    """Per cell (all N): share inside the coarse tumour outline, and signed distance to it.

    The distance is in grid cells from the patch centre to the outline, positive
    inside. Computed on a raster ``SUPERSAMPLE`` times finer than the grid.
    """
    s = max(1, min(SUPERSAMPLE, int(math.sqrt(MAX_RASTER_PIXELS / max(grid.n, 1)))))
    shape = (grid.rows * s, grid.cols * s)
    pixel = grid.downsample / s
    inside = _raster(annset, shape, pixel)
    yx = grid.yx.astype(np.float64)
    fraction = _box_means(inside, pixel, yx, grid.downsample).astype(np.float32)
    big = float(grid.rows + grid.cols)
    if not inside.any():
        return fraction, np.full(grid.n, -big, dtype=np.float32)
    if inside.all():
        return fraction, np.full(grid.n, big, dtype=np.float32)
    d_in = ndimage.distance_transform_edt(inside)
    d_out = ndimage.distance_transform_edt(~inside)
    signed = np.where(inside, d_in - 0.5, 0.5 - d_out) / s
    centre = np.floor((yx + grid.downsample / 2) / pixel).astype(np.int64)
    cy = np.clip(centre[:, 0], 0, shape[0] - 1)
    cx = np.clip(centre[:, 1], 0, shape[1] - 1)
    return fraction, signed[cy, cx].astype(np.float32)
