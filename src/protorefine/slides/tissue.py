"""Low-resolution tissue mask: Otsu on HSV saturation (capped), not white, cleaned of specks and holes."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
from scipy import ndimage as ndi
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu

from protorefine.slides.base import Slide, compute

# Saturation at or below _MIN_SAT is never tissue; pixels whose darkest channel is
# at least _WHITE are background; a low-saturation class whose median darkest channel
# is at least _GLASS is glass (so the slide has background).
_MIN_SAT = 0.05
_WHITE = 235
_GLASS = 200
# Glass is never more saturated than this (scanned glass: 0.00-0.03). A higher Otsu cut
# splits pale tissue from dark instead of tissue from glass: uncapped, it dropped 38 % of
# the tumour pixels of the OCDC tiles (pale squamous carcinoma) and the pale stroma of
# the synthetic slides; capped, 4 % (docs/benchmarks.md, "Tissue detection").
_MAX_GLASS_SAT = 0.08
# A thumbnail whose channels never differ by more than this is grayscale (R = G = B).
_GREY_SPREAD = 2


def _thumbnail(slide: Slide, max_size: int) -> tuple[np.ndarray, float]:
    """The largest level that fits ``max_size``, or a larger level averaged down lazily to fit.

    A larger level is averaged down when no level fits, or when the fitting one is
    under half of ``max_size`` and the level above it is at most 4x ``max_size``.
    """
    h0, w0 = slide.shape
    # The largest level that fits max_size (levels go from large to small).
    fits = next((i for i, lvl in enumerate(slide.levels) if max(lvl.shape[:2]) <= max_size), None)
    small_enough = fits is not None and (
        fits == 0
        or max(slide.levels[fits].shape[:2]) * 2 > max_size
        or max(slide.levels[fits - 1].shape[:2]) > 4 * max_size
    )
    if fits is not None and small_enough:
        lvl = slide.levels[fits]
        return compute(lvl, "threads"), w0 / lvl.shape[1]
    # No level fits (or the fitting one is needlessly small): area-average the
    # smallest level larger than max_size by an integer factor, chunk by chunk.
    i = fits - 1 if fits is not None else len(slide.levels) - 1
    lvl = slide.levels[i]
    factor = math.ceil(max(lvl.shape[:2]) / max_size)
    h, w = (lvl.shape[0] // factor) * factor, (lvl.shape[1] // factor) * factor
    cropped = lvl[:h, :w].rechunk(
        (
            max(factor, lvl.chunksize[0] // factor * factor),
            max(factor, lvl.chunksize[1] // factor * factor),
            3,
        )
    )
    small = da.coarsen(np.mean, cropped.astype(np.float32), {0: factor, 1: factor})
    thumb = np.round(compute(small, "threads")).astype(np.uint8)
    return thumb, (w0 / lvl.shape[1]) * factor


def tissue_mask(slide: Slide, *, max_size: int = 2048) -> tuple[np.ndarray, float]:
    """Boolean tissue mask at low resolution and its downsample relative to level 0.

    Tissue is saturated (Otsu threshold on HSV saturation, capped at a saturation glass
    never reaches, so pale tissue is not split off with the glass) and not near-white.
    When the low-saturation Otsu class is not bright glass, the slide is filled with
    tissue and the threshold drops to a small floor so pale stroma stays tissue.
    Specks smaller than 0.05% of the image are removed and such small holes filled.
    """
    thumb, downsample = _thumbnail(slide, max_size)
    rgb = thumb[..., :3]
    sat = rgb2hsv(rgb)[..., 1]
    bright = rgb.min(axis=2)
    cut = _MIN_SAT
    if np.ptp(sat) > 1e-6:
        otsu = float(threshold_otsu(sat))
        low = sat <= otsu
        glass = low.any() and float(np.median(bright[low])) >= _GLASS
        cut = min(max(otsu, _MIN_SAT), _MAX_GLASS_SAT) if glass else _MIN_SAT
    mask = (sat > cut) & (bright < _WHITE)
    if int(np.ptp(rgb.astype(np.int16), axis=2).max(initial=0)) <= _GREY_SPREAD:
        mask = _grey_tissue(bright)  # a grayscale slide: no saturation to go by
    min_area = max(16, int(mask.size * 0.0005))
    mask = _remove_small(mask, min_area)
    mask = ~_remove_small(~mask, min_area)
    return mask, float(downsample)


def _grey_tissue(grey: np.ndarray) -> np.ndarray:
    """Tissue of a grayscale slide: darker than the glass. Otsu splits dark tissue from the
    rest, a second Otsu the rest into pale tissue and glass; the cut lies halfway between
    that split and the glass's median brightness (at most :data:`_WHITE`). A slide whose
    brightest class is not glass (median under :data:`_GLASS`) is all tissue below white."""
    cut = float(_WHITE)
    if np.ptp(grey) > 1:
        upper = grey[grey > threshold_otsu(grey)]
        if upper.size and np.ptp(upper) > 1:
            split = float(threshold_otsu(upper))
            glass = float(np.median(upper[upper > split]))
            if glass >= _GLASS:
                cut = min(cut, (split + glass) / 2)
    return np.asarray(grey < cut)


def _remove_small(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Drop 8-connected components of ``mask`` smaller than ``min_area`` pixels."""
    labels, n = ndi.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_area
    keep[0] = False
    return keep[labels]
