"""napari reader: slides open as one lazy multiscale RGB layer, annotations as a Shapes layer,
the masks protorefine writes (``--mask-downsample``) as a Labels layer over their slide.

Thin: the library opens the file (``protorefine.slides.open_slide``,
``protorefine.annotations.read_annotations``); this module only turns the result
into napari layer data. Paths it cannot read give ``None`` so napari tries
another reader; a file it claims but cannot open raises ``ProtorefineError``
with one line naming the file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from protorefine.annotations import read_annotations, read_mask_array
from protorefine.annotations.masks import mask_metadata
from protorefine.errors import ProtorefineError
from protorefine.napari.layers import (
    CLASS_COLORS,
    META_MPP,
    META_PIXEL_SCALE,
    TUMOUR_LABEL,
    LayerData,
    edge_width_for,
    image_layer_data,
    pixel_layer_geometry,
    pixel_scale,
    shapes_layer_data,
    world_units,
)
from protorefine.slides import open_slide
from protorefine.slides.dispatch import SUPPORTED
from protorefine.slides.omezarr import read_ngff_labels

#: Every slide file the library opens: TIFF family (SVS, NDPI, QPTIFF...) through tifffile,
#: MRXS, SCN, BIF... through OpenSlide when installed (else one line naming the extra).
SLIDE_SUFFIXES = tuple(s for s in SUPPORTED if s != ".zarr")
ANNOTATION_SUFFIXES = (".geojson", ".json", ".xml")
_SNIFF_BYTES = 4096
#: Strings that mark a ``.json`` file as GeoJSON (other JSON files are left to other readers).
GEOJSON_MARKERS = ('"FeatureCollection"', '"Feature"', '"geometry"', '"Polygon"', '"MultiPolygon"')

ReaderFunction = Callable[[Any], list[LayerData]]


def get_reader(path: str | list[str]) -> ReaderFunction | None:
    """Return a reader for ``path`` (one path or a list of them), or None if it is not ours."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if not paths or any(_kind(Path(p)) is None for p in paths):
        return None
    return read_paths


def read_paths(path: str | list[str]) -> list[LayerData]:
    """Read slides and annotation files into napari layer data."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    out: list[LayerData] = []
    for item in paths:
        p = Path(item)
        kind = _kind(p)
        if kind == "slide":
            out.append(read_slide(p))
            if p.is_dir():
                out.extend(read_labels_layers(p, out[-1][1]))
        elif kind == "mask":
            out.append(read_mask_layer(p))
        else:
            out.append(read_annotation_layer(p))
    return out


def read_slide(path: str | Path, srgb: bool | None = None) -> LayerData:
    """One multiscale RGB image layer for a slide file or OME-Zarr folder, lazily; a slide
    with an embedded ICC profile is shown in sRGB unless ``srgb=False`` (or
    ``PROTOREFINE_DISPLAY_COLOR=raw``): see ``layers.image_layer_data``."""
    return image_layer_data(open_slide(path), srgb=srgb)


def read_labels_layers(path: str | Path, image_meta: dict) -> list[LayerData]:
    """A Labels layer for each NGFF labels image of an OME-Zarr slide (e.g. exported refined
    outlines), over the slide; labels that cannot be read are skipped with a warning."""
    try:
        found = read_ngff_labels(path)
    except ProtorefineError as exc:
        _warn(str(exc))
        return []
    layers = []
    for lab in found:
        meta = {
            "name": f"{image_meta['name']} {lab.name}",
            "scale": lab.scale,
            "translate": lab.translation,
            "units": image_meta["units"],
            "opacity": 0.5,
            "multiscale": len(lab.levels) > 1,
        }
        if lab.colors:
            meta["colormap"] = {None: (0.0, 0.0, 0.0, 0.0), 0: (0.0, 0.0, 0.0, 0.0), **lab.colors}
        layers.append((lab.levels if len(lab.levels) > 1 else lab.levels[0], meta, "labels"))
    return layers


def read_annotation_layer(path: str | Path, s: float | None = None) -> LayerData:
    """A Shapes layer for a GeoJSON / ASAP XML file, placed over the matching slide.

    The slide's pixel scale comes from ``s``, else from an open protorefine image
    layer in the current viewer (same name as the file's stem, else the active
    or last one), else from a slide file with the same stem beside it, else 1.
    """
    path = Path(path)
    s_ctx, mpp, shape = _slide_context(path)
    if s is None:
        s = s_ctx
    annset = read_annotations(path, slide_shape=shape)
    for warning in getattr(annset, "warnings", []):
        _warn(warning if path.name in warning else f"{path.name}: {warning}")
    width = edge_width_for(shape) if shape else 8.0
    return shapes_layer_data(annset, s, name=f"{_stem(path)} annotation", mpp=mpp, edge_width=width)


def read_mask_layer(path: str | Path) -> LayerData:
    """A mask protorefine wrote (e.g. ``refine --mask-downsample``) as a Labels layer laid
    over its slide: each mask pixel covers its ``downsample`` level-0 pixels, in the world
    units of the slide open in the viewer, else of the slide pixel size the mask records."""
    path = Path(path)
    meta = mask_metadata(path) or {}
    mask, d, _ = read_mask_array(path)
    layer = _viewer_slide_layer(_stem(path).removesuffix("_mask"))
    if layer is not None:
        s, mpp = float(layer.metadata.get(META_PIXEL_SCALE) or 1.0), layer.metadata.get(META_MPP)
    else:
        mpp = meta.get("slide_mpp")
        s = pixel_scale(mpp)
    scale, translate = pixel_layer_geometry(d, s)
    labels = mask.astype("uint8") * TUMOUR_LABEL
    opts = {
        "name": _stem(path),
        "scale": scale,
        "translate": translate,
        "units": world_units(mpp),
        "opacity": 0.5,
        "colormap": dict(CLASS_COLORS),
        "metadata": {"protorefine_mask": meta},
    }
    return (labels, opts, "labels")


def _kind(path: Path) -> str | None:
    """ "slide", "mask", "annotation" or None for a path this reader does not handle."""
    name = path.name.lower()
    if name.endswith(".zarr"):
        return "slide" if path.is_dir() or not path.exists() else None
    if name.endswith(SLIDE_SUFFIXES):
        if path.is_dir():
            return None
        if name.endswith((".tif", ".tiff", ".png")) and mask_metadata(path) is not None:
            return "mask"
        return "slide"
    if name.endswith(ANNOTATION_SUFFIXES):
        if not path.is_file():
            return None
        head = _head(path)
        if name.endswith(".xml"):
            return "annotation" if "ASAP_Annotation" in head or "<Annotation" in head else None
        if name.endswith(".geojson"):
            return "annotation"
        return "annotation" if any(k in head for k in GEOJSON_MARKERS) else None
    return None


def _head(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(_SNIFF_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".geojson", ".json", ".xml"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _slide_context(path: Path) -> tuple[float, float | None, tuple[int, int] | None]:
    """(pixel scale, mpp, level-0 shape) of the slide an annotation file belongs to."""
    stem = _stem(path)
    layer = _viewer_slide_layer(stem)
    if layer is not None:
        md = layer.metadata
        data = layer.data[0] if layer.multiscale else layer.data
        shape = (int(data.shape[0]), int(data.shape[1]))
        return float(md.get(META_PIXEL_SCALE) or 1.0), md.get(META_MPP), shape
    for sibling in sorted(path.parent.glob(f"{stem}.*")):
        if sibling != path and _kind(sibling) == "slide":
            try:
                slide = open_slide(sibling)
            except Exception:  # a broken sibling just means no context
                continue
            return pixel_scale(slide.mpp), slide.mpp, slide.shape
    return 1.0, None, None


def _viewer_slide_layer(stem: str) -> Any:
    try:
        import napari
        from napari.layers import Image
    except ImportError:
        return None
    viewer = napari.current_viewer()
    if viewer is None:
        return None
    slides = [
        lay for lay in viewer.layers if isinstance(lay, Image) and META_PIXEL_SCALE in lay.metadata
    ]
    if not slides:
        return None
    for lay in slides:
        if lay.name == stem or Path(str(lay.metadata.get("protorefine_path", ""))).stem == stem:
            return lay
    active = viewer.layers.selection.active
    return active if active in slides else slides[-1]


def _warn(message: str) -> None:
    try:
        from napari.utils.notifications import show_warning
    except ImportError:
        return
    show_warning(message)
