"""``open_slide``: pick a backend from the path and return a validated lazy Slide."""

from __future__ import annotations

import os
from pathlib import Path

from protorefine.errors import ProtorefineError
from protorefine.slides import openslide as openslide_backend
from protorefine.slides.base import Slide
from protorefine.slides.image import open_image
from protorefine.slides.omezarr import is_ome_zarr, open_ome_zarr
from protorefine.slides.tiff import open_tiff

TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".btf", ".tf8", ".ndpi", ".qptiff")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OPENSLIDE_SUFFIXES = (".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
SUPPORTED = TIFF_SUFFIXES + IMAGE_SUFFIXES + OPENSLIDE_SUFFIXES + (".zarr",)


def slide_name(path: Path) -> str:
    """The slide's name: the file name without its (double) extension, e.g. ``a.ome.tif`` -> ``a``."""
    name = path.name.rstrip("/")
    for double in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if name.lower().endswith(double):
            return name[: -len(double)]
    return Path(name).stem


def open_slide(path: str | os.PathLike[str]) -> Slide:
    """Open a slide file or OME-Zarr folder as a lazy RGB pyramid with microns per pixel.

    Raises :class:`ProtorefineError` (one line naming the file) for a missing,
    unsupported, truncated or unreadable input.
    """
    path = Path(path)
    name = slide_name(path)
    if not path.exists():
        raise ProtorefineError(f"{path}: file not found")
    if path.is_dir():
        if not is_ome_zarr(path):
            raise ProtorefineError(
                f"{path}: folder is not an OME-Zarr image (no 'multiscales' metadata)"
            )
        return open_ome_zarr(path, name)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return open_tiff(path, name)
    if suffix in IMAGE_SUFFIXES:
        return open_image(path, name)
    if suffix in OPENSLIDE_SUFFIXES:
        return openslide_backend.open_openslide(path, name)
    raise ProtorefineError(
        f"{path}: unsupported file type '{suffix or path.name}' (supported: {', '.join(SUPPORTED)})"
    )
