"""Read or write annotations in any supported format, chosen by the file extension."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from protorefine.annotations._files import check_input_file
from protorefine.annotations.aperio import APERIO_ROOT, parse_aperio, parse_xml_file
from protorefine.annotations.asap import read_asap_xml, write_asap_xml
from protorefine.annotations.geojson import read_geojson, write_geojson
from protorefine.annotations.masks import MASK_SUFFIXES, read_mask, write_mask
from protorefine.annotations.model import AnnotationSet
from protorefine.annotations.validate import clean
from protorefine.errors import ProtorefineError

GEOJSON_SUFFIXES = (".geojson", ".json")
XML_SUFFIXES = (".xml",)
READ_SUFFIXES = GEOJSON_SUFFIXES + XML_SUFFIXES + MASK_SUFFIXES


def _kind(path: Path, suffixes: Sequence[str]) -> str:
    suffix = path.suffix.lower()
    if suffix in GEOJSON_SUFFIXES:
        return "geojson"
    if suffix in XML_SUFFIXES:
        return "xml"
    if suffix in MASK_SUFFIXES:
        return "mask"
    raise ProtorefineError(
        f"{path}: unsupported annotation extension {suffix or '(none)'!r} "
        f"(expected one of {', '.join(suffixes)})"
    )


def read_annotations(
    path: str | os.PathLike[str],
    *,
    slide_shape: Sequence[int] | None = None,
    allow_empty: bool = False,
) -> AnnotationSet:
    """Read GeoJSON (.geojson/.json), ASAP or Aperio ImageScope XML (.xml) or a mask image
    (.png/.tif/.jpg).

    ``slide_shape`` ``(H, W)`` clips polygons to the slide (with a warning) and gives a
    mask its downsample. Bad input raises a one-line ProtorefineError naming the file;
    a file with no annotation is bad input unless ``allow_empty``.
    """
    p = Path(path)
    kind = _kind(p, READ_SUFFIXES)
    check_input_file(p)
    if kind == "geojson":
        return read_geojson(p, slide_shape=slide_shape, allow_empty=allow_empty)
    if kind == "xml":
        return _read_xml(p, slide_shape=slide_shape, allow_empty=allow_empty)
    return read_mask(p, slide_shape, allow_empty=allow_empty)


def _read_xml(path: Path, *, slide_shape: Sequence[int] | None, allow_empty: bool) -> AnnotationSet:
    """ASAP XML or Aperio ImageScope XML, told apart by the root element."""
    tree = parse_xml_file(path)
    root = tree.tag
    if root == APERIO_ROOT:
        annset = parse_aperio(tree, str(path), allow_empty=allow_empty)
        return clean(annset, str(path), slide_shape=slide_shape, allow_empty=allow_empty)
    if root != "ASAP_Annotations":
        raise ProtorefineError(
            f"{path}: not an ASAP or Aperio ImageScope annotation file (root element "
            f"<{root}>, expected <ASAP_Annotations> or <{APERIO_ROOT}>)"
        )
    return read_asap_xml(path, slide_shape=slide_shape, allow_empty=allow_empty)


def write_annotations(
    annset: AnnotationSet,
    path: str | os.PathLike[str],
    *,
    slide_shape: Sequence[int] | None = None,
    downsample: float = 1.0,
) -> Path:
    """Write GeoJSON, ASAP XML or (with ``slide_shape``) a mask, by extension, atomically."""
    p = Path(path)
    kind = _kind(p, (".geojson", ".json", ".xml", ".png", ".tif", ".tiff"))
    if kind == "geojson":
        write_geojson(annset, p)
    elif kind == "xml":
        write_asap_xml(annset, p)
    else:
        if slide_shape is None:
            raise ProtorefineError(f"{p}: writing a mask needs the slide shape (H, W)")
        write_mask(annset, p, slide_shape, downsample)
    return p
