"""Optional OpenSlide backend for formats tifffile cannot read (MRXS, NDPI, SCN, VMS, ...)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import dask.array as da
import numpy as np

from protorefine.errors import ProtorefineError
from protorefine.slides.base import Slide, compute

_CHUNK = 1024


def available() -> bool:
    """True when the ``openslide`` package (``pip install protorefine[openslide]``) is installed."""
    return importlib.util.find_spec("openslide") is not None


def _level_array(osr, level: int) -> da.Array:
    """A lazy (H, W, 3) uint8 view of one OpenSlide level, read region by region."""
    w, h = osr.level_dimensions[level]
    down = osr.level_downsamples[level]
    chunks = (
        tuple(min(_CHUNK, h - y) for y in range(0, h, _CHUNK)),
        tuple(min(_CHUNK, w - x) for x in range(0, w, _CHUNK)),
        (3,),
    )

    def read(block_info=None) -> np.ndarray:
        (y0, y1), (x0, x1), _ = block_info[None]["array-location"]
        # read_region takes level-0 coordinates for the top-left corner. With a
        # non-integer downsample OpenSlide resamples at the leftover sub-pixel offset
        # (at most half a pixel after rounding); level 0 is always exact.
        origin = (int(round(x0 * down)), int(round(y0 * down)))
        region = osr.read_region(origin, level, (x1 - x0, y1 - y0))
        rgba = np.asarray(region)
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        # Transparent pixels (outside the scanned area) become white, as OpenSlide advises.
        rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return np.round(rgb).astype(np.uint8)

    return da.map_blocks(read, dtype=np.uint8, chunks=chunks, meta=np.empty((0, 0, 0), np.uint8))


def open_openslide(path: Path, name: str) -> Slide:
    """Open ``path`` with OpenSlide; ProtorefineError when it is missing or cannot read the file."""
    if not available():
        raise ProtorefineError(
            f"{path}: {path.suffix} files need the optional OpenSlide backend "
            "(pip install 'protorefine[openslide]')"
        )
    import openslide

    try:
        osr = openslide.OpenSlide(str(path))
        levels = [_level_array(osr, i) for i in range(osr.level_count)]
        compute(levels[0][:16, :16])
    except Exception as exc:
        raise ProtorefineError(
            f"{path}: OpenSlide cannot read it ({' '.join(str(exc).split())})"
        ) from exc
    mpp_x = osr.properties.get(openslide.PROPERTY_NAME_MPP_X)
    try:
        mpp = float(mpp_x) if mpp_x else None
    except ValueError:
        mpp = None
    associated = {}
    for key in ("label", "macro", "thumbnail"):
        if key in osr.associated_images:
            associated[key] = np.asarray(osr.associated_images[key].convert("RGB"))
    # OpenSlide >= 4 / openslide-python >= 1.4 expose the embedded profile; older ones do not
    profile = getattr(osr, "color_profile", None)
    icc = profile.tobytes() if profile is not None else None
    return Slide(
        path=path,
        name=name,
        levels=levels,
        mpp=mpp,
        associated=associated,
        backend="openslide",
        icc_profile=icc or None,
    )
