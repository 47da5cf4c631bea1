"""The patch grid over a slide: where each patch is read, which patches hold tissue."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from protorefine.errors import ProtorefineError
from protorefine.slides.base import Slide
from protorefine.slides.tissue import tissue_mask

#: A level whose downsample is within this relative distance of the target is read as is.
LEVEL_TOLERANCE = 0.02
#: Default minimum share of a patch that must be tissue for the patch to count as tissue.
MIN_TISSUE = 0.25


@dataclass
class PatchGrid:
    """A regular grid of square cells covering the whole level-0 extent of a slide.

    Cells are ``read_stride`` pixels of ``level`` apart; each cell is one patch
    (one feature vector, one label). The encoder sees a ``read_size`` window
    centred on the cell (shifted inside the slide at its edges), resized to
    ``patch_size``: the window equals the cell by default and is larger when
    ``stride < patch_size`` (a finer grid, each cell seen with context). ``yx`` is
    each cell's level-0 top-left, ``rc`` its grid row and column, ``downsample``
    the level-0 pixels per cell (napari ``scale``). Cells are listed row-major;
    ``tissue`` flags those with enough tissue.
    """

    level: int
    patch_size: int
    stride: int
    read_size: int
    read_stride: int
    level_downsample: float
    rows: int
    cols: int
    shape: tuple[int, int]
    tissue: np.ndarray
    tissue_fraction: np.ndarray = field(repr=False)
    mpp: float | None = None
    min_tissue: float = MIN_TISSUE

    @property
    def n(self) -> int:
        """Number of patches (rows * cols)."""
        return self.rows * self.cols

    def signature(self) -> str:
        """Hash of which windows the grid's tissue cells read (where, how large, at which level)."""
        h = hashlib.sha256()
        ints = (self.level, self.read_size, self.read_stride, self.patch_size, self.rows, self.cols)
        h.update(
            repr(
                [int(v) for v in (*ints, *self.shape)] + [round(float(self.level_downsample), 6)]
            ).encode()
        )
        h.update(np.packbits(np.asarray(self.tissue, bool).ravel()).tobytes())
        return h.hexdigest()[:16]

    @property
    def downsample(self) -> float:
        """Level-0 pixels per grid cell, i.e. the napari ``scale`` of per-patch layers."""
        return self.read_stride * self.level_downsample

    @property
    def patch_level0(self) -> float:
        """Side of the window the encoder sees, in level-0 pixels."""
        return self.read_size * self.level_downsample

    @property
    def read_offset(self) -> int:
        """Pixels of ``level`` from a cell's top-left back to its window's (centres coincide)."""
        return (self.read_size - self.read_stride) // 2

    @property
    def rc(self) -> np.ndarray:
        """(N, 2) int grid row and column of each patch, row-major."""
        r, c = np.divmod(np.arange(self.n, dtype=np.int64), self.cols)
        return np.stack([r, c], axis=1)

    @property
    def yx_level(self) -> np.ndarray:
        """(N, 2) int top-left of each cell in pixels of ``level``."""
        return self.rc * self.read_stride

    @property
    def yx(self) -> np.ndarray:
        """(N, 2) int top-left of each cell in level-0 pixels."""
        return np.round(self.yx_level * self.level_downsample).astype(np.int64)

    @property
    def tissue_index(self) -> np.ndarray:
        """Indices of tissue patches: the row order of extracted features."""
        return np.flatnonzero(self.tissue)

    def to_image(self, values: Any, fill: Any = 0) -> np.ndarray:
        """Scatter per-patch values (all N, or one per tissue patch) to a (rows, cols[, ...]) array."""
        values = np.asarray(values)
        if values.shape[:1] == (self.n,):
            index = np.arange(self.n)
        elif values.shape[:1] == (int(self.tissue.sum()),):
            index = self.tissue_index
        else:
            raise ProtorefineError(
                f"values of length {values.shape[:1]}: expected {self.n} patches "
                f"or {int(self.tissue.sum())} tissue patches"
            )
        dtype = values.dtype
        if not np.can_cast(np.min_scalar_type(fill), dtype) and not (
            np.issubdtype(dtype, np.floating) and isinstance(fill, float)
        ):
            dtype = np.result_type(dtype, np.min_scalar_type(fill))
        out = np.full((self.rows, self.cols, *values.shape[1:]), fill, dtype=dtype)
        out.reshape(self.n, *values.shape[1:])[index] = values
        return out

    def from_image(self, image: np.ndarray, tissue_only: bool = True) -> np.ndarray:
        """Gather per-patch values from a (rows, cols[, ...]) array (tissue patches by default)."""
        image = np.asarray(image)
        if image.shape[:2] != (self.rows, self.cols):
            raise ProtorefineError(
                f"grid image of shape {image.shape[:2]}: expected ({self.rows}, {self.cols})"
            )
        flat = image.reshape(self.n, *image.shape[2:])
        return flat[self.tissue_index] if tissue_only else flat

    def to_dict(self) -> dict[str, Any]:
        """Plain scalars and arrays for the project store."""
        return {
            "level": self.level,
            "patch_size": self.patch_size,
            "stride": self.stride,
            "read_size": self.read_size,
            "read_stride": self.read_stride,
            "level_downsample": float(self.level_downsample),
            "rows": self.rows,
            "cols": self.cols,
            "shape": np.asarray(self.shape, dtype=np.int64),
            "tissue": np.asarray(self.tissue, dtype=bool),
            "tissue_fraction": np.asarray(self.tissue_fraction, dtype=np.float32),
            "mpp": float("nan") if self.mpp is None else float(self.mpp),
            "min_tissue": float(self.min_tissue),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PatchGrid:
        """Rebuild a grid written by :meth:`to_dict`."""
        try:
            mpp = float(np.asarray(d["mpp"]))
            grid = cls(
                level=int(np.asarray(d["level"])),
                patch_size=int(np.asarray(d["patch_size"])),
                stride=int(np.asarray(d["stride"])),
                read_size=int(np.asarray(d["read_size"])),
                read_stride=int(np.asarray(d["read_stride"])),
                level_downsample=float(np.asarray(d["level_downsample"])),
                rows=int(np.asarray(d["rows"])),
                cols=int(np.asarray(d["cols"])),
                shape=tuple(int(v) for v in np.asarray(d["shape"])),  # type: ignore[arg-type]
                tissue=np.asarray(d["tissue"], dtype=bool),
                tissue_fraction=np.asarray(d["tissue_fraction"], dtype=np.float32),
                mpp=None if math.isnan(mpp) else mpp,
                min_tissue=float(np.asarray(d.get("min_tissue", MIN_TISSUE))),
            )
        except KeyError as e:
            raise ProtorefineError(f"patch grid record: missing field {e.args[0]!r}") from None
        if grid.tissue.shape != (grid.n,):
            raise ProtorefineError(
                f"patch grid record: tissue has {grid.tissue.shape[0]} entries, expected {grid.n}"
            )
        return grid


def _box_means(mask: np.ndarray, mask_ds: float, yx0: np.ndarray, size0: float) -> np.ndarray:
    """Mean of ``mask`` (``mask_ds`` level-0 px per pixel) over level-0 squares; outside is 0."""
    h, w = mask.shape
    lo = yx0 / mask_ds
    side = size0 / mask_ds
    if side < 1:  # boxes smaller than a mask pixel take the pixel under their centre
        c = np.floor(lo + side / 2).astype(np.int64)
        ok = (c[:, 0] >= 0) & (c[:, 0] < h) & (c[:, 1] >= 0) & (c[:, 1] < w)
        out = np.zeros(len(yx0), dtype=np.float64)
        out[ok] = mask[c[ok, 0], c[ok, 1]]
        return out
    integral = np.zeros((h + 1, w + 1), dtype=np.float64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0, dtype=np.float64), axis=1)
    a = np.round(lo).astype(np.int64)
    b = np.maximum(np.round(lo + side).astype(np.int64), a + 1)
    area = (b[:, 0] - a[:, 0]) * (b[:, 1] - a[:, 1])
    y0, x0 = np.clip(a[:, 0], 0, h), np.clip(a[:, 1], 0, w)
    y1, x1 = np.clip(b[:, 0], 0, h), np.clip(b[:, 1], 0, w)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    return total / area


def _choose_level(
    slide: Slide, patch_size: int, level: int | None, mpp: float | None
) -> tuple[int, int, float]:
    """Pick (level, read_size, target downsample) from ``level`` or the target ``mpp``."""
    downsamples = slide.downsamples
    if level is not None and mpp is not None:
        raise ProtorefineError(f"give either level={level} or mpp={mpp}, not both")
    if level is not None:
        if not 0 <= int(level) < len(downsamples):
            raise ProtorefineError(
                f"level {level}: {slide.name} has levels 0..{len(downsamples) - 1}"
            )
        return int(level), patch_size, downsamples[int(level)]
    if mpp is None:
        return 0, patch_size, 1.0
    if not mpp > 0:
        raise ProtorefineError(f"mpp={mpp}: microns per pixel must be positive")
    if slide.mpp is None:  # taken to be at ``mpp`` already (prepare_project says so)
        return 0, patch_size, 1.0
    target = float(mpp) / float(slide.mpp)
    closest = int(np.argmin([abs(math.log(d / target)) for d in downsamples]))
    if abs(downsamples[closest] / target - 1) <= LEVEL_TOLERANCE:
        return closest, patch_size, target
    if target < 1:
        raise ProtorefineError(
            f"mpp={mpp}: finer than the slide's level 0 ({slide.mpp:.4g} um/px) of {slide.name}"
        )
    lvl = slide.best_level_for_downsample(target)
    read = max(1, round(patch_size * target / downsamples[lvl]))
    return lvl, read, target


def _tissue_fraction(slide: Slide, grid: PatchGrid, tissue: Any) -> np.ndarray:
    """Share of each patch covered by tissue, from the slide's tissue mask or ``tissue``."""
    if tissue is True:
        return np.ones(grid.n, dtype=np.float32)
    if tissue is None:
        mask, mask_ds = tissue_mask(slide)
    elif isinstance(tissue, tuple):
        mask, mask_ds = tissue
    else:
        mask = np.asarray(tissue)
        if mask.ndim != 2:
            raise ProtorefineError(f"tissue mask of shape {mask.shape}: expected a 2-D mask")
        mask_ds = slide.shape[1] / mask.shape[1]
    mask = np.asarray(mask, dtype=bool)
    frac = _box_means(mask, float(mask_ds), grid.yx.astype(np.float64), grid.downsample)
    return frac.astype(np.float32)


def make_grid(
    slide: Slide,
    *,
    patch_size: int = 224,
    level: int | None = None,
    mpp: float | None = None,
    stride: int | None = None,
    tissue: Any = None,
    min_tissue: float = MIN_TISSUE,
) -> PatchGrid:
    """Lay a patch grid over ``slide`` at ``level`` or the target ``mpp`` and flag tissue patches.

    ``stride`` is the cell size in target pixels (default ``patch_size``); a smaller
    stride gives a finer grid whose windows overlap. ``tissue``
    is ``None`` (compute :func:`protorefine.slides.tissue_mask`), ``True`` (every
    patch counts), a ``(mask, downsample)`` pair or a 2-D bool mask spanning the
    slide. A cell is tissue when at least ``min_tissue`` of it is.
    """
    if int(patch_size) < 1:
        raise ProtorefineError(f"patch size {patch_size}: must be at least 1 pixel")
    patch_size = int(patch_size)
    stride = patch_size if stride is None else int(stride)
    if stride < 1:
        raise ProtorefineError(f"stride {stride}: must be at least 1 pixel")
    if not 0 <= min_tissue <= 1:
        raise ProtorefineError(f"min_tissue={min_tissue}: must be between 0 and 1")
    lvl, read_size, target = _choose_level(slide, patch_size, level, mpp)
    lds = slide.downsamples[lvl]
    lh, lw = (int(n) for n in slide.levels[lvl].shape[:2])
    if read_size > lh and read_size > lw:  # one patch would cover the whole slide
        raise ProtorefineError(
            f"patch size {patch_size}: larger than the slide ({lw}x{lh} pixels at level {lvl} "
            f"of {slide.name or slide.path}, patches read {read_size} pixels wide there); "
            "give a smaller patch size"
        )
    read_stride = max(1, round(stride * read_size / patch_size))
    cell0 = read_stride * lds
    h, w = slide.shape
    rows, cols = max(1, math.ceil(h / cell0 - 1e-9)), max(1, math.ceil(w / cell0 - 1e-9))
    eff_mpp = None if slide.mpp is None else slide.mpp * lds * read_size / patch_size
    grid = PatchGrid(
        level=lvl,
        patch_size=patch_size,
        stride=stride,
        read_size=read_size,
        read_stride=read_stride,
        level_downsample=float(lds),
        rows=rows,
        cols=cols,
        shape=(h, w),
        tissue=np.zeros(rows * cols, dtype=bool),
        tissue_fraction=np.zeros(rows * cols, dtype=np.float32),
        mpp=eff_mpp,
        min_tissue=float(min_tissue),
    )
    grid.tissue_fraction = _tissue_fraction(slide, grid, tissue)
    grid.tissue = grid.tissue_fraction >= min_tissue
    return grid
