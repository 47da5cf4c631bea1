"""Convert a slide to an OME-Zarr (NGFF 0.4) multiscale image, streamed tile by tile.

Layout: axes ``c, y, x`` (NGFF requires the channel axis before the spatial ones),
chunks ``(3, tile, tile)`` so one chunk holds a whole RGB tile, lossless Blosc-LZ4,
``scale`` in micrometres per pixel. Level 0 is the source's level 0, copied exactly;
level k is a 2**k downsample: the source's own level when it has one of that size,
otherwise a 2x2 area average of level k-1 as already written. Memory stays bounded
by a few tiles per worker whatever the slide size.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc
from ome_zarr.format import FormatV04
from ome_zarr.writer import write_multiscales_metadata

from protorefine._atomic import atomic_path
from protorefine._types import Cancel, Progress
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.slides.base import Slide
from protorefine.slides.dispatch import open_slide

# LZ4 in Blosc: about 4x faster to write than zstd-1 for ~10% more bytes on H&E tiles
# (benchmarks/convert_bench.py); every zarr reader has Blosc.
_COMPRESSOR = Blosc(cname="lz4", clevel=5, shuffle=Blosc.NOSHUFFLE)
_OMERO = {
    "rdefs": {"model": "color"},
    "channels": [
        {
            "label": label,
            "color": color,
            "active": True,
            "window": {"min": 0, "max": 255, "start": 0, "end": 255},
        }
        for label, color in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
    ],
}


@dataclass(frozen=True)
class _LevelPlan:
    """One output level: its shape and where its pixels come from (a source level or None)."""

    shape: tuple[int, int]
    source: int | None


def plan_levels(slide: Slide, min_size: int) -> list[_LevelPlan]:
    """Levels 1, 1/2, 1/4, ... until the long side is at most ``min_size``.

    A source level is reused when its size is the exact (floor or ceil) 2**k downsample.
    """
    h0, w0 = slide.shape
    plans = [_LevelPlan((h0, w0), 0)]
    k = 0
    while max(plans[-1].shape) > min_size and min(plans[-1].shape) >= 2:
        k += 1
        ideal_h, ideal_w = h0 / 2**k, w0 / 2**k
        source = None
        for i, lvl in enumerate(slide.levels[1:], start=1):
            h, w = lvl.shape[:2]
            if abs(h - ideal_h) < 1 and abs(w - ideal_w) < 1:
                source = i
                break
        if source is not None:
            h, w = slide.levels[source].shape[:2]
            plans.append(_LevelPlan((int(h), int(w)), source))
        else:
            ph, pw = plans[-1].shape
            plans.append(_LevelPlan((ph // 2, pw // 2), None))
    return plans


def _tiles(shape: tuple[int, int], tile: int) -> Iterator[tuple[int, int]]:
    for y in range(0, shape[0], tile):
        for x in range(0, shape[1], tile):
            yield y, x


class _Level:
    """Direct chunk I/O for one ``(3, H, W)`` zarr v2 array that zarr itself created.

    zarr-python's generic write path costs ~40 ms per 3 MB chunk in overhead; the
    format is simple (one Blosc-compressed C-order chunk per file, edge chunks padded
    with the fill value, ``/``-separated keys), so chunks are encoded and written
    here. All-white chunks are left out: readers return the fill value (255).
    """

    def __init__(self, array: zarr.Array, folder: Path) -> None:
        self.shape = tuple(int(n) for n in array.shape)
        self.ty, self.tx = int(array.chunks[1]), int(array.chunks[2])
        self.folder = folder

    def _path(self, yi: int, xi: int) -> Path:
        return self.folder / "0" / str(yi) / str(xi)

    def write(self, y: int, x: int, block: np.ndarray) -> None:
        """Write the chunk whose top-left pixel is ``(y, x)``; ``block`` is ``(3, h, w)`` uint8."""
        if block.min() == 255:
            return
        full = np.full((3, self.ty, self.tx), 255, dtype=np.uint8)
        full[:, : block.shape[1], : block.shape[2]] = block
        path = self._path(y // self.ty, x // self.tx)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_COMPRESSOR.encode(full))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Read the ``(3, y1 - y0, x1 - x0)`` region, chunk by chunk."""
        ty, tx = self.ty, self.tx
        out = np.empty((3, y1 - y0, x1 - x0), dtype=np.uint8)
        for yi in range(y0 // ty, (y1 - 1) // ty + 1):
            for xi in range(x0 // tx, (x1 - 1) // tx + 1):
                path = self._path(yi, xi)
                if path.exists():
                    chunk = np.frombuffer(_COMPRESSOR.decode(path.read_bytes()), np.uint8)
                    chunk = chunk.reshape(3, ty, tx)
                else:
                    chunk = np.full((3, ty, tx), 255, dtype=np.uint8)
                cy0, cx0 = yi * ty, xi * tx
                sy0, sy1 = max(y0, cy0), min(y1, cy0 + ty)
                sx0, sx1 = max(x0, cx0), min(x1, cx0 + tx)
                out[:, sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = chunk[
                    :, sy0 - cy0 : sy1 - cy0, sx0 - cx0 : sx1 - cx0
                ]
        return out


def _copy_tile(slide: Slide, level: int, dst: _Level, y: int, x: int, tile: int) -> None:
    """Copy one (tile, tile) block of a slide level into a (3, H, W) level."""
    h = min(tile, dst.shape[1] - y)
    w = min(tile, dst.shape[2] - x)
    block = slide.read_region(level, y, x, h, w)
    dst.write(y, x, np.moveaxis(block, 2, 0))


def _downsample_tile(prev: _Level, dst: _Level, y: int, x: int, tile: int) -> None:
    """Write one output tile as the rounded 2x2 mean of the matching block of ``prev``."""
    h = min(tile, dst.shape[1] - y)
    w = min(tile, dst.shape[2] - x)
    block = prev.read(2 * y, 2 * (y + h), 2 * x, 2 * (x + w)).astype(np.uint16)
    summed = (
        block[:, 0::2, 0::2] + block[:, 1::2, 0::2] + block[:, 0::2, 1::2] + block[:, 1::2, 1::2]
    )
    dst.write(y, x, ((summed + 2) >> 2).astype(np.uint8))


def _run_tiles(
    jobs: Iterator[Callable[[], None]],
    workers: int,
    on_done: Callable[[], None],
    cancel: Cancel | None,
    out: Path,
) -> None:
    """Run tile jobs on a thread pool with a bounded queue; stop cleanly on cancel or error."""
    pending: set[Future] = set()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="protorefine-convert") as pool:
        try:
            for job in jobs:
                if cancel is not None and cancel():
                    raise CancelledError(f"{out}: conversion cancelled; nothing was written")
                pending.add(pool.submit(job))
                if len(pending) >= 2 * workers:
                    done, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in done:
                        fut.result()
                        on_done()
            for fut in pending:
                fut.result()
                on_done()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def written_by_protorefine(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a zarr folder whose root attributes carry the ``protorefine``
    entry :func:`convert_to_ome_zarr` writes (so replacing it loses nothing of the user's)."""
    try:
        attrs = json.loads((Path(path) / ".zattrs").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(attrs, dict) and isinstance(attrs.get("protorefine"), dict)


def convert_to_ome_zarr(
    slide_or_path: Slide | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    tile: int = 1024,
    min_size: int = 1024,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> Path:
    """Write ``slide_or_path`` as an OME-Zarr multiscale image at ``out`` and return ``out``.

    The write is atomic (temporary folder, then rename): on error or cancel the
    target is left as it was. An existing ``out`` is replaced only when it is an
    OME-Zarr that protorefine wrote (an earlier conversion); any other folder is refused.
    ``progress(done, total, message)`` counts tiles.
    """
    if isinstance(slide_or_path, Slide):
        slide = slide_or_path
    else:
        slide = open_slide(slide_or_path)
    if tile < 16:
        raise ProtorefineError(f"tile={tile}: must be at least 16 pixels")
    if min_size < 1:
        raise ProtorefineError(f"min_size={min_size}: must be at least 1 pixel")
    out = Path(out)
    if out.is_dir() and not written_by_protorefine(out):
        raise ProtorefineError(
            f"{out}: an existing folder not written by protorefine; nothing was written "
            "(choose another name)"
        )
    plans = plan_levels(slide, min_size)
    counts = [len(list(_tiles(p.shape, tile))) for p in plans]
    total = sum(counts)
    done = 0
    workers = max(1, min(4, os.cpu_count() or 1))

    def tick(message: str) -> Callable[[], None]:
        def on_done() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total, message)

        return on_done

    if progress is not None:
        progress(0, total, "level 0")
    with atomic_path(out, replace_dir=True) as tmp:
        root = zarr.open_group(tmp, mode="w", zarr_format=2)
        arrays: list[_Level] = []
        for k, plan in enumerate(plans):
            h, w = plan.shape
            array = root.create_array(
                str(k),
                shape=(3, h, w),
                chunks=(3, min(tile, h), min(tile, w)),
                dtype=np.uint8,
                compressors=_COMPRESSOR,
                fill_value=255,
                chunk_key_encoding={"name": "v2", "separator": "/"},
            )
            dst = _Level(array, tmp / str(k))
            if plan.source is not None:
                jobs = (
                    (lambda y=y, x=x, d=dst, i=plan.source: _copy_tile(slide, i, d, y, x, tile))
                    for y, x in _tiles(plan.shape, tile)
                )
            else:
                prev = arrays[-1]
                jobs = (
                    (lambda y=y, x=x, d=dst, p=prev: _downsample_tile(p, d, y, x, tile))
                    for y, x in _tiles(plan.shape, tile)
                )
            _run_tiles(jobs, workers, tick(f"level {k}"), cancel, out)
            arrays.append(dst)
        _write_metadata(root, slide, plans)
    return out


def _write_metadata(root: zarr.Group, slide: Slide, plans: list[_LevelPlan]) -> None:
    """NGFF 0.4 multiscales (scale in micrometres when mpp is known) and omero RGB rendering."""
    unit = slide.mpp if slide.mpp else 1.0
    datasets = [
        {
            "path": str(k),
            "coordinateTransformations": [
                {"type": "scale", "scale": [1.0, 2.0**k * unit, 2.0**k * unit]}
            ],
        }
        for k in range(len(plans))
    ]
    axes: list[dict[str, str]] = [{"name": "c", "type": "channel"}]
    for name in ("y", "x"):
        ax = {"name": name, "type": "space"}
        if slide.mpp:
            ax["unit"] = "micrometer"
        axes.append(ax)
    write_multiscales_metadata(
        root,
        datasets=datasets,
        fmt=FormatV04(),
        axes=axes,
        name=slide.name,
        metadata={"omero": {**_OMERO, "name": slide.name}, "method": "2x2 area mean"},
    )
    root.attrs["protorefine"] = {
        "source": str(slide.path),
        "mpp": slide.mpp,
        "backend": slide.backend,
    }
