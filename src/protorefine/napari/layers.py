"""Build napari layers from library objects (slides, annotations, patch-grid results).

World unit: micrometres when the slide's mpp is known, else level-0 pixels.
``pixel_scale(mpp)`` is the world size of one level-0 pixel. Layers keep their
data in their own pixels and carry ``scale``/``translate``:

- slide image: multiscale levels, ``scale = (s, s)`` with ``s = pixel_scale``;
- Shapes: vertices in level-0 pixels ``(y, x)``, ``scale = (s, s)``;
- grid layers: one pixel per patch-grid cell, ``scale = step * s`` where ``step``
  is the grid stride in level-0 pixels, translated so each cell covers its patch.

Grid label values: prototype layers show ``id + 1`` (0 = off tissue);
class layers (pseudo-labels, refined, corrections) use :data:`NORMAL_LABEL` and
:data:`TUMOUR_LABEL` (0 = none).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from protorefine.annotations import (
    annotations_to_shapes,
    shapes_to_annotations,
    tumour_class_name,
)
from protorefine.errors import ProtorefineError
from protorefine.napari.layer_names import (
    COARSE,
    CONFIDENCE,
    CORRECTIONS,
    GLOBAL_PROTOTYPES,
    IMAGE_GRID_LAYERS,
    LOCAL_PROTOTYPES,
    PIXEL_LAYERS,
    PIXEL_PSEUDO,
    PROBABILITY,
    PSEUDO_LABELS,
    REFINED,
)
from protorefine.slides.color import srgb_levels

if TYPE_CHECKING:
    from napari.layers import Image, Layer, Shapes

    from protorefine.annotations.model import AnnotationSet
    from protorefine.features.grid import PatchGrid
    from protorefine.project import Project
    from protorefine.slides.base import Slide

LayerData = tuple[Any, dict[str, Any], str]

NORMAL_LABEL = 1
TUMOUR_LABEL = 2
CLASS_COLORS = {
    None: "transparent",
    0: "transparent",
    NORMAL_LABEL: "#3b82f6",
    TUMOUR_LABEL: "#ef4444",
}
CLASS_EDGE_COLORS = {"Tumor": "#ffd400", "Normal": "#22c55e", "Exclusion": "#a855f7"}

#: Grid layer name -> key of ``Project.result_grid`` (corrections come from ``Project.corrections``).
RESULT_KEYS = {
    LOCAL_PROTOTYPES: "local_proto",
    GLOBAL_PROTOTYPES: "global_proto",
    PSEUDO_LABELS: "pseudo",
    REFINED: "refined",
    CONFIDENCE: "confidence",
    PROBABILITY: "prob",
}
CLASS_LAYERS = (PSEUDO_LABELS, REFINED, CORRECTIONS)
PROTOTYPE_LAYERS = (LOCAL_PROTOTYPES, GLOBAL_PROTOTYPES)

#: Edit actions of ``Shapes.events.data`` that end an edit (the others are in-progress).
FINISHED_ACTIONS = frozenset({"added", "removed", "changed"})

META_PATH = "protorefine_path"
META_MPP = "protorefine_mpp"
META_PIXEL_SCALE = "protorefine_pixel_scale"
#: What a slide layer shows: one of the three COLOR_ values below.
META_COLOR = "protorefine_color"
COLOR_SRGB = "sRGB from the embedded ICC profile"
COLOR_RAW = "raw (embedded ICC profile not applied)"
COLOR_NO_PROFILE = "raw (no embedded ICC profile)"
DISPLAY_COLOR_ENV = "PROTOREFINE_DISPLAY_COLOR"


def pixel_scale(mpp: float | None) -> float:
    """World units per level-0 pixel: the mpp when known (micrometres), else 1 (pixels)."""
    return float(mpp) if mpp else 1.0


def world_units(mpp: float | bool | None) -> tuple[str, str]:
    """World units of a slide's layers: micrometres when its mpp is known, else pixels."""
    return ("micrometer", "micrometer") if mpp else ("pixel", "pixel")


def display_srgb() -> bool:
    """Whether slide layers show sRGB converted from the embedded ICC profile (the default)
    or the raw pixels: environment setting ``PROTOREFINE_DISPLAY_COLOR=srgb`` or ``raw``."""
    value = os.environ.get(DISPLAY_COLOR_ENV, "srgb").strip().lower() or "srgb"
    if value not in ("srgb", "raw"):
        raise ProtorefineError(f"{DISPLAY_COLOR_ENV}={value!r}: expected 'srgb' or 'raw'")
    return value == "srgb"


def image_layer_data(slide: Slide, srgb: bool | None = None) -> LayerData:
    """The slide as one lazy multiscale RGB image layer (levels from ``open_slide``).

    A slide with an embedded ICC profile is shown converted to sRGB chunk by chunk when
    ``srgb`` (default: ``display_srgb()``); ``srgb=False`` shows the raw pixels. Only the
    display changes: features and exports read the slide's raw levels. The layer's
    metadata ``protorefine_color`` says which is shown.
    """
    s = pixel_scale(slide.mpp)
    if srgb is None:
        srgb = display_srgb()
    if slide.icc_profile is None:
        levels, color = list(slide.levels), COLOR_NO_PROFILE
    elif srgb:
        levels, color = srgb_levels(slide), COLOR_SRGB
    else:
        levels, color = list(slide.levels), COLOR_RAW
    meta = {
        "rgb": True,
        "multiscale": len(levels) > 1,
        "scale": (s, s),
        "units": world_units(slide.mpp),
        "name": slide.name,
        "contrast_limits": (0, 255),
        "metadata": {
            META_PATH: str(slide.path),
            META_MPP: slide.mpp,
            META_PIXEL_SCALE: s,
            META_COLOR: color,
        },
    }
    return (levels if len(levels) > 1 else levels[0], meta, "image")


def image_layer(slide: Slide) -> Layer:
    """A napari Image layer for ``slide``."""
    from napari.layers import Layer

    return Layer.create(*image_layer_data(slide))


def retarget_image_layer(layer: Image, slide: Slide) -> bool:
    """Show ``slide`` in an existing image layer, in place; False when napari cannot.

    Swapping data costs a repaint; a new layer costs ~0.5 s of the event loop. napari
    does not switch a layer between single- and multiscale, so that case is refused.
    """
    data, meta, _ = image_layer_data(slide)
    if not layer.rgb or bool(layer.multiscale) != meta["multiscale"]:
        return False
    layer.units = meta["units"]  # first: the other layers of the slide already have them
    layer.data = data
    layer.scale = meta["scale"]
    layer.contrast_limits = meta["contrast_limits"]
    layer.metadata = meta["metadata"]
    layer.name = meta["name"]
    return True


def shapes_layer_data(
    annset: AnnotationSet | None,
    s: float,
    *,
    name: str = COARSE,
    mpp: float | None = None,
    edge_width: float = 8.0,
) -> LayerData:
    """Annotations as Shapes layer data: level-0 ``(y, x)`` vertices, ``scale = (s, s)``."""
    data: list[np.ndarray] = []
    types: list[str] = []
    classes: list[str] = []
    if annset is not None and len(annset):
        data, types, classes = annotations_to_shapes(annset, 1.0)
        data = [np.asarray(d, dtype=float) for d in data]
    edge = [CLASS_EDGE_COLORS.get(c, "#ffd400") for c in classes]
    meta: dict[str, Any] = {
        "name": name,
        "scale": (s, s),
        "units": world_units(mpp),
        "shape_type": list(types) if types else "polygon",
        "features": _class_features(classes),
        "feature_defaults": {"classification": _default_class(annset)},
        "edge_color": edge if edge else "#ffd400",
        "face_color": "transparent",
        "edge_width": edge_width,
        "opacity": 1.0,
        "metadata": {META_MPP: mpp, META_PIXEL_SCALE: s},
    }
    return (data, meta, "shapes")


def _default_class(annset: AnnotationSet | None) -> str:
    """The class a shape drawn on the layer gets: the outline's own tumour class."""
    return tumour_class_name(annset)


def _class_features(classes: Sequence[str]) -> Any:
    """A features table with a string ``classification`` column (also when empty)."""
    import pandas as pd

    return pd.DataFrame({"classification": pd.Series(list(classes), dtype=object)})


def coarse_shapes_layer(
    annset: AnnotationSet | None, slide: Slide, *, name: str = COARSE
) -> Shapes:
    """The editable coarse-outline Shapes layer of ``slide``, ready to draw polygons."""
    from napari.layers import Shapes

    width = edge_width_for(slide.shape)
    data, meta, _ = shapes_layer_data(
        annset, pixel_scale(slide.mpp), name=name, mpp=slide.mpp, edge_width=width
    )
    layer = Shapes(data, ndim=2, **meta)
    layer.current_edge_width = width
    layer.current_edge_color = "#ffd400"
    layer.current_face_color = "transparent"
    return layer


def replace_shapes(layer: Shapes, annset: AnnotationSet | None, slide: Slide) -> None:
    """Put ``annset`` (level-0 pixels) in ``layer`` in place of its shapes, at ``slide``'s scale.

    The layer's ``data`` events are blocked meanwhile: listeners (the coarse widget
    saves every edit) see neither the emptied layer nor the half-filled one.
    """
    width = edge_width_for(slide.shape)
    data, meta, _ = shapes_layer_data(
        annset, pixel_scale(slide.mpp), name=layer.name, mpp=slide.mpp, edge_width=width
    )
    with layer.events.data.blocker():
        layer.selected_data = set()
        if len(layer.data):
            layer.data = []
        layer.scale = meta["scale"]
        layer.units = meta["units"]
        layer.metadata = {**layer.metadata, **meta["metadata"]}
        if data:
            layer.add(
                data,
                shape_type=meta["shape_type"],
                edge_width=width,
                edge_color=meta["edge_color"],
                face_color="transparent",
            )
        layer.features = meta["features"]
    layer.feature_defaults = meta["feature_defaults"]  # new shapes: this outline's class
    layer.current_edge_width = width


def edge_width_for(shape: tuple[int, int]) -> float:
    """An outline width in level-0 pixels that stays visible when the whole slide is on screen."""
    return max(2.0, max(shape) / 300)


def layer_annotations(layer: Shapes, s: float | None = None) -> AnnotationSet:
    """A Shapes layer's shapes as an AnnotationSet in level-0 pixels.

    ``s`` is world units per level-0 pixel of the slide under the layer; by default
    the layer's own ``protorefine_pixel_scale`` metadata, else its ``scale``
    (a Shapes layer napari creates over a slide takes the slide's scale).
    """
    scale = np.asarray(layer.scale[-2:], dtype=float)
    translate = np.asarray(layer.translate[-2:], dtype=float)
    return shapes_from_world(
        list(layer.data),
        list(layer.shape_type),
        scale,
        translate,
        s,
        layer.metadata,
        _layer_classes(layer),
        shapes_to_annotations,
    )


def _layer_classes(layer: Shapes) -> list[str] | None:
    feats = getattr(layer, "features", None)
    if feats is not None and "classification" in feats and len(feats) == len(layer.data):
        return [str(c) for c in feats["classification"]]
    return None


def shapes_from_world(
    data: Sequence[np.ndarray],
    shape_types: Sequence[str],
    scale: np.ndarray,
    translate: np.ndarray,
    s: float | None,
    metadata: dict | None,
    classes: Sequence[str] | None,
    convert: Any = None,
) -> AnnotationSet:
    """Shapes data of a layer with ``scale``/``translate`` to level-0 annotations."""
    if convert is None:
        convert = shapes_to_annotations
    if s is None:
        s = (metadata or {}).get(META_PIXEL_SCALE) or None
    s_arr = np.asarray([s, s], dtype=float) if s else np.asarray(scale, dtype=float)
    level0 = [(np.asarray(d, dtype=float)[:, -2:] * scale + translate) / s_arr for d in data]
    if classes is not None and len(classes) == len(level0):
        return convert(level0, list(shape_types), 1.0, classification=list(classes))
    annset = convert(level0, list(shape_types), 1.0)
    return annset


def grid_transform(grid: PatchGrid, s: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(scale, translate)`` that lay one grid cell over its patch on the slide."""
    step = float(grid.downsample)  # level-0 pixels per grid cell
    origin = np.zeros(2)
    yx = np.asarray(grid.yx, dtype=float)
    rc = np.asarray(grid.rc, dtype=float)
    if len(yx):
        origin = yx[0] - rc[0] * step
    # image pixel y covers world [(y - 0.5) s, (y + 0.5) s]; cell r must cover
    # level-0 pixels [origin + r step, origin + (r + 1) step).
    translate = s * (origin + (step - 1.0) / 2.0)
    return (step * s, step * s), (float(translate[0]), float(translate[1]))


def to_label_values(name: str, values: np.ndarray) -> np.ndarray:
    """Project grid values to the label values layer ``name`` shows (see module doc)."""
    v = np.asarray(values)
    if name in PROTOTYPE_LAYERS:
        return np.where(v >= 0, v.astype(np.int64) + 1, 0).astype(np.int32)
    if name == REFINED:
        return np.where(v.astype(bool), TUMOUR_LABEL, 0).astype(np.uint8)
    if name in (PSEUDO_LABELS, CORRECTIONS):
        vi = np.where(np.isnan(v), -1, v) if v.dtype.kind == "f" else v
        out = np.zeros(v.shape, np.uint8)
        out[vi == 0] = NORMAL_LABEL
        out[vi >= 1] = TUMOUR_LABEL
        if v.dtype.kind == "f" and name == PSEUDO_LABELS:
            out[(vi > 0) & (vi < 1)] = np.where(
                vi[(vi > 0) & (vi < 1)] >= 0.5, TUMOUR_LABEL, NORMAL_LABEL
            )
        return out
    return v


def corrections_from_labels(labels: np.ndarray) -> np.ndarray:
    """A painted corrections layer back to the project's int8 grid (-1 none, 0 normal, 1 tumour)."""
    lab = np.asarray(labels)
    out = np.full(lab.shape, -1, np.int8)
    out[lab == NORMAL_LABEL] = 0
    out[lab == TUMOUR_LABEL] = 1
    return out


def grid_layer_values(name: str, values: np.ndarray) -> np.ndarray:
    """The array grid layer ``name`` holds for ``values``: label values, or float32 values of
    the image grid layers (confidence, tumour probability)."""
    if name in IMAGE_GRID_LAYERS:
        return np.asarray(values, dtype=np.float32)
    return to_label_values(name, values)


#: dtype of each grid layer's data (placeholders are made with it, so filling them keeps it).
def _grid_dtype(name: str) -> np.dtype:
    if name in IMAGE_GRID_LAYERS:
        return np.dtype(np.float32)
    if name in PROTOTYPE_LAYERS:
        return np.dtype(np.int32)
    return np.dtype(np.uint8)


def grid_layer(name: str, values: np.ndarray, grid: PatchGrid, s: float, **kwargs: Any) -> Layer:
    """A grid layer over the slide: Image for confidence and tumour probability, else Labels."""
    scale, translate = grid_transform(grid, s)
    return _grid_layer(name, grid_layer_values(name, values), scale, translate, s, **kwargs)


def placeholder_grid_layer(
    name: str, grid: PatchGrid | None, s: float, *, title: str | None = None, **kwargs: Any
) -> Layer:
    """An empty, hidden grid layer ``name`` (shown as ``title``) to be filled with results later.

    On ``grid`` when known; else one cell over the slide's origin (filling it sets
    the grid's shape, scale and translate).
    """
    scale, translate, shape = _grid_geometry(grid, s)
    data = np.zeros(shape, dtype=_grid_dtype(name))
    layer = _grid_layer(name, data, scale, translate, s, visible=False, **kwargs)
    if title is not None:
        layer.name = title
    return layer


def _grid_geometry(
    grid: PatchGrid | None, s: float
) -> tuple[tuple[float, float], tuple[float, float], tuple[int, int]]:
    """``(scale, translate, shape)`` of a grid layer over ``grid``; one cell at the origin when None."""
    if grid is None:
        return (s, s), (0.0, 0.0), (1, 1)
    scale, translate = grid_transform(grid, s)
    return scale, translate, (grid.rows, grid.cols)


def retarget_grid_layer(
    layer: Layer, name: str, grid: PatchGrid | None, s: float, values: np.ndarray | None = None
) -> None:
    """Lay grid layer ``name`` over ``grid`` in place, holding ``values`` (empty when None).

    Scale and translate are set only when they change: each set repaints the layer.
    """
    scale, translate, shape = _grid_geometry(grid, s)
    if values is None:
        layer.data = np.zeros(shape, dtype=_grid_dtype(name))
    else:
        layer.data = grid_layer_values(name, values)
    if not np.allclose(layer.scale[-2:], scale):
        layer.scale = scale
    if not np.allclose(layer.translate[-2:], translate):
        layer.translate = translate
    units = world_units(s != 1.0)
    if tuple(str(u) for u in layer.units[-2:]) != units:  # slides differ in whether mpp is known
        layer.units = units


def _grid_layer(
    name: str,
    data: np.ndarray,
    scale: tuple[float, float],
    translate: tuple[float, float],
    s: float,
    **kwargs: Any,
) -> Layer:
    """Image (confidence, tumour probability) or Labels layer ``name`` of grid-layer ``data``
    with its look."""
    from napari.layers import Image, Labels
    from napari.utils.colormaps import DirectLabelColormap

    common = {"name": name, "scale": scale, "translate": translate, "units": world_units(s != 1.0)}
    opts: dict[str, Any]
    if name in IMAGE_GRID_LAYERS:
        opts = {
            "colormap": "viridis",
            "contrast_limits": (0.0, 1.0),
            "opacity": 0.5,
            "blending": "translucent",
        }
        opts.update(kwargs)
        return Image(data, **common, **opts)
    opts = {"opacity": 0.5}
    if name in CLASS_LAYERS:
        opts["colormap"] = DirectLabelColormap(color_dict=CLASS_COLORS)
    opts.update(kwargs)
    return Labels(data, **common, **opts)


def pixel_layer_geometry(cell0: float, s: float) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(scale, translate)`` that lay the pixel stage's cells (``cell0`` level-0 pixels
    each, from the slide's origin) over the slide."""
    step = float(cell0) * s
    t = s * (float(cell0) - 1.0) / 2.0
    return (step, step), (t, t)


def pixel_layer(name: str, levels: Sequence[Any], cell0: float, s: float) -> Layer:
    """A pixel-stage map (``PIXEL_LAYERS``) as a hidden Image layer over the slide: one array,
    or its stored pyramid (finest first) as a multiscale layer."""
    from napari.layers import Image

    scale, translate = pixel_layer_geometry(cell0, s)
    return Image(
        list(levels) if len(levels) > 1 else levels[0],
        multiscale=len(levels) > 1,
        name=name,
        scale=scale,
        translate=translate,
        units=world_units(s != 1.0),
        colormap="magma",
        contrast_limits=(0.0, 1.0),
        opacity=0.5,
        blending="translucent",
        visible=False,
    )


def empty_pixel_map() -> np.ndarray:
    """What a pixel-stage layer holds while its slide has no map (one transparent cell)."""
    return np.zeros((1, 1), np.float32)


def retarget_pixel_layer(layer: Layer, levels: Sequence[Any], cell0: float, s: float) -> None:
    """Give a :func:`pixel_layer` another map of the same kind (pyramid or one array) in place:
    swapping data costs a repaint, a new layer several times that."""
    layer.data = list(levels) if layer.multiscale else levels[0]
    layer.scale, layer.translate = pixel_layer_geometry(cell0, s)


def pixel_maps(project: Project, slide_id: str) -> dict[str, tuple[list[Any], float]]:
    """The pixel stage's stored maps of a slide by layer name (``PIXEL_LAYERS``), each as its
    levels (one in memory when the map is small, else the lazy pyramid: napari reads what it
    shows) with its level-0 pixels per cell; empty when the stage has not run."""
    maps: dict[str, tuple[list[Any], float]] = {}
    for name in PIXEL_LAYERS:
        try:
            stored = project.pixel_pyramid(slide_id, pseudo=name == PIXEL_PSEUDO)
        except ProtorefineError:
            stored = None
        if stored is not None:
            levels, cell0 = stored
            shown: list[Any] = list(levels)
            if len(levels) == 1:
                shown = [np.asarray(levels[0][:], np.float32)]
            maps[name] = (shown, cell0)
    return maps


def stored_grid_values(project: Project, slide_id: str, name: str) -> np.ndarray | None:
    """The stored result behind grid layer ``name`` for ``slide_id``, or None if not computed."""
    try:
        if name == CORRECTIONS:
            return project.corrections(slide_id)
        key = RESULT_KEYS.get(name)
        if key is None:
            return None
        return np.asarray(project.result_grid(slide_id, key))
    except (ProtorefineError, KeyError, FileNotFoundError):
        return None
