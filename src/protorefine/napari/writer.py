"""napari writer: Shapes layers out as one QuPath-compatible GeoJSON FeatureCollection.

Vertices are written in level-0 pixels of the slide under the layer: world
coordinates (``data * scale + translate``) divided by the slide's pixel scale,
taken from the layer's ``protorefine_pixel_scale`` metadata, else its ``scale``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from protorefine.annotations import AnnotationSet, write_geojson
from protorefine.errors import ProtorefineError
from protorefine.napari.layers import META_PIXEL_SCALE, shapes_from_world


def write_shapes(path: str, data: Any, meta: dict | None = None) -> list[str]:
    """Write one Shapes layer (``data, meta``) or a list of ``(data, meta, type)`` to GeoJSON."""
    layers = [(data, meta, "shapes")] if meta is not None else list(data)
    merged = AnnotationSet()
    for layer_data, layer_meta, layer_type in layers:
        if layer_type != "shapes":
            continue
        annset = meta_to_annotations(layer_data, layer_meta or {})
        merged.annotations.extend(annset.annotations)
        merged.warnings.extend(annset.warnings)
    if not merged.annotations:
        raise ProtorefineError(f"{Path(path).name}: the Shapes layer has no polygons to save")
    target = Path(path)
    if target.suffix.lower() not in (".geojson", ".json"):
        target = target.with_suffix(".geojson")
    write_geojson(merged, target)
    return [str(target)]


def meta_to_annotations(data: list[np.ndarray], meta: dict) -> Any:
    """One Shapes layer's data and napari metadata as a level-0 AnnotationSet."""
    ndim = len(meta.get("scale", (1.0, 1.0)))
    scale = np.asarray(meta.get("scale", np.ones(ndim)), dtype=float)[-2:]
    translate = np.asarray(meta.get("translate", np.zeros(ndim)), dtype=float)[-2:]
    metadata = meta.get("metadata") or {}
    types = meta.get("shape_type", ["polygon"] * len(data))
    if isinstance(types, str):
        types = [types] * len(data)
    classes = None
    features = meta.get("features")
    if features is not None and "classification" in features and len(features) == len(data):
        classes = [str(c) for c in features["classification"]]
    return shapes_from_world(
        list(data), list(types), scale, translate, metadata.get(META_PIXEL_SCALE), metadata, classes
    )
