"""Write a large pyramidal tiled JPEG TIFF made of synthetic H&E tiles, tile by tile.

Usage: ``python benchmarks/make_big_tiff.py [PATH] [--size 32768] [--force]``

The image is never held in memory: a pool of distinct 256-px tiles is rendered once
from a small synthetic slide, and each output tile is picked from the pool by a hash
of its position (tissue inside a wobbly ellipse, white glass outside). Reduced levels
(2x each, down to at most 1024 px) are SubIFDs built from pool tiles that were
area-averaged in advance, so every level is a true downsample of level 0. Other
benchmarks (conversion, napari viewer) share the file at :data:`DEFAULT_PATH`; it is
not regenerated when it already exists.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

DEFAULT_PATH = Path("/tmp/protorefine-bench/big_32768.tif")
DEFAULT_SIZE = 32768
TILE = 256
MPP = 0.5


def _pool(seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Distinct tissue and glass tiles cut from a 2048-px synthetic slide."""
    from protorefine.synthetic import synthetic_slide

    slide, _, _ = synthetic_slide((2048, 2048), seed=seed, tile=512, mpp=MPP)
    img = np.asarray(slide.levels[0])
    tissue, glass = [], []
    for y in range(0, 2048, TILE):
        for x in range(0, 2048, TILE):
            t = img[y : y + TILE, x : x + TILE]
            frac = (t.min(axis=2) < 220).mean()
            if frac > 0.6:
                tissue.append(t)
            elif frac < 0.02:
                glass.append(t)
    return tissue, glass


def _down2(a: np.ndarray) -> np.ndarray:
    b = a.astype(np.uint16)
    s = b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2]
    return ((s + 2) // 4).astype(np.uint8)


class _Layout:
    """Which pool tile sits at each level-0 tile position (a pure function of position)."""

    def __init__(self, n_tiles: int, tissue: list[np.ndarray], glass: list[np.ndarray]) -> None:
        self.n = n_tiles
        self.pool = tissue + glass
        self.n_tissue = len(tissue)
        self.n_glass = len(glass)

    def index(self, ty: int, tx: int) -> int:
        c = (self.n - 1) / 2
        r = math.hypot((ty - c) / (0.45 * self.n), (tx - c) / (0.40 * self.n))
        wobble = 0.08 * math.sin(ty * 0.05) + 0.08 * math.cos(tx * 0.04)
        h = (ty * 73856093) ^ (tx * 19349663)
        h = (h * 2654435761) & 0xFFFFFFFF
        if r + wobble < 1.0:
            return h % self.n_tissue
        return self.n_tissue + h % self.n_glass


def _level_tiles(
    layout: _Layout, pools: list[list[np.ndarray]], level: int
) -> Iterator[np.ndarray]:
    """Row-major 256-px tiles of ``level``, assembled from pre-downsampled pool tiles."""
    f = 2**level
    n = layout.n // f
    block = TILE // f
    pool = pools[level]
    for ty in range(n):
        for tx in range(n):
            out = np.empty((TILE, TILE, 3), np.uint8)
            for a in range(f):
                for b in range(f):
                    k = layout.index(ty * f + a, tx * f + b)
                    out[a * block : (a + 1) * block, b * block : (b + 1) * block] = pool[k]
            yield out


def make_big_tiff(
    path: Path = DEFAULT_PATH, size: int = DEFAULT_SIZE, *, force: bool = False
) -> Path:
    """Write the benchmark TIFF at ``path`` (skipped when it exists unless ``force``)."""
    path = Path(path)
    if path.exists() and not force:
        return path
    if size % TILE or size < 2 * TILE:
        raise SystemExit(f"--size {size}: must be a multiple of {TILE} and at least {2 * TILE}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tissue, glass = _pool()
    layout = _Layout(size // TILE, tissue, glass)
    levels = 1
    while size // 2 ** (levels - 1) > 1024 and TILE // 2**levels >= 1:
        levels += 1
    pools = [layout.pool]
    for _ in range(1, levels):
        pools.append([_down2(t) for t in pools[-1]])
    tmp = path.with_name(path.name + ".part")
    res = 1e4 / MPP
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        for level in range(levels):
            side = size // 2**level
            tw.write(
                _level_tiles(layout, pools, level),
                shape=(side, side, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 85},
                subifds=levels - 1 if level == 0 else None,
                subfiletype=1 if level else 0,
                resolution=(res / 2**level, res / 2**level),
                resolutionunit="CENTIMETER",
                description=f"protorefine benchmark slide|MPP = {MPP}" if level == 0 else None,
                maxworkers=2,
            )
    tmp.replace(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=str(DEFAULT_PATH))
    parser.add_argument("--size", type=int, default=DEFAULT_SIZE)
    parser.add_argument("--force", action="store_true", help="rewrite even when the file exists")
    args = parser.parse_args(argv)
    path = Path(args.path)
    existed = path.exists()
    t0 = time.perf_counter()
    make_big_tiff(path, args.size, force=args.force)
    state = (
        "exists, kept"
        if existed and not args.force
        else f"written in {time.perf_counter() - t0:.1f} s"
    )
    print(f"{path}: {path.stat().st_size / 1e6:.1f} MB ({state})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
