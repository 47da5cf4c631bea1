"""OME-Zarr backend: an NGFF multiscale image folder (0.4 or 0.5) opened lazily with zarr."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask.array as da
import zarr

from protorefine.errors import ProtorefineError
from protorefine.slides._rgb import to_rgb
from protorefine.slides.base import Slide

_UNIT_TO_UM = {
    "micrometer": 1.0,
    "micron": 1.0,
    "nanometer": 1e-3,
    "millimeter": 1e3,
    "centimeter": 1e4,
    "meter": 1e6,
}


def ngff_attrs(group: zarr.Group | zarr.Array) -> dict[str, Any]:
    """The OME attributes of a group: top level in NGFF 0.4, under ``ome`` in 0.5."""
    attrs = dict(group.attrs)
    ome = attrs.get("ome")
    return dict(ome) if isinstance(ome, dict) else attrs


def _group_at(node: zarr.Group | zarr.Array | None, key: str) -> zarr.Group:
    """``node[key]`` where both are groups, else TypeError (NGFF nests its metadata in groups)."""
    child = node[key] if isinstance(node, zarr.Group) else None
    if not isinstance(child, zarr.Group):
        raise TypeError(f"{key!r} is not a zarr group")
    return child


def is_ome_zarr(path: str | Path) -> bool:
    """True when ``path`` is a zarr folder with NGFF ``multiscales`` metadata."""
    if not Path(path).is_dir():
        return False
    try:
        group = zarr.open_group(path, mode="r")
    except Exception:
        return False
    attrs = ngff_attrs(group)
    if "multiscales" in attrs:
        return True
    return (
        "bioformats2raw.layout" in attrs
        and "0" in group
        and "multiscales" in ngff_attrs(group["0"])
    )


def _axes(multiscale: dict[str, Any], ndim: int) -> tuple[str, str | None]:
    axes = multiscale.get("axes")
    if not axes:
        return "TCZYX"[-ndim:], None
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
    unit = next((a.get("unit") for a in axes if isinstance(a, dict) and a.get("name") == "x"), None)
    letters = "".join(
        n.upper()[:1] if n.lower() in ("t", "c", "z", "y", "x") else "S" for n in names
    )
    return letters, unit


def _scale_x(dataset: dict[str, Any], axes: str) -> float | None:
    for tf in dataset.get("coordinateTransformations", []):
        if tf.get("type") == "scale" and "X" in axes:
            return float(tf["scale"][axes.index("X")])
    return None


def _mpp(scale: float | None, unit: str | None) -> float | None:
    """Micrometres per pixel from an NGFF scale; a scale of 1 with no unit means uncalibrated."""
    if scale is None or scale <= 0:
        return None
    if unit is None:
        return None if scale == 1.0 else scale
    factor = _UNIT_TO_UM.get(unit)
    return None if factor is None else scale * factor


def open_ome_zarr(path: Path, name: str) -> Slide:
    """Open an OME-Zarr folder's first multiscale image as a lazy RGB pyramid."""
    try:
        group = zarr.open_group(path, mode="r")
    except Exception as exc:
        raise ProtorefineError(f"{path}: not a zarr folder ({' '.join(str(exc).split())})") from exc
    attrs = ngff_attrs(group)
    if "multiscales" not in attrs and "bioformats2raw.layout" in attrs and "0" in group:
        child = group["0"]
        if isinstance(child, zarr.Group):
            group = child
        attrs = ngff_attrs(child)
    if not attrs.get("multiscales"):
        raise ProtorefineError(f"{path}: zarr folder has no OME-Zarr 'multiscales' image metadata")
    multiscale = attrs["multiscales"][0]
    datasets = multiscale.get("datasets") or []
    if not datasets:
        raise ProtorefineError(f"{path}: OME-Zarr multiscales lists no datasets")
    levels = []
    mpp = None
    try:
        for i, ds in enumerate(datasets):
            arr = group[ds["path"]]
            if not isinstance(arr, zarr.Array):
                raise TypeError(f"{ds['path']!r} is a group, not an array")
            axes, unit = _axes(multiscale, arr.ndim)
            if i == 0:
                mpp = _mpp(_scale_x(ds, axes), unit)
            lazy = da.from_zarr(arr)
            levels.append(to_rgb(lazy, axes, path))
    except ProtorefineError:
        raise
    except Exception as exc:
        raise ProtorefineError(
            f"{path}: cannot read OME-Zarr level ({' '.join(str(exc).split())})"
        ) from exc
    return Slide(path=path, name=name, levels=levels, mpp=mpp, backend="ome-zarr")


@dataclass
class NgffLabels:
    """One NGFF labels image of an OME-Zarr slide: lazy 2-D levels and where they lie.

    ``scale`` and ``translation`` (y, x) are in the slide image's physical units, as
    stored; ``colors`` maps a label value to RGBA in 0-1.
    """

    name: str
    levels: list[da.Array]
    scale: tuple[float, float]
    translation: tuple[float, float]
    colors: dict[int, tuple[float, float, float, float]]


def read_ngff_labels(path: str | Path) -> list[NgffLabels]:
    """The labels images listed under ``<path>/labels`` (none when there is no such group)."""
    path = Path(path)
    try:
        root = zarr.open_group(path, mode="r")
        labels = root["labels"] if "labels" in root else None
        listed = ngff_attrs(labels).get("labels", []) if labels is not None else []
    except Exception as exc:
        raise ProtorefineError(f"{path}: cannot read its labels listing ({exc})") from exc
    out = []
    for name in listed:
        try:
            group = _group_at(labels, name)
            attrs = ngff_attrs(group)
            ms = attrs["multiscales"][0]
            levels, first = [], None
            for ds in ms["datasets"]:
                arr = da.from_zarr(group[ds["path"]])
                levels.append(arr.reshape(arr.shape[-2:]))  # leading axes are singletons
                first = first or ds.get("coordinateTransformations", [])
            tfs = {t["type"]: t for t in first or []}
            scale_yx = tfs.get("scale", {}).get("scale", [1.0, 1.0])
            scale = (float(scale_yx[-2]), float(scale_yx[-1]))
            shift = tfs.get("translation", {}).get("translation", [0.0, 0.0])
            colors = {
                int(c["label-value"]): tuple(v / 255.0 for v in c["rgba"])
                for c in attrs.get("image-label", {}).get("colors", [])
            }
        except Exception as exc:
            raise ProtorefineError(
                f"{path}: labels {name!r} are not readable NGFF labels ({exc})"
            ) from exc
        out.append(NgffLabels(name, levels, scale, (float(shift[-2]), float(shift[-1])), colors))
    return out
