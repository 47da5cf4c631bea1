"""From per-patch probability to a clean refined mask on the patch grid."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from protorefine.refine.config import RefineConfig
from protorefine.refine.stain_clusters import colour_prototype_prob


def scatter_grid(
    values: np.ndarray, rc: np.ndarray, shape: tuple[int, int] | None = None, fill: float = 0.0
) -> np.ndarray:
    """Place per-patch ``values`` at grid positions ``rc`` in a ``(rows, cols)`` image."""
    rc = np.asarray(rc, dtype=np.int64)
    if shape is None:
        shape = (int(rc[:, 0].max()) + 1, int(rc[:, 1].max()) + 1) if len(rc) else (0, 0)
    out = np.full(shape, fill, dtype=np.asarray(values).dtype)
    out[rc[:, 0], rc[:, 1]] = values
    return out


def smooth_on_grid(
    values: np.ndarray, slide_index: np.ndarray, rc: np.ndarray, sigma: float
) -> np.ndarray:
    """Gaussian smoothing of per-patch values over grid neighbours of the same slide.

    Normalised convolution: only patches that exist (tissue) contribute, so the
    tissue border does not pull values towards zero.
    """
    values = np.asarray(values, dtype=np.float32)
    if sigma <= 0 or len(values) == 0:
        return values.copy()
    out = np.empty_like(values)
    rc = np.asarray(rc, dtype=np.int64)
    for s in np.unique(slide_index):
        idx = np.flatnonzero(slide_index == s)
        r, c = rc[idx, 0], rc[idx, 1]
        shape = (int(r.max()) + 1, int(c.max()) + 1)
        img = np.zeros(shape, dtype=np.float32)
        msk = np.zeros(shape, dtype=np.float32)
        img[r, c] = values[idx]
        msk[r, c] = 1.0
        num = ndimage.gaussian_filter(img, sigma, mode="constant", truncate=3.0)
        den = ndimage.gaussian_filter(msk, sigma, mode="constant", truncate=3.0)
        out[idx] = num[r, c] / np.maximum(den[r, c], 1e-6)
    return out


def context_features(
    features: np.ndarray, slide_index: np.ndarray, rc: np.ndarray, sigma: float
) -> np.ndarray:
    """Each patch's features next to the Gaussian-weighted mean of its grid neighbours' features.

    Returns ``(N, 2D)``; with ``sigma <= 0`` the features unchanged. Neighbours are
    patches of the same slide; missing (non-tissue) cells do not count.
    """
    features = np.asarray(features, dtype=np.float32)
    if sigma <= 0 or len(features) == 0:
        return features
    ctx = np.empty_like(features)
    rc = np.asarray(rc, dtype=np.int64)
    for s in np.unique(slide_index):
        idx = np.flatnonzero(slide_index == s)
        r, c = rc[idx, 0], rc[idx, 1]
        shape = (int(r.max()) + 1, int(c.max()) + 1)
        img = np.zeros((*shape, features.shape[1]), dtype=np.float32)
        msk = np.zeros(shape, dtype=np.float32)
        img[r, c] = features[idx]
        msk[r, c] = 1.0
        num = ndimage.gaussian_filter(img, (sigma, sigma, 0), mode="constant", truncate=2.0)
        den = ndimage.gaussian_filter(msk, sigma, mode="constant", truncate=2.0)
        ctx[idx] = num[r, c] / np.maximum(den[r, c], 1e-6)[:, None]
    return np.concatenate([features, ctx], axis=1)


def prob_to_mask(
    prob_grid: np.ndarray, *, tissue: np.ndarray | None = None, config: RefineConfig | None = None
) -> np.ndarray:
    """Smooth a ``(rows, cols)`` probability grid, threshold it, drop tiny parts, fill small holes.

    ``tissue`` (bool grid) limits the mask and the smoothing to tissue patches.
    ``min_area`` and ``max_hole`` are in patches (8-connected parts, 4-connected holes).
    """
    config = config or RefineConfig()
    prob = np.asarray(prob_grid, dtype=np.float32)
    valid = np.ones(prob.shape, dtype=bool) if tissue is None else np.asarray(tissue, dtype=bool)
    if config.smooth_sigma > 0:
        num = ndimage.gaussian_filter(np.where(valid, prob, 0), config.smooth_sigma, truncate=3.0)
        den = ndimage.gaussian_filter(valid.astype(np.float32), config.smooth_sigma, truncate=3.0)
        prob = np.where(valid, num / np.maximum(den, 1e-6), 0)
    mask = (prob >= config.threshold) & valid
    return clean_mask(mask, valid, min_part=config.min_area, max_hole=config.max_hole)


def clean_mask(
    mask: np.ndarray, valid: np.ndarray, *, min_part: float, max_hole: float
) -> np.ndarray:
    """``mask`` without 8-connected parts smaller than ``min_part`` cells and with its
    4-connected holes of at most ``max_hole`` cells filled (within ``valid``; holes touching
    the border are not holes). A value <= 0 skips that step."""
    mask = mask.copy()
    if min_part > 0 and mask.any():
        lab, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
        small = np.bincount(lab.ravel(), minlength=n + 1) < min_part
        small[0] = False
        mask[small[lab]] = False
    if max_hole > 0 and (~mask).any():
        lab, n = ndimage.label(~mask)
        fill = np.bincount(lab.ravel(), minlength=n + 1) <= max_hole
        fill[0] = False
        fill[np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))] = False
        mask[fill[lab]] = True
        mask &= valid
    return mask


def fine_prob(
    prob_grid: np.ndarray,
    *,
    tissue: np.ndarray | None = None,
    config: RefineConfig | None = None,
    factor: int = 4,
) -> np.ndarray:
    """Smoothed probability grid resampled bilinearly to ``factor`` x the grid resolution.

    Cell centres keep their values; in between the probability is interpolated, so
    the thresholded outline can pass through a patch instead of along its edges.
    """
    config = config or RefineConfig()
    prob = np.asarray(prob_grid, dtype=np.float32)
    valid = np.ones(prob.shape, bool) if tissue is None else np.asarray(tissue, dtype=bool)
    sigma = max(config.smooth_sigma, 1e-3)
    num = ndimage.gaussian_filter(np.where(valid, prob, 0), sigma, truncate=3.0)
    den = ndimage.gaussian_filter(valid.astype(np.float32), sigma, truncate=3.0)
    smooth = np.where(den > 1e-6, num / np.maximum(den, 1e-6), 0).astype(np.float32)
    f = int(factor)
    gy = (np.arange(prob.shape[0] * f) + 0.5) / f - 0.5
    gx = (np.arange(prob.shape[1] * f) + 0.5) / f - 0.5
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    return ndimage.map_coordinates(smooth, [yy, xx], order=1, mode="nearest").astype(np.float32)


def prob_to_fine_mask(
    prob_grid: np.ndarray,
    *,
    tissue: np.ndarray | None = None,
    config: RefineConfig | None = None,
    factor: int | None = None,
    colour: np.ndarray | None = None,
) -> np.ndarray:
    """Refined mask at ``factor`` (default ``output_upsample``) x grid resolution, for polygons.

    Bilinear sub-patch probability, moved toward the fine cells' colour prototypes when
    ``colour`` (their :func:`protorefine.refine.stain_clusters.cell_features`) is given and
    ``colour_prototypes`` > 0, threshold, limited to tissue patches, then the same
    cleaning as :func:`prob_to_mask` with areas scaled by ``factor**2``.
    """
    config = config or RefineConfig()
    f = int(factor if factor is not None else config.output_upsample)
    if f <= 1:
        return prob_to_mask(prob_grid, tissue=tissue, config=config)
    valid = np.ones(np.shape(prob_grid), bool) if tissue is None else np.asarray(tissue, bool)
    up_valid = np.kron(valid, np.ones((f, f), bool))
    fine = fine_prob(prob_grid, tissue=valid, config=config, factor=f)
    if colour is not None and config.colour_prototypes > 0 and config.colour_weight > 0:
        proto = colour_prototype_prob(
            colour, fine, up_valid, config.colour_prototypes, seed=config.seed
        )
        fine = (1 - config.colour_weight) * fine + config.colour_weight * proto
    mask = fine >= config.threshold
    mask &= up_valid
    cleaned = config.replace(
        smooth_sigma=0.0,
        threshold=0.5,
        min_area=config.min_area * f * f,
        max_hole=config.max_hole * f * f,
    )
    mask = prob_to_mask(mask.astype(np.float32), tissue=up_valid, config=cleaned)
    if cleaned.min_area > 0:  # a part held on only by a corner becomes its own polygon: drop it
        lab, _ = ndimage.label(mask)  # 4-connected, as the polygons are traced
        small = np.bincount(lab.ravel()) < cleaned.min_area
        small[0] = False
        mask[small[lab]] = False
    return mask


def masks_per_slide(
    prob: np.ndarray,
    slide_index: np.ndarray,
    rc: np.ndarray,
    config: RefineConfig | None = None,
) -> np.ndarray:
    """Run ``prob_to_mask`` on every slide's grid and return the per-patch refined labels."""
    config = config or RefineConfig()
    out = np.zeros(len(prob), dtype=bool)
    rc = np.asarray(rc, dtype=np.int64)
    for s in np.unique(slide_index):
        idx = np.flatnonzero(slide_index == s)
        grid = scatter_grid(np.asarray(prob, dtype=np.float32)[idx], rc[idx])
        tissue = scatter_grid(np.ones(len(idx), dtype=bool), rc[idx], grid.shape, fill=False)
        mask = prob_to_mask(grid, tissue=tissue, config=config)
        out[idx] = mask[rc[idx, 0], rc[idx, 1]]
    return out
