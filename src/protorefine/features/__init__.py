"""Patch grid, coarse labels per patch, encoders and batched feature extraction."""

from protorefine.features.device import resolve_device
from protorefine.features.encoders import (
    DEFAULT_ENCODER,
    Encoder,
    get_encoder,
    list_encoders,
    register_encoder,
    save_encoder,
)
from protorefine.features.extract import extract_features, read_patches
from protorefine.features.grid import PatchGrid, make_grid
from protorefine.features.images import resize_batch
from protorefine.features.labels import coarse_labels

__all__ = [
    "DEFAULT_ENCODER",
    "Encoder",
    "PatchGrid",
    "coarse_labels",
    "extract_features",
    "get_encoder",
    "list_encoders",
    "make_grid",
    "read_patches",
    "register_encoder",
    "resize_batch",
    "resolve_device",
    "save_encoder",
]
