"""Slides: open any slide as a lazy RGB pyramid, convert it to OME-Zarr, find its tissue."""

from protorefine.slides.base import Slide
from protorefine.slides.convert import convert_to_ome_zarr
from protorefine.slides.dispatch import open_slide
from protorefine.slides.tissue import tissue_mask

__all__ = ["Slide", "convert_to_ome_zarr", "open_slide", "tissue_mask"]
