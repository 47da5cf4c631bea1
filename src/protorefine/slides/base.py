"""The Slide object every backend returns: a lazy RGB pyramid plus metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dask.array as da
import numpy as np


def compute(arr: da.Array | np.ndarray, scheduler: str = "synchronous") -> np.ndarray:
    """Materialise a (dask) array without dask's global callbacks.

    napari registers a global dask cache callback that is not thread-safe: two threads
    computing the same chunk at once make it raise ``KeyError``. An explicit empty
    callback list keeps reads from worker threads out of it.
    """
    if isinstance(arr, da.Array):
        return np.asarray(arr.compute(scheduler=scheduler, callbacks=[]))
    return np.asarray(arr)


@dataclass
class Slide:
    """A whole-slide image as a pyramid of lazy ``(H, W, 3)`` uint8 dask arrays.

    ``levels[0]`` is full resolution; each further level is smaller. ``mpp`` is
    microns per pixel at level 0 (``None`` when the file does not say).
    ``associated`` holds small extra images (``label``, ``macro``, ``thumbnail``).
    ``region_reader`` is an optional backend fast path ``(level, y, x, h, w) ->
    (h, w, 3) uint8 or None`` for in-bounds regions; it must give the same pixels
    as ``levels`` (None means "use the lazy level"). ``icc_profile`` is the colour profile
    the file embeds (ICC bytes, ``None`` when absent); ``levels`` stay the raw pixels.
    """

    path: Path
    name: str
    levels: list[da.Array]
    mpp: float | None = None
    associated: dict[str, np.ndarray] = field(default_factory=dict)
    backend: str = ""
    region_reader: Callable[[int, int, int, int, int], np.ndarray | None] | None = field(
        default=None, repr=False, compare=False
    )
    icc_profile: bytes | None = field(default=None, repr=False)

    @classmethod
    def from_array(
        cls, image: np.ndarray, name: str = "image", mpp: float | None = None, chunk: int = 1024
    ) -> Slide:
        """Wrap an in-memory ``(H, W, 3)`` uint8 image as a one-level slide."""
        arr = da.from_array(np.ascontiguousarray(image[..., :3]), chunks=(chunk, chunk, 3))
        return cls(path=Path(name), name=name, levels=[arr], mpp=mpp, backend="array")

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of level 0 in pixels."""
        h, w = self.levels[0].shape[:2]
        return int(h), int(w)

    @property
    def downsamples(self) -> list[float]:
        """Downsample factor of each level relative to level 0 (width based)."""
        w0 = self.levels[0].shape[1]
        return [w0 / lvl.shape[1] for lvl in self.levels]

    def mpp_at(self, level: int) -> float | None:
        """Microns per pixel at ``level`` (``None`` when unknown)."""
        return None if self.mpp is None else self.mpp * self.downsamples[level]

    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Read an ``(h, w, 3)`` uint8 region at ``level``; outside the slide is white."""
        arr = self.levels[level]
        H, W = arr.shape[:2]
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + h, H), min(x + w, W)
        if y1 > y0 and x1 > x0:
            fast = None
            if self.region_reader is not None:
                fast = self.region_reader(level, y0, x0, y1 - y0, x1 - x0)
            if fast is None:
                fast = compute(arr[y0:y1, x0:x1, :3])
            out[y0 - y : y1 - y, x0 - x : x1 - x] = fast
        return out

    def best_level_for_downsample(self, downsample: float) -> int:
        """Index of the smallest level whose downsample does not exceed ``downsample``."""
        best = 0
        for i, d in enumerate(self.downsamples):
            if d <= downsample * 1.001:
                best = i
        return best
