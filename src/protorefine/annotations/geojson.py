"""QuPath-compatible GeoJSON: read what QuPath (0.2 to 0.6) exports, write what it imports.

QuPath writes a FeatureCollection (or, without that option, a bare list of
features or a single Feature) whose features look like::

    {"type": "Feature", "id": "<uuid>",
     "geometry": {"type": "Polygon", "coordinates": [[[x, y], ...], [hole...]]},
     "properties": {"objectType": "annotation", "name": "...",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "isLocked": false}}

QuPath 0.2 wrote ``"id": "PathAnnotationObject"`` and a classification colour as a
signed ARGB integer ``colorRGB``; other tools write ``classification`` as a plain
string. All of these are read. Coordinates are level-0 pixels, origin top left.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely.geometry
from shapely.errors import GEOSException
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry
from shapely.geometry.polygon import orient

from protorefine._atomic import atomic_write_text
from protorefine.annotations._files import read_input_text
from protorefine.annotations.asap import ASAP_GROUP
from protorefine.annotations.classes import class_color, polygonal
from protorefine.annotations.model import UNCLASSIFIED, Annotation, AnnotationSet
from protorefine.annotations.validate import clean
from protorefine.errors import ProtorefineError

#: Top-level member (an RFC 7946 foreign member) of the outline files protorefine exports:
#: marks a file as protorefine's own result, which a later export may replace.
WRITER_KEY = "protorefine"
#: Property key under which the classification colour read from a file is kept.
CLASS_COLOR = "class_color"
_INTERNAL_KEYS = (CLASS_COLOR, ASAP_GROUP)
_POLYGONAL = ("Polygon", "MultiPolygon", "GeometryCollection")
_SKIPPED_OBJECTS = ("detection", "cell", "tile")
#: What QuPath 0.2's feature ``id`` says an object is (0.3 wrote ``object_type``, 0.4+
#: ``objectType``).
_QUPATH_02_IDS = {
    "PathAnnotationObject": "annotation",
    "PathDetectionObject": "detection",
    "PathCellObject": "cell",
    "PathTileObject": "tile",
}
_GEOMETRY_TYPES = (
    "Point",
    "MultiPoint",
    "LineString",
    "MultiLineString",
    "Polygon",
    "MultiPolygon",
    "GeometryCollection",
)


def _features(obj: Any, source: str) -> list[dict]:
    """The list of Feature-like dicts in any of QuPath's GeoJSON layouts."""
    if isinstance(obj, list):
        items = obj
    elif isinstance(obj, dict):
        kind = obj.get("type")
        if kind == "FeatureCollection" or (kind is None and "features" in obj):
            listed = obj.get("features")
            if not isinstance(listed, list):
                raise ProtorefineError(f"{source}: FeatureCollection without a 'features' list")
            items = listed
        elif kind == "Feature":
            items = [obj]
        elif kind in _GEOMETRY_TYPES:
            items = [{"type": "Feature", "geometry": obj, "properties": {}}]
        else:
            raise ProtorefineError(
                f"{source}: not GeoJSON (top-level object has type {kind!r}, "
                "expected FeatureCollection, Feature or a geometry)"
            )
    else:
        raise ProtorefineError(
            f"{source}: not GeoJSON (top level is a JSON {type(obj).__name__}, "
            "expected an object or a list of features)"
        )
    feats: list[dict] = []
    for item in items:
        if isinstance(item, dict) and item.get("type") in _GEOMETRY_TYPES:
            item = {"type": "Feature", "geometry": item, "properties": {}}
        feats.append(item)
    return feats


def _rgb(value: Any) -> list[int] | None:
    """An ``[r, g, b]`` colour from QuPath's ``color`` list or older signed ARGB ``colorRGB``."""
    if isinstance(value, list | tuple) and len(value) >= 3:
        try:
            return [int(value[0]), int(value[1]), int(value[2])]
        except (TypeError, ValueError):
            return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        v = int(value) & 0xFFFFFF
        return [(v >> 16) & 255, (v >> 8) & 255, v & 255]
    return None


def _classification(props: dict) -> tuple[str, list[int] | None]:
    """Class name and colour from ``properties.classification`` (object or string)."""
    c = props.get("classification")
    if isinstance(c, dict):
        name = c.get("name")
        names = c.get("names")  # QuPath >= 0.4 derived classes may list their parts
        if not name and isinstance(names, list) and names:
            name = ": ".join(str(n) for n in names)
        color = _rgb(c.get("color", c.get("colorRGB")))
        return (str(name) if name else UNCLASSIFIED), color
    if isinstance(c, str) and c.strip():
        return c.strip(), None
    return UNCLASSIFIED, None


def _is_uuid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _object_type(feat: dict, props: dict) -> str:
    """What a QuPath object is (annotation, detection, cell, tile, ...), from ``objectType``
    (0.4+), ``object_type`` (0.3) or the ``id`` (0.2); "annotation" when none says."""
    for key in ("objectType", "object_type"):
        if key in props:
            return str(props[key]).lower()
    return _QUPATH_02_IDS.get(str(feat.get("id")), "annotation")


def parse_geojson(obj: Any, source: str, *, allow_empty: bool = False) -> AnnotationSet:
    """Annotations from an already parsed GeoJSON object (no cleaning, see :func:`read_geojson`)."""
    feats = _features(obj, source)
    anns: list[Annotation] = []
    other: Counter[str] = Counter()
    unreadable = 0
    skipped_objects: Counter[str] = Counter()
    for feat in feats:
        if not isinstance(feat, dict):
            other[type(feat).__name__] += 1
            continue
        geom_obj = feat.get("geometry")
        props = feat.get("properties") or {}
        if not isinstance(props, dict):
            props = {}
        kind = geom_obj.get("type") if isinstance(geom_obj, dict) else None
        if kind not in _POLYGONAL:
            other[str(kind) if kind else "no geometry"] += 1
            continue
        object_type = _object_type(feat, props)
        if object_type in _SKIPPED_OBJECTS:
            skipped_objects[object_type] += 1
            continue
        try:
            geom: BaseGeometry = shapely.geometry.shape(geom_obj)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError, GEOSException):
            unreadable += 1
            continue
        poly = polygonal(geom) if not isinstance(geom, Polygon | MultiPolygon) else geom
        if poly.is_empty:
            other[f"empty {kind}"] += 1
            continue
        name, color = _classification(props)
        extra = {
            k: v
            for k, v in props.items()
            if k not in ("objectType", "object_type", "classification", "name")
        }
        if color is not None:
            extra[CLASS_COLOR] = color
        label = props.get("name")
        fid = feat.get("id")
        anns.append(
            Annotation(
                geometry=poly,
                classification=name,
                name=str(label) if label is not None else None,
                properties=extra,
                id=str(fid) if fid is not None and _is_uuid(fid) else None,
            )
        )
    warnings: list[str] = []
    if skipped_objects:
        what = ", ".join(f"{n} {k}" for k, n in skipped_objects.items())
        warnings.append(f"{source}: ignored {what} object(s) (only annotations are read)")
    if other:
        what = ", ".join(f"{n} {k}" for k, n in other.items())
        warnings.append(f"{source}: ignored {what} feature(s) that are not polygons")
    if unreadable:
        warnings.append(f"{source}: skipped {unreadable} feature(s) with unreadable coordinates")
    if not anns and not allow_empty:
        if not feats:
            raise ProtorefineError(f"{source}: contains no features (empty annotation)")
        found = ", ".join(f"{n} {k}" for k, n in (other + skipped_objects).items())
        bad = f"{unreadable} with unreadable coordinates" if unreadable else ""
        found = ", ".join(x for x in (found, bad) if x)
        raise ProtorefineError(
            f"{source}: no Polygon or MultiPolygon annotation found (found {found})"
        )
    return AnnotationSet(annotations=anns, warnings=warnings)


def read_geojson(
    path: str | os.PathLike[str],
    *,
    slide_shape: Sequence[int] | None = None,
    allow_empty: bool = False,
) -> AnnotationSet:
    """Read a QuPath GeoJSON file (FeatureCollection, Feature, list or bare geometry).

    Self-intersecting polygons are repaired and, with ``slide_shape`` ``(H, W)``,
    clipped to the slide; each repair is reported in ``warnings``. A file without
    polygons is an error unless ``allow_empty`` (e.g. a stored result with no tumour).
    """
    source = str(path)
    text = read_input_text(path)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProtorefineError(
            f"{source}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        ) from e
    except RecursionError as e:
        raise ProtorefineError(f"{source}: JSON nested too deeply to read") from e
    annset = parse_geojson(obj, source, allow_empty=allow_empty)
    return clean(annset, source, slide_shape=slide_shape, allow_empty=allow_empty)


def _ring_coords(coords: Any) -> list:
    a = np.asarray(coords, dtype=float)[:, :2]
    if np.all(a == np.round(a)) and np.all(np.abs(a) < 2**53):
        return a.astype(np.int64).tolist()
    return a.tolist()


def _geometry_json(geom: Polygon | MultiPolygon) -> dict:
    """GeoJSON geometry with plain lists (integers where the coordinates are whole), rings
    wound as RFC 7946 section 3.1.6 asks: exteriors counter-clockwise, holes clockwise.

    The winding is that of the numbers as written (positive shoelace area for an exterior),
    which is what GeoJSON consumers compute (shapely's ``is_ccw``, turf, geojson-rewind);
    with the image's y axis pointing down an exterior therefore runs clockwise on screen.
    QuPath reads either winding and writes its rings as its JTS geometry holds them, without
    reorienting (``ROITypeAdapters.writeCoordinates`` in qupath-core), so following the RFC
    costs QuPath nothing.
    """

    def poly(p: Polygon) -> list:
        p = orient(p, sign=1.0)
        return [_ring_coords(p.exterior.coords)] + [_ring_coords(r.coords) for r in p.interiors]

    if isinstance(geom, MultiPolygon):
        return {"type": "MultiPolygon", "coordinates": [poly(p) for p in geom.geoms]}
    return {"type": "Polygon", "coordinates": poly(geom)}


def feature(ann: Annotation, *, keep_asap_group: bool = False) -> dict:
    """One annotation as a QuPath annotation Feature (fresh UUID when it has none);
    ``keep_asap_group``: with the ASAP group it was read from (project files only)."""
    props: dict[str, Any] = {"objectType": "annotation"}
    if ann.name:
        props["name"] = ann.name
    if ann.classification and ann.classification != UNCLASSIFIED:
        color = _rgb(ann.properties.get(CLASS_COLOR)) or list(class_color(ann.classification))
        props["classification"] = {"name": ann.classification, "color": color}
    for k, v in ann.properties.items():
        if (k not in _INTERNAL_KEYS or (keep_asap_group and k == ASAP_GROUP)) and k not in props:
            props[k] = v
    props.setdefault("isLocked", False)
    return {
        "type": "Feature",
        "id": ann.id or str(uuid.uuid4()),
        "geometry": _geometry_json(polygonal(ann.geometry)),
        "properties": props,
    }


def to_geojson_text(
    annset: AnnotationSet, writer: dict | None = None, *, keep_asap_group: bool = False
) -> str:
    """The set as a FeatureCollection text, one feature per line (with ``writer`` as the
    top-level :data:`WRITER_KEY` member when given; ``keep_asap_group``: see :func:`feature`)."""
    feats = [feature(a, keep_asap_group=keep_asap_group) for a in annset if not a.geometry.is_empty]
    body = ",\n".join(json.dumps(f, separators=(",", ":")) for f in feats)
    head = '{"type":"FeatureCollection",'
    if writer is not None:
        head += f"{json.dumps(WRITER_KEY)}:{json.dumps(writer, separators=(',', ':'))},"
    return head + '"features":[\n' + body + "\n]}\n"


def write_geojson(
    annset: AnnotationSet,
    path: str | os.PathLike[str],
    *,
    writer: dict | None = None,
    keep_asap_group: bool = False,
) -> os.PathLike[str]:
    """Write the set as a QuPath-importable FeatureCollection, atomically; returns the path.
    ``writer`` (e.g. the version and slide) marks the file as protorefine's result
    (:func:`written_by_protorefine`); ``keep_asap_group`` keeps each annotation's ASAP
    group (the project's coarse file, so an ASAP export keeps the input's groups)."""
    if writer is None and not keep_asap_group:
        text = to_geojson_text(annset)
    else:
        text = to_geojson_text(annset, writer, keep_asap_group=keep_asap_group)
    return atomic_write_text(path, text)


def written_by_protorefine(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a GeoJSON file protorefine exported (it carries the top-level
    :data:`WRITER_KEY` member; QuPath and other tools drop it when they save the file)."""
    try:
        obj = json.loads(read_input_text(path))
    except (ProtorefineError, OSError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and isinstance(obj.get(WRITER_KEY), dict)
