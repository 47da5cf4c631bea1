"""Annotations: one internal form (shapely polygons in level-0 pixels) and every way in and out.

GeoJSON (QuPath), ASAP XML (CAMELYON16), Aperio ImageScope XML, mask images at any downsample, napari
Shapes data; exact rasterise / vectorise; the tumour region of a set.
"""

from protorefine.annotations.aperio import read_aperio_xml
from protorefine.annotations.asap import read_asap_xml, write_asap_xml
from protorefine.annotations.classes import (
    is_exclusion_class,
    is_tumour_class,
    tumour_class_name,
    tumour_geometry,
)
from protorefine.annotations.geojson import read_geojson, write_geojson
from protorefine.annotations.io import read_annotations, write_annotations
from protorefine.annotations.masks import read_mask, read_mask_array, write_mask
from protorefine.annotations.model import (
    EXCLUDE,
    NORMAL,
    TUMOR,
    UNCLASSIFIED,
    Annotation,
    AnnotationSet,
)
from protorefine.annotations.raster import (
    fit_mask,
    mask_shape,
    rasterize,
    smooth_outline,
    vectorize,
)
from protorefine.annotations.shapes import annotations_to_shapes, shapes_to_annotations

__all__ = [
    "EXCLUDE",
    "NORMAL",
    "TUMOR",
    "UNCLASSIFIED",
    "Annotation",
    "AnnotationSet",
    "annotations_to_shapes",
    "is_exclusion_class",
    "is_tumour_class",
    "fit_mask",
    "mask_shape",
    "rasterize",
    "read_annotations",
    "read_aperio_xml",
    "read_asap_xml",
    "read_geojson",
    "read_mask",
    "read_mask_array",
    "shapes_to_annotations",
    "smooth_outline",
    "tumour_class_name",
    "tumour_geometry",
    "vectorize",
    "write_annotations",
    "write_asap_xml",
    "write_geojson",
    "write_mask",
]
