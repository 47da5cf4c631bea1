"""Colour prototypes below the patch: the refined outline follows stain boundaries in a patch.

The classifier decides per patch, and its probability resampled bilinearly to fine cells
(``output_upsample`` per patch side) only places the outline between patch centres. Per
slide, the fine cells are clustered by stain statistics (haematoxylin, eosin and optical
density: mean and spread over 1, 3 and 5 cells, z-scored per slide); each cluster's
tumour score is the mean refined probability of its cells, and every cell's probability
moves toward its cluster's score by ``colour_weight``. A cell of pale tumour cytoplasm
inside a patch called normal, or of dense lymphocytes inside one called tumour, is then
drawn with the cells that look like it: prototypes, as the method builds from patch
features, one scale down and from colour alone.
"""

from __future__ import annotations

import numpy as np
from skimage.color import hed_from_rgb

from protorefine._types import Cancel
from protorefine.errors import CancelledError

#: Stain channels per pixel: haematoxylin, eosin (colour deconvolution) and optical density.
CHANNELS = 3
#: Windows (in fine cells, centred) over which each channel's mean and spread are taken.
WINDOWS = (1, 3, 5)
#: Cells that fit a slide's clusters (the rest are assigned to them): enough for 32 colours.
FIT_CELLS = 20_000
#: Pixels of the grid's level read and converted at once (bounds memory on whole slides).
BAND_PIXELS = 8_000_000

_UNMIX = (hed_from_rgb / -np.log(1e-6)).astype(np.float32)


def stain_channels(rgb: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB -> ``(h, w, 3)`` float32 haematoxylin, eosin, optical density."""
    od = -np.log(np.maximum(rgb[..., :3].astype(np.float32) / 255.0, 1e-6))
    he = np.maximum(od @ _UNMIX, 0)[..., :2]
    return np.concatenate([he, od.sum(-1, keepdims=True)], axis=-1)


def cell_sums(slide, grid, factor: int, *, cancel: Cancel | None = None) -> np.ndarray:
    """Per fine cell of ``grid`` (``factor`` per cell side), the pixel count and the sums of
    each stain channel and of its square over the cell's pixels at the grid's level:
    ``(rows * factor, cols * factor, 1 + 2 * CHANNELS)`` float64. Bands without a tissue
    cell are not read (zeros)."""
    rows, cols, f = grid.rows, grid.cols, int(factor)
    out = np.zeros((rows * f, cols * f, 1 + 2 * CHANNELS))
    step = grid.read_stride  # level pixels per grid cell
    level_h, level_w = slide.levels[grid.level].shape[:2]
    width = min(cols * step, level_w)
    band_rows = max(1, BAND_PIXELS // max(1, width * step))
    tissue = np.asarray(grid.tissue, bool).reshape(rows, cols)
    xcell = (np.arange(width) * f) // step  # fine column of each pixel
    for r0 in range(0, rows, band_rows):
        r1 = min(rows, r0 + band_rows)
        if not tissue[r0:r1].any():
            continue
        if cancel is not None and cancel():
            raise CancelledError("colour statistics cancelled")
        y0, y1 = r0 * step, min(r1 * step, level_h)
        if y1 <= y0:
            continue
        stains = stain_channels(slide.read_region(grid.level, y0, 0, y1 - y0, width))
        ycell = ((np.arange(y0, y1) * f) // step) - r0 * f
        index = (ycell[:, None] * (cols * f) + xcell[None, :]).ravel()
        n = (r1 - r0) * f * cols * f
        band = out[r0 * f : r1 * f]
        band[..., 0] += np.bincount(index, minlength=n).reshape(band.shape[:2])
        flat = stains.reshape(-1, CHANNELS).astype(np.float64)
        for c in range(CHANNELS):
            band[..., 1 + c] += np.bincount(index, flat[:, c], n).reshape(band.shape[:2])
            band[..., 1 + CHANNELS + c] += np.bincount(index, flat[:, c] ** 2, n).reshape(
                band.shape[:2]
            )
    return out


def cell_features(sums: np.ndarray) -> np.ndarray:
    """``(H, W, 18)`` per fine cell: each channel's mean and spread over every window of
    :data:`WINDOWS` cells around it (from :func:`cell_sums`)."""
    from scipy.ndimage import uniform_filter

    feats = []
    count = sums[..., 0]
    for win in WINDOWS:
        n = uniform_filter(count, win, mode="nearest")
        for c in range(CHANNELS):
            s1 = uniform_filter(sums[..., 1 + c], win, mode="nearest")
            s2 = uniform_filter(sums[..., 1 + CHANNELS + c], win, mode="nearest")
            mean = s1 / np.maximum(n, 1e-9)
            feats += [mean, np.sqrt(np.maximum(s2 / np.maximum(n, 1e-9) - mean**2, 0))]
    return np.stack(feats, -1).astype(np.float32)


def colour_prototype_prob(
    features: np.ndarray, prob: np.ndarray, valid: np.ndarray, k: int, seed: int = 0
) -> np.ndarray:
    """Each valid fine cell's colour prototype score: the mean of ``prob`` over the cells of
    its cluster (k-means on the slide's z-scored ``features``); ``prob`` where not valid."""
    from sklearn.cluster import KMeans

    out = np.array(prob, dtype=np.float32, copy=True)
    cells = np.flatnonzero(np.asarray(valid, bool).ravel())
    k = min(int(k), len(cells))
    if k < 2:
        return out
    x = features.reshape(-1, features.shape[-1])[cells].astype(np.float64)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    rng = np.random.default_rng(seed)
    fit = x if len(x) <= FIT_CELLS else x[rng.choice(len(x), FIT_CELLS, replace=False)]
    km = KMeans(k, n_init=2, random_state=seed).fit(fit)
    labels = km.predict(x)
    p = out.ravel()[cells]
    total = np.bincount(labels, p, minlength=k)
    count = np.bincount(labels, minlength=k)
    score = np.where(count > 0, total / np.maximum(count, 1), 0.5)
    out.ravel()[cells] = score[labels]
    return out
