"""Write refined outlines as NGFF labels in OME-Zarr, so napari and other NGFF viewers show them.

The labels image mirrors the parent image's pyramid: one labels level per image level,
of the same shape and with the same coordinate transformations (scale only, as the image
has), each pixel set from the grid cell its centre falls in. So every NGFF reader lays
the labels over the tissue exactly as it lays the image, including readers that apply
only the first transformation of a dataset (napari-ome-zarr drops a translation, which
put labels kept one pixel per cell half a cell off). The levels are computed chunk by
chunk from the small cell grid and compress to almost nothing (a few runs of 0 and 1).
They are written in a temporary folder inside the image and moved into
``<image>.zarr/labels/<name>`` only when complete; the ``labels`` listing is then updated
atomically. Slides that are not OME-Zarr get an OME-Zarr copy to hold them
(:func:`export_refined_labels`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import dask.array as da
import numpy as np
import zarr

from protorefine._atomic import atomic_path, atomic_write_text
from protorefine._types import Cancel, Progress
from protorefine.annotations import rasterize
from protorefine.errors import ProtorefineError
from protorefine.slides import convert_to_ome_zarr, open_slide
from protorefine.slides.omezarr import is_ome_zarr, ngff_attrs

if TYPE_CHECKING:
    from protorefine.project.store import Project

#: Colours and names of the refined labels (0 = background).
REFINED_COLORS = [{"label-value": 1, "rgba": [239, 68, 68, 255]}]
REFINED_PROPERTIES = [{"label-value": 1, "class": "Tumor"}]


#: Side of the chunks the labels levels are computed and stored in (pixels).
LABELS_CHUNK = 2048


def _image_levels(root: zarr.Group, path: Path) -> tuple[list[dict], list[dict]]:
    """The parent image's axes and its datasets (path, coordinate transformations)."""
    attrs = ngff_attrs(root)
    multiscales = attrs.get("multiscales")
    if not multiscales or not multiscales[0].get("datasets"):
        raise ProtorefineError(f"{path}: not an OME-Zarr image (no multiscales metadata)")
    ms = multiscales[0]
    axes = ms.get("axes") or [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    return list(axes), list(ms["datasets"])


def _yx_scale(dataset: dict) -> tuple[float, float] | None:
    """The (y, x) scale of a dataset's transformations, None when it has none."""
    for tf in dataset.get("coordinateTransformations", []):
        if tf.get("type") == "scale":
            return float(tf["scale"][-2]), float(tf["scale"][-1])
    return None


def _cell_index(n: int, step: float, origin: float, cell: float, count: int) -> np.ndarray:
    """For each of ``n`` pixels of ``step`` level-0 pixels, the grid cell its centre falls
    in (``count``: outside the grid)."""
    centre = (np.arange(n, dtype=np.float64) + 0.5) * step
    index = np.floor((centre - origin) / cell).astype(np.int64)
    return np.where((index >= 0) & (index < count), index, count)


def _labels_level(
    grid: np.ndarray,
    shape: tuple[int, int],
    step: tuple[float, float],
    cell: float,
    origin: tuple[float, float],
) -> da.Array:
    """A lazy ``shape`` labels level whose pixels cover ``step`` level-0 pixels each."""
    padded = np.zeros((grid.shape[0] + 1, grid.shape[1] + 1), grid.dtype)  # last: outside
    padded[:-1, :-1] = grid
    rows = _cell_index(shape[0], step[0], origin[0], cell, grid.shape[0])
    cols = _cell_index(shape[1], step[1], origin[1], cell, grid.shape[1])

    def block(block_info=None) -> np.ndarray:
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return padded[np.ix_(rows[y0:y1], cols[x0:x1])]

    chunks = da.core.normalize_chunks((LABELS_CHUNK, LABELS_CHUNK), shape)
    return da.map_blocks(block, dtype=grid.dtype, chunks=chunks, meta=np.empty((0, 0), grid.dtype))


def write_grid_labels(
    zarr_path: str | os.PathLike[str],
    name: str,
    labels: np.ndarray,
    cell: float,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    colors: list[dict] | None = None,
    properties: list[dict] | None = None,
) -> Path:
    """Write a (rows, cols) integer grid as NGFF labels ``name`` in the OME-Zarr at ``zarr_path``.

    ``cell`` is the side of one grid cell in level-0 pixels and ``origin`` the
    level-0 ``(y, x)`` of cell (0, 0). The labels take the image's pyramid (shapes and
    transformations), so they are placed as the image is. Returns the labels folder. An
    existing labels image of the same name is replaced.
    """
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_multiscale_labels

    zarr_path = Path(zarr_path)
    if not name or "/" in name or name.startswith("."):
        raise ProtorefineError(f"labels name {name!r}: must be a plain folder name")
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype.kind not in "biu":
        raise ProtorefineError(
            f"labels for {zarr_path}: expected a 2-D integer grid, got {labels.dtype} {labels.shape}"
        )
    try:
        root = zarr.open_group(zarr_path, mode="r")
    except Exception as exc:
        raise ProtorefineError(f"{zarr_path}: not a zarr folder ({type(exc).__name__})") from exc
    if root.metadata.zarr_format != 2:
        raise ProtorefineError(
            f"{zarr_path}: NGFF 0.5 (zarr v3) labels are not supported; convert with protorefine"
        )
    axes, datasets = _image_levels(root, zarr_path)
    names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
    if names[-2:] != ["y", "x"]:
        raise ProtorefineError(f"{zarr_path}: image axes {names} do not end in y, x")
    dtype = np.uint8 if labels.max(initial=0) < 256 and labels.min(initial=0) >= 0 else np.int32
    grid = labels.astype(dtype)
    shapes = []
    for ds in datasets:
        try:
            node = root[ds["path"]]
        except Exception as exc:
            raise ProtorefineError(f"{zarr_path}: cannot read its image levels ({exc})") from exc
        if not isinstance(node, zarr.Array):
            raise ProtorefineError(f"{zarr_path}: image level {ds['path']!r} is not an array")
        shapes.append((int(node.shape[-2]), int(node.shape[-1])))
    base = _yx_scale(datasets[0])
    lead = (1,) * (len(names) - 2)
    pyramid, transforms = [], []
    for ds, shape in zip(datasets, shapes, strict=True):
        scale = _yx_scale(ds)
        if base and scale and base[0] > 0 and base[1] > 0:
            step = (scale[0] / base[0], scale[1] / base[1])  # level-0 pixels per pixel
        else:
            step = (shapes[0][0] / shape[0], shapes[0][1] / shape[1])
        level = _labels_level(grid, (shape[0], shape[1]), step, float(cell), origin)
        pyramid.append(level.reshape(lead + level.shape))
        transforms.append(
            [dict(tf) for tf in ds.get("coordinateTransformations", [])]
            or [{"type": "scale", "scale": [1.0] * len(lead) + [step[0], step[1]]}]
        )

    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".labels", dir=zarr_path))
    try:
        group = zarr.open_group(staging, mode="w", zarr_format=2)
        write_multiscale_labels(
            pyramid,
            group,
            name,
            fmt=FormatV04(),
            axes=axes,
            coordinate_transformations=transforms,
            label_metadata={
                "colors": colors or [],
                "properties": properties or [],
                "source": {"image": "../../"},
            },
        )
        target = zarr_path / "labels" / name
        with atomic_path(target, replace_dir=True) as tmp:  # labels ``name``, documented above
            shutil.copytree(staging / "labels" / name, tmp)
        _list_label(zarr_path / "labels", name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return zarr_path / "labels" / name


def _list_label(labels_dir: Path, name: str) -> None:
    """Add ``name`` to the ``labels`` listing of an NGFF 0.4 labels group (zarr v2 ``.zattrs``)."""
    attrs_path = labels_dir / ".zattrs"
    attrs = json.loads(attrs_path.read_text()) if attrs_path.exists() else {}
    listed = [n for n in attrs.get("labels", []) if n != name]
    attrs["labels"] = [*listed, name]
    group_path = labels_dir / ".zgroup"
    if not group_path.exists():
        atomic_write_text(group_path, json.dumps({"zarr_format": 2}))
    atomic_write_text(attrs_path, json.dumps(attrs, indent=2))


def refined_labels(project: Project, slide_id: str) -> tuple[np.ndarray, float]:
    """The accepted outline of ``slide_id`` (refined, with any hand edits) rasterised at the
    step the refined one was traced at, and that step.

    The step is the patch grid's cell over ``output_upsample`` (a quarter patch by
    default), so the labels cover exactly the pixels the exported GeoJSON does.
    """
    grid = project.grid(slide_id)
    step = grid.downsample / max(1, int(project.config.output_upsample))
    mask = rasterize(project.accepted_outline(slide_id), grid.shape, step)
    return mask.astype(np.uint8), step


def export_refined_labels(
    project: Project,
    slide_id: str,
    target: str | os.PathLike[str] | None = None,
    *,
    name: str = "refined",
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> Path:
    """Write the refined outline of ``slide_id`` as NGFF labels ``name``; return the labels folder.

    With ``target`` None an OME-Zarr slide gets them inside. Otherwise (any slide:
    SVS, TIFF, image, OME-Zarr) they go into an OME-Zarr copy of the slide at
    ``target``, converted from it (streamed, atomic; ``progress``/``cancel`` as in
    :func:`convert_to_ome_zarr`) unless ``target`` already holds that slide, so NGFF
    viewers show the labels over the tissue.
    """
    entry = project.slide(slide_id)
    path = Path(entry.path)
    labels, step = refined_labels(project, slide_id)
    if is_ome_zarr(path) and (target is None or Path(target).resolve() == path.resolve()):
        zarr_path = path
    elif target is None:
        raise ProtorefineError(
            f"{path}: not an OME-Zarr slide; name a .zarr folder for an OME-Zarr copy with the labels"
        )
    else:
        zarr_path = Path(target)
        if zarr_path.exists():
            copy = open_slide(zarr_path) if is_ome_zarr(zarr_path) else None
            if copy is None or copy.shape != tuple(entry.shape):
                raise ProtorefineError(
                    f"{zarr_path}: exists and is not an OME-Zarr copy of {path.name}; choose a new folder"
                )
        else:
            convert_to_ome_zarr(
                project.open_slide(slide_id), zarr_path, progress=progress, cancel=cancel
            )
    return write_grid_labels(
        zarr_path, name, labels, step, colors=REFINED_COLORS, properties=REFINED_PROPERTIES
    )
