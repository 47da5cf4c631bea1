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
#: Pixels read and converted at once (bounds memory on whole slides).
BAND_PIXELS = 4_000_000
#: Pixels per fine-cell side the statistics are taken from: a coarser pyramid level, or
#: every n-th pixel, when the cell is larger (colour statistics need no more).
CELL_PIXELS = 16

_UNMIX = (hed_from_rgb / -np.log(1e-6)).astype(np.float32)
_OD = -np.log(np.maximum(np.arange(256, dtype=np.float32) / 255.0, 1e-6))  # per 8-bit value


def stain_channels(rgb: np.ndarray) -> np.ndarray:
    """``(h, w, 3)`` uint8 RGB -> ``(h, w, 3)`` float32 haematoxylin, eosin, optical density."""
    od = _OD[rgb[..., :3]]
    he = np.maximum(od @ _UNMIX, 0)[..., :2]
    return np.concatenate([he, od.sum(-1, keepdims=True)], axis=-1)


def cell_sums(slide, grid, factor: int, *, cancel: Cancel | None = None) -> np.ndarray:
    """Per fine cell of ``grid`` (``factor`` per cell side), the number of pixels sampled and
    the sums of each stain channel and of its square over them:
    ``(rows * factor, cols * factor, 1 + 2 * CHANNELS)`` float64. About
    :data:`CELL_PIXELS` pixels per cell side are sampled, from the coarsest pyramid level
    that has them (never finer than the grid's); bands without a tissue cell are skipped."""
    rows, cols, f = grid.rows, grid.cols, int(factor)
    out = np.zeros((rows * f, cols * f, 1 + 2 * CHANNELS))
    cell0 = grid.downsample / f  # fine cell side in level-0 pixels
    level = slide.best_level_for_downsample(max(cell0 / CELL_PIXELS, grid.level_downsample))
    ds = slide.downsamples[level]
    sub = max(1, int(cell0 / ds // CELL_PIXELS))  # then every sub-th pixel
    level_h, level_w = slide.levels[level].shape[:2]
    band_rows = max(1, int(BAND_PIXELS // max(1.0, level_w * grid.downsample / ds)))
    tissue = np.asarray(grid.tissue, bool).reshape(rows, cols)
    xs = np.arange(0, level_w, sub)
    xcell = np.minimum(((xs + 0.5) * ds // cell0).astype(np.int64), cols * f - 1)
    for r0 in range(0, rows, band_rows):
        r1 = min(rows, r0 + band_rows)
        if not tissue[r0:r1].any():
            continue
        if cancel is not None and cancel():
            raise CancelledError("colour statistics cancelled")
        y0 = int(r0 * grid.downsample / ds)
        y1 = min(int(np.ceil(r1 * grid.downsample / ds)), level_h)
        y0 += (-y0) % sub  # the same sampled rows whatever the band
        if y1 <= y0:
            continue
        ys = np.arange(y0, y1, sub)
        ycell = ((ys + 0.5) * ds // cell0).astype(np.int64)
        keep = (ycell >= r0 * f) & (ycell < r1 * f)  # a row shared with the next band: there
        rgb = slide.read_region(level, y0, 0, y1 - y0, level_w)[::sub, ::sub][keep]
        stains = stain_channels(rgb)
        values = np.concatenate([np.ones_like(stains[..., :1]), stains, stains**2], axis=-1)
        _add_cell_sums(out, values, ycell[keep], xcell)
    return out


def _add_cell_sums(out: np.ndarray, values: np.ndarray, ycell: np.ndarray, xcell: np.ndarray):
    """Add the sums of ``values`` ``(ny, nx, C)`` over each run of pixels sharing a cell
    (``ycell``/``xcell`` ascending) into ``out[cell]``."""
    xs = np.flatnonzero(np.diff(xcell, prepend=-1))  # first pixel of each cell column
    ys = np.flatnonzero(np.diff(ycell, prepend=-1))
    sums = np.add.reduceat(np.add.reduceat(values, xs, axis=1), ys, axis=0)
    out[ycell[ys][:, None], xcell[xs][None, :]] += sums


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
