"""PNG/JPEG backend (scikit-image): small images read once and wrapped as a one-level slide."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import skimage.io

from protorefine.errors import ProtorefineError
from protorefine.slides._rgb import rgb_numpy
from protorefine.slides.base import Slide

_CHUNK = 1024


def open_image(path: Path, name: str) -> Slide:
    """Open a PNG or JPEG file as a single-level slide (no microns per pixel)."""
    try:
        image = np.asarray(skimage.io.imread(path))
    except Exception as exc:
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise ProtorefineError(
            f"{path}: not a readable {path.suffix.lstrip('.').upper()} image ({msg})"
        ) from exc
    rgb = rgb_numpy(image, path)
    level = da.from_array(rgb, chunks=(_CHUNK, _CHUNK, 3))
    return Slide(path=path, name=name, levels=[level], mpp=None, backend="scikit-image")
