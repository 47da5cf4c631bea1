"""Colormaps of protorefine's layers.

Prototype colours: one hue per global prototype; its local prototypes are shades of that hue.
Confidence and tumour probability: transparent ramps, so the tissue stays readable.
"""

from __future__ import annotations

import colorsys

import numpy as np
from napari.utils.colormaps import Colormap, DirectLabelColormap

from protorefine.napari.layer_names import PROBABILITY

_TRANSPARENT = np.zeros(4, dtype=np.float32)
_GOLDEN = 0.618033988749895


def global_colour(global_id: int) -> np.ndarray:
    """RGBA of global prototype ``global_id``: hues spread by the golden ratio, so neighbours differ."""
    hue = (0.07 + global_id * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return np.array([r, g, b, 1.0], dtype=np.float32)


def local_colour(global_id: int, shade: int, n_shades: int) -> np.ndarray:
    """RGBA of the ``shade``-th local prototype in the family of ``global_id``: same hue, other value."""
    hue = (0.07 + global_id * _GOLDEN) % 1.0
    value = 0.95 if n_shades <= 1 else 0.55 + 0.4 * shade / (n_shades - 1)
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, value)
    return np.array([r, g, b, 1.0], dtype=np.float32)


def global_colormap(global_ids: np.ndarray) -> DirectLabelColormap:
    """Colormap for the global-prototype layer (label = global id + 1, 0 = off tissue)."""
    ids = np.unique(np.asarray(global_ids))
    colours = {None: _TRANSPARENT, 0: _TRANSPARENT}
    colours.update({int(g) + 1: global_colour(int(g)) for g in ids if g >= 0})
    return DirectLabelColormap(color_dict=colours)


def local_families(local_ids: np.ndarray, global_ids: np.ndarray) -> dict[int, int]:
    """Map each local prototype id to the global prototype most of its patches belong to."""
    loc = np.asarray(local_ids).ravel()
    glob = np.asarray(global_ids).ravel()
    keep = (loc >= 0) & (glob >= 0)
    loc, glob = loc[keep], glob[keep]
    if not len(loc):
        return {}
    pairs, counts = np.unique(np.stack([loc, glob], axis=1), axis=0, return_counts=True)
    order = np.lexsort((-counts, pairs[:, 0]))
    family: dict[int, int] = {}
    for lid, gid in pairs[order]:
        family.setdefault(int(lid), int(gid))
    return family


def local_colormap(local_ids: np.ndarray, global_ids: np.ndarray) -> DirectLabelColormap:
    """Colormap for the local-prototype layer (label = local id + 1) in the colours of their families."""
    family = local_families(local_ids, global_ids)
    members: dict[int, list[int]] = {}
    for lid, gid in sorted(family.items()):
        members.setdefault(gid, []).append(lid)
    colours = {None: _TRANSPARENT, 0: _TRANSPARENT}
    for gid, lids in members.items():
        for shade, lid in enumerate(lids):
            colours[lid + 1] = local_colour(gid, shade, len(lids))
    return DirectLabelColormap(color_dict=colours)


def swatch_hex(global_id: int) -> str:
    """The ``#rrggbb`` of a global prototype, for the gallery."""
    r, g, b, _ = (global_colour(global_id) * 255).round().astype(int)
    return f"#{r:02x}{g:02x}{b:02x}"


def probability_colormap() -> Colormap:
    """Where the model is unsure: clear where the tumour probability is near 0 or 1, bright
    yellow around 0.5, faint blue leaning normal and faint red leaning tumour (the band of
    ``measure.UNSURE`` stands out; hovering gives the probability itself)."""
    return Colormap(
        colors=[
            [0.23, 0.51, 0.96, 0.0],
            [0.23, 0.51, 0.96, 0.15],
            [1.0, 0.92, 0.2, 0.8],
            [0.94, 0.27, 0.27, 0.15],
            [0.94, 0.27, 0.27, 0.0],
        ],
        controls=[0.0, 0.2, 0.5, 0.8, 1.0],
        name="protorefine probability",
    )


def grid_image_colormap(name: str) -> Colormap:
    """The colormap of an image grid layer (confidence or tumour probability)."""
    return probability_colormap() if name == PROBABILITY else confidence_colormap()


def confidence_colormap() -> Colormap:
    """Transparent at 0 (off tissue, unsure) to half-opaque cyan at 1, so the tissue stays readable."""
    return Colormap(
        colors=[[0.0, 0.85, 1.0, 0.0], [0.0, 0.85, 1.0, 0.1], [0.0, 0.85, 1.0, 0.5]],
        controls=[0.0, 0.5, 1.0],
        name="protorefine confidence",
    )
