"""Dense features: the encoder run fully convolutionally over tiles of the slide.

Instead of cropping and resizing one window per patch, the EfficientNet-Lite0 trunk sees
the slide at a working resolution in tiles with a halo (so tile seams do not show), and
four of its layers (strides 4, 8, 16 and 32: stain and texture early, context late) are
pooled or interpolated onto a grid of small square cells, with each cell's stain
statistics beside them. A finer grid then costs little more than a coarse one.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from protorefine._types import Cancel, Progress
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.features.encoders import IMAGENET_MEAN, IMAGENET_STD, get_encoder
from protorefine.slides.base import Slide

#: Trunk blocks whose outputs become features (EfficientNet-Lite0: strides 4, 8, 16, 32).
TRUNK_BLOCKS = (2, 4, 10, 15)
#: Channels of those blocks, then the 12 stain statistics: the feature blocks' widths.
BLOCK_WIDTHS = (24, 40, 112, 320, 12)
#: Working pixels of halo read around each tile (a multiple of the trunk's stride 32).
HALO = 192
#: Working pixels per tile side before the halo.
TILE = 1024
#: The trunk's coarsest stride: tiles and halos are multiples of it.
_TRUNK_STRIDE = 32
#: Haematoxylin, eosin and DAB from RGB optical density (Ruifrok and Johnston, as skimage).
_HED_FROM_RGB = np.linalg.inv(
    np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
)


@dataclass
class DenseGrid:
    """Where the cells of a dense map lie: ``cell`` working pixels per cell side, read at
    ``level`` and resized by ``scale`` (working pixels per level pixel); ``cell0`` level-0
    pixels per cell; ``rows`` x ``cols`` cells cover the slide; ``mpp`` µm per working pixel
    (None when the slide records none)."""

    level: int
    scale: float
    cell: int
    cell0: float
    rows: int
    cols: int
    mpp: float | None

    @property
    def cell_um(self) -> float | None:
        """Cell side in micrometres (None when the pixel size is unknown)."""
        return None if self.mpp is None else self.mpp * self.cell


def dense_grid(slide: Slide, *, mpp: float, cell: int) -> DenseGrid:
    """The dense cell grid of ``slide`` at working resolution ``mpp`` (µm/px) with ``cell``
    working pixels per cell. A slide coarser than ``mpp`` is worked on at level 0; a slide
    without a recorded pixel size is taken to be at ``mpp`` already."""
    if cell < 4 or cell % 4:
        raise ProtorefineError(f"pixel cell {cell}: must be a multiple of 4 pixels, at least 4")
    target = 1.0 if slide.mpp is None else max(1.0, float(mpp) / float(slide.mpp))
    level = slide.best_level_for_downsample(target)
    lds = slide.downsamples[level]
    scale = lds / target  # working pixels per level pixel (<= 1)
    cell0 = cell * target
    h, w = slide.shape
    rows, cols = math.ceil(h / cell0 - 1e-9), math.ceil(w / cell0 - 1e-9)
    if rows < 2 or cols < 2:
        raise ProtorefineError(
            f"{slide.name or slide.path}: {w}x{h} pixels is too small for the pixel stage's "
            f"cells of {cell0:.0f} pixels; give a smaller --pixel-cell"
        )
    work_mpp = None if slide.mpp is None else float(slide.mpp) * target
    return DenseGrid(level, scale, int(cell), float(cell0), rows, cols, work_mpp)


class DenseEncoder:
    """The EfficientNet-Lite0 trunk on one device, returning the chosen layers' maps."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        enc = get_encoder("efficientnet-lite0", device=device)
        self.device = enc.device
        self.model: Any = enc.net.model  # efficientnet_lite_pytorch's (untyped)
        self.weight_hash = enc.weight_hash
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)

    def maps(self, rgb: np.ndarray) -> list[torch.Tensor]:
        """The trunk's maps of ``TRUNK_BLOCKS`` for one uint8 (H, W, 3) image (H, W multiples of 32)."""
        x = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device)
        x = x.permute(2, 0, 1)[None].float() / 255.0
        x = (x - self._mean) / self._std
        m = self.model
        out = []
        with torch.inference_mode():
            x = m._swish(m._bn0(m._conv_stem(x)))
            for i, block in enumerate(m._blocks):
                x = block(x)
                if i in TRUNK_BLOCKS:
                    out.append(x)
                if i >= TRUNK_BLOCKS[-1]:
                    break
        return out


def stain_statistics(rgb: np.ndarray, cell: int) -> np.ndarray:
    """(rows, cols, 12): per cell the mean and standard deviation of haematoxylin, eosin and
    optical density, and the cell means averaged over 3 x 3 and 5 x 5 cells around it."""
    od = -np.log(np.clip(rgb.astype(np.float32) / 255.0, 1 / 255.0, 1.0))
    he = od.reshape(-1, 3) @ _HED_FROM_RGB.astype(np.float32)
    ch = np.concatenate([he[:, :2], od.sum(-1).reshape(-1, 1)], 1)
    h, w = rgb.shape[0] // cell, rgb.shape[1] // cell
    ch = ch.reshape(rgb.shape[0], rgb.shape[1], 3)[: h * cell, : w * cell]
    blocks = ch.reshape(h, cell, w, cell, 3)
    mu = blocks.mean((1, 3))
    sd = blocks.std((1, 3))
    parts = [mu, sd] + [ndi.uniform_filter(mu, size=(k, k, 1), mode="reflect") for k in (3, 5)]
    return np.concatenate(parts, -1)


def _to_cells(fmap: torch.Tensor, n: int) -> torch.Tensor:
    """A (1, C, h, w) map onto an n x n cell grid: averaged when finer, interpolated when coarser."""
    if fmap.shape[-1] >= n:
        return F.adaptive_avg_pool2d(fmap, (n, n))
    return F.interpolate(fmap, size=(n, n), mode="bilinear", align_corners=False)


def _read_working(slide: Slide, grid: DenseGrid, y0: int, x0: int, size: int) -> np.ndarray:
    """A ``size`` x ``size`` working-resolution region at working (y0, x0); beyond the slide
    mirrored, so features at its border see tissue, not a white frame."""
    lh, lw = (int(n) for n in slide.levels[grid.level].shape[:2])
    s = grid.scale
    wh, ww = math.floor(lh * s), math.floor(lw * s)  # the slide's extent in working pixels
    ya, xa = max(0, y0), max(0, x0)
    yb, xb = min(wh, y0 + size), min(ww, x0 + size)
    ly0, lx0 = math.floor(ya / s), math.floor(xa / s)
    ly1, lx1 = min(lh, math.ceil(yb / s)), min(lw, math.ceil(xb / s))
    region = slide.read_region(grid.level, ly0, lx0, ly1 - ly0, lx1 - lx0)
    if s != 1.0:
        t = torch.from_numpy(region).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(yb - ya, xb - xa), mode="area")
        region = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    else:
        region = region[: yb - ya, : xb - xa]
    pad = ((ya - y0, y0 + size - yb), (xa - x0, x0 + size - xb), (0, 0))
    if any(p for pair in pad[:2] for p in pair):
        if min(region.shape[:2]) > max(max(pad[0]), max(pad[1])):
            region = np.pad(region, pad, mode="reflect")
        else:  # a slide smaller than the halo: its edge pixels repeated
            region = np.pad(region, pad, mode="edge")
    return region


def drop_pages(arr: np.ndarray) -> None:
    """Give back the pages of a memory-mapped array that this process has touched (they stay
    in the file and the page cache): a whole slide's features then occupy the resident memory
    of one tile row or chunk, not of the slide. Arrays in memory are left alone."""
    if isinstance(arr, np.memmap):
        handle = getattr(arr, "_mmap", None)
        if handle is not None and hasattr(handle, "madvise"):
            handle.madvise(mmap.MADV_DONTNEED)
    elif isinstance(arr.base, np.memmap):
        drop_pages(arr.base)


def dense_features(
    slide: Slide,
    grid: DenseGrid,
    encoder: DenseEncoder,
    *,
    out: np.ndarray | None = None,
    tissue: np.ndarray | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> np.ndarray:
    """(rows, cols, sum(BLOCK_WIDTHS)) float16 dense features of ``slide`` on ``grid``, tile by
    tile (``out``: an array, e.g. a memory map on disk, to fill instead of a new one).
    ``tissue`` (rows, cols) bool: tiles holding no tissue cell are not read or encoded (their
    features stay 0; a whole slide is mostly glass)."""
    d = sum(BLOCK_WIDTHS)
    if out is None:
        out = np.zeros((grid.rows, grid.cols, d), dtype=np.float16)
    if out.shape != (grid.rows, grid.cols, d):
        raise ProtorefineError(
            f"dense features: output of shape {out.shape}, expected {(grid.rows, grid.cols, d)}"
        )
    cell = grid.cell
    tile = max(TILE - TILE % math.lcm(cell, _TRUNK_STRIDE), math.lcm(cell, _TRUNK_STRIDE))
    halo = math.lcm(cell, _TRUNK_STRIDE) * math.ceil(HALO / math.lcm(cell, _TRUNK_STRIDE))
    tc, hc = tile // cell, halo // cell  # cells per tile side, halo cells
    n_all = (tile + 2 * halo) // cell
    ty, tx = math.ceil(grid.rows / tc), math.ceil(grid.cols / tc)
    total = ty * tx
    for k in range(total):
        if cancel is not None and cancel():
            raise CancelledError("dense features cancelled")
        i, j = divmod(k, tx)
        r0, c0 = i * tc, j * tc
        r1, c1 = min(grid.rows, r0 + tc), min(grid.cols, c0 + tc)
        if tissue is None or tissue[r0:r1, c0:c1].any():  # glass is not read or encoded
            rgb = _read_working(slide, grid, i * tile - halo, j * tile - halo, tile + 2 * halo)
            maps = encoder.maps(rgb)
            parts = [_to_cells(m, n_all)[0, :, hc : hc + tc, hc : hc + tc] for m in maps]
            feats = torch.cat(parts, 0).permute(1, 2, 0).float().cpu().numpy()
            stain = stain_statistics(rgb, cell)[hc : hc + tc, hc : hc + tc]
            block = np.concatenate([feats, stain], -1)
            out[r0:r1, c0:c1] = block[: r1 - r0, : c1 - c0].astype(np.float16)
        if j == tx - 1:
            drop_pages(out)  # a finished tile row: on disk, not needed in memory
        if progress is not None:
            progress(k + 1, total, f"tile {k + 1}/{total}")
    return out
