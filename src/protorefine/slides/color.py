"""Colour management for display: a slide's embedded ICC profile and conversion to sRGB.

The pipeline (features, classifier, exports) keeps the raw pixels the readers return; only
what is shown on screen is converted, so a slide looks as its scanner meant it to.
"""

from __future__ import annotations

import io
import threading
from functools import lru_cache

import dask.array as da
import numpy as np
from PIL import Image, ImageCms

from protorefine.errors import ProtorefineError
from protorefine.slides.base import Slide

#: TIFF tag holding an embedded ICC profile (InterColorProfile).
ICC_TAG = 34675
#: Relative colorimetric: colours inside sRGB's gamut (nearly all H&E stain colours) are kept
#: exactly, only out-of-gamut ones are clipped; perceptual would shift every colour by the
#: vendor's own gamut-compression table, and matrix profiles have none (lcms falls back).
INTENT = ImageCms.Intent.RELATIVE_COLORIMETRIC

_SRGB = ImageCms.createProfile("sRGB")


def icc_profile(slide: Slide) -> bytes | None:
    """The slide's embedded ICC profile as bytes, ``None`` when the file has none."""
    return slide.icc_profile or None


class _Transform:
    """One lcms transform profile -> sRGB and a lock: lcms' one-pixel cache is not thread-safe."""

    def __init__(self, profile: bytes) -> None:
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            self.transform = ImageCms.buildTransform(source, _SRGB, "RGB", "RGB", INTENT)
        except (ImageCms.PyCMSError, OSError, ValueError) as exc:
            raise ProtorefineError(f"embedded ICC profile cannot be used ({exc})") from exc
        self.lock = threading.Lock()

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), "RGB")
        with self.lock:
            out = self.transform.apply(image)
        return np.asarray(out, dtype=np.uint8)


@lru_cache(maxsize=8)
def _transform(profile: bytes) -> _Transform:
    """Built once per profile: building costs milliseconds, applying to a tile much less."""
    return _Transform(profile)


def to_srgb(rgb: np.ndarray, profile: bytes) -> np.ndarray:
    """Convert an ``(H, W, 3)`` uint8 RGB array from ``profile`` (ICC bytes) to sRGB."""
    if rgb.size == 0:
        return np.asarray(rgb, dtype=np.uint8)
    return _transform(profile).apply(rgb[..., :3])


def srgb_levels(slide: Slide) -> list[da.Array]:
    """The slide's levels converted lazily, chunk by chunk, to sRGB from its embedded profile;
    the raw levels when it has none. Raises ``ProtorefineError`` on a profile lcms refuses."""
    profile = icc_profile(slide)
    if profile is None:
        return list(slide.levels)
    _transform(profile)  # fail now, in one line, rather than in a napari paint thread
    return [
        da.map_blocks(to_srgb, lvl, profile, dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8))
        for lvl in slide.levels
    ]
