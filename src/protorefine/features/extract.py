"""Batched feature extraction: read patches from the slide pyramid while the encoder runs.

Reading (dask/zarr chunk reads, decompression, resizing) happens in a loader
that runs ahead of the encoder, so on a GPU the device never waits for the disk
and on a CPU the two overlap as far as the cores allow. Patches are visited
chunk by chunk through a small cache of decoded chunks, so each storage chunk is
decoded about once; features are returned in grid order all the same.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from protorefine._types import Cancel, Progress
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.features.encoders import Encoder
from protorefine.features.grid import PatchGrid
from protorefine.features.images import resize_batch
from protorefine.slides.base import Slide, compute

#: Loader kinds: ``thread`` (background threads), ``process`` (DataLoader worker processes),
#: ``inline`` (read, then embed, in the calling thread).
LOADERS = ("thread", "process", "inline")
#: Default loader and worker count, chosen by benchmarks/features_bench.py on 2 CPU cores.
DEFAULT_LOADER = "thread"
DEFAULT_WORKERS = 1
#: On a GPU the encoder outruns one reader: worker processes (at most this many, one core spare).
GPU_LOADER = "process"
GPU_WORKERS = 8
#: Bytes of decoded chunks each reader keeps.
CACHE_BYTES = 96 << 20


class RegionReader:
    """Reads regions of one pyramid level through a small LRU cache of decoded chunks.

    A patch grid rarely lines up with the storage chunks (224-px patches, 512 or
    1024-px chunks), so reading patch by patch would decode each chunk several
    times. Reading in chunk order through this cache decodes each about once.
    """

    def __init__(self, arr, max_bytes: int = CACHE_BYTES) -> None:
        self.arr = arr
        self.shape = tuple(int(v) for v in arr.shape[:2])
        chunks = getattr(arr, "chunks", None)
        if chunks is None or not hasattr(arr, "blocks"):
            chunks = ((self.shape[0],), (self.shape[1],))
        self.ybounds = np.concatenate([[0], np.cumsum(chunks[0])]).astype(np.int64)
        self.xbounds = np.concatenate([[0], np.cumsum(chunks[1])]).astype(np.int64)
        biggest = int(max(chunks[0])) * int(max(chunks[1])) * 3
        self.cached = hasattr(arr, "blocks") and biggest <= max_bytes // 4
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.update(_cache=OrderedDict(), _bytes=0, _lock=None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def chunk_of(self, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Chunk row and column holding level pixels (y, x)."""
        cy = np.searchsorted(self.ybounds, y, side="right") - 1
        cx = np.searchsorted(self.xbounds, x, side="right") - 1
        return cy, cx

    def _chunk(self, i: int, j: int) -> np.ndarray:
        """Decoded chunk (i, j), from the cache when there."""
        key = (i, j)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        block = self.arr.blocks[i, j]
        data = compute(block)[..., :3]
        with self._lock:
            if key not in self._cache:
                self._cache[key] = data
                self._bytes += data.nbytes
                while self._bytes > self.max_bytes and len(self._cache) > 1:
                    _, old = self._cache.popitem(last=False)
                    self._bytes -= old.nbytes
        return data

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """An ``(h, w, 3)`` uint8 region; outside the level is white."""
        out = np.empty((h, w, 3), dtype=np.uint8)
        self.read_into(out, y, x)
        return out

    def read_into(self, out: np.ndarray, y: int, x: int) -> None:
        """Fill ``out`` (h, w, 3) with the region at (y, x); outside the level is white."""
        h, w = out.shape[:2]
        H, W = self.shape
        y0, x0, y1, x1 = max(y, 0), max(x, 0), min(y + h, H), min(x + w, W)
        if (y0, x0, y1, x1) != (y, x, y + h, x + w):
            out[...] = 255
        if y1 <= y0 or x1 <= x0:
            return
        if not self.cached:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = compute(self.arr[y0:y1, x0:x1, :3])
            return
        (ci0, ci1), (cj0, cj1) = self.chunk_of(np.array([y0, y1 - 1]), np.array([x0, x1 - 1]))
        for i in range(int(ci0), int(ci1) + 1):
            by0, by1 = int(self.ybounds[i]), int(self.ybounds[i + 1])
            sy0, sy1 = max(y0, by0), min(y1, by1)
            for j in range(int(cj0), int(cj1) + 1):
                bx0, bx1 = int(self.xbounds[j]), int(self.xbounds[j + 1])
                sx0, sx1 = max(x0, bx0), min(x1, bx1)
                chunk = self._chunk(i, j)
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = chunk[
                    sy0 - by0 : sy1 - by0, sx0 - bx0 : sx1 - bx0
                ]


def window_origins(
    grid: PatchGrid, indices: Sequence[int] | np.ndarray, level_shape: tuple[int, int]
) -> np.ndarray:
    """(B, 2) top-left, in pixels of ``grid.level``, of the encoder window of cells ``indices``.

    A window wider than its cell is centred on it, but shifted back inside the level
    near the slide's edges (where it fits), so edge cells see tissue rather than padding.
    """
    rc = np.stack(np.divmod(np.asarray(indices, dtype=np.int64), grid.cols), axis=1)
    yx = rc * grid.read_stride - grid.read_offset
    if grid.read_offset > 0:
        hi = np.asarray(level_shape, dtype=np.int64) - grid.read_size
        yx = np.where(hi >= 0, np.clip(yx, 0, np.maximum(hi, 0)), yx)
    return yx


def read_level(slide: Slide, grid: PatchGrid, size: int) -> tuple[int, int]:
    """The pyramid level to read ``size``-px encoder inputs from, and its shrink against the grid's.

    Windows larger than the encoder input are box-averaged down by an integer factor.
    A coarser level an integer step below that divides the factor (2x pyramids) holds
    the window at that resolution already, from a fraction of the data: a quarter for
    224-px windows fed at 112, as WSI tools read. For pyramids made by box averaging
    (``protorefine convert``) the pixels are the same; a scanner's own levels are its
    rendition (TCGA SVS, level 1: 5.4 grey levels mean difference, EfficientNet cosine
    0.94). Otherwise the grid's own level and 1.
    """
    level, rs = grid.level, grid.read_size
    if rs % size or rs == size:
        return level, 1
    factor = rs // size
    h, w = (int(v) for v in slide.levels[level].shape[:2])
    best = (level, 1)
    for k in range(level + 1, len(slide.levels)):
        ratio = slide.downsamples[k] / slide.downsamples[level]
        r = round(ratio)
        kh, kw = (int(v) for v in slide.levels[k].shape[:2])
        exact = r > 1 and abs(ratio - r) < 1e-3 * r and abs(kh * r - h) < r and abs(kw * r - w) < r
        aligned = grid.read_stride % r == 0 and grid.read_offset % r == 0
        if exact and aligned and factor % r == 0:
            best = (k, r)
    return best


def chunk_order(
    grid: PatchGrid, indices: np.ndarray, origins: np.ndarray, reader: RegionReader
) -> np.ndarray:
    """Permutation of ``indices`` that visits patches chunk by chunk (row-major inside a chunk).

    ``origins``: the windows' top-left corners in pixels of the ``reader``'s level.
    """
    rows, cols = np.divmod(np.asarray(indices, dtype=np.int64), grid.cols)
    cy, cx = reader.chunk_of(np.maximum(origins[:, 0], 0), np.maximum(origins[:, 1], 0))
    return np.lexsort((cols, rows, cx, cy))


def read_patches(
    slide: Slide,
    grid: PatchGrid,
    indices: Sequence[int] | np.ndarray,
    size: int | None = None,
    reader: RegionReader | None = None,
    shrink: int = 1,
) -> np.ndarray:
    """uint8 (B, size, size, 3) encoder windows of cells ``indices`` (``size`` default: ``grid.patch_size``).

    ``reader`` with ``shrink`` > 1 reads a level that many times coarser than the grid's
    (see :func:`read_level`).
    """
    idx = np.asarray(indices, dtype=np.int64)
    size = grid.patch_size if size is None else int(size)
    if reader is None:
        level, shrink = read_level(slide, grid, size)
        reader = RegionReader(slide.levels[level])
    rs = grid.read_size // shrink
    out = np.empty((len(idx), rs, rs, 3), dtype=np.uint8)
    origins = window_origins(grid, idx, slide.levels[grid.level].shape[:2]) // shrink
    for k, (y, x) in enumerate(origins):
        reader.read_into(out[k], int(y), int(x))
    return resize_batch(out, size)


class PatchBatches(Dataset):
    """Dataset whose item ``i`` is the uint8 (B, S, S, 3) tensor of the ``i``-th batch of patches."""

    def __init__(self, slide: Slide, grid: PatchGrid, batches: list[np.ndarray], size: int) -> None:
        self.slide, self.grid, self.batches, self.size = slide, grid, batches, size
        level, self.shrink = read_level(slide, grid, size)
        self.reader = RegionReader(slide.levels[level])

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        batch = read_patches(
            self.slide, self.grid, self.batches[i], self.size, self.reader, self.shrink
        )
        return torch.from_numpy(batch)


def _iter_inline(ds: PatchBatches, pin: bool) -> Iterator[torch.Tensor]:
    """Batches read in the calling thread, one after another."""
    for i in range(len(ds)):
        yield ds[i].pin_memory() if pin else ds[i]


def _iter_threads(ds: PatchBatches, workers: int, pin: bool) -> Iterator[torch.Tensor]:
    """Batches read by ``workers`` background threads, up to ``2 * workers`` ahead, in order."""

    def load(i: int) -> torch.Tensor:
        t = ds[i]
        return t.pin_memory() if pin else t

    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="protorefine-read")
    pending: deque[cf.Future] = deque()
    try:
        nxt = 0
        while nxt < len(ds) or pending:
            while nxt < len(ds) and len(pending) < 2 * workers:
                pending.append(pool.submit(load, nxt))
                nxt += 1
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


def _iter_processes(ds: PatchBatches, workers: int, pin: bool) -> Iterator[torch.Tensor]:
    """Batches read by a torch DataLoader with ``workers`` worker processes."""
    ctx = "fork" if "fork" in torch.multiprocessing.get_all_start_methods() else None
    loader = DataLoader(
        ds,
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin,
        prefetch_factor=2,
        multiprocessing_context=ctx,
    )
    it = iter(loader)
    try:
        yield from it
    finally:
        del it


def cpu_threads(cores: int, readers: int, current: int, load: float | None = None) -> int:
    """Intra-op threads for a CPU encoder: all cores on an otherwise idle machine, else the
    cores the reader threads leave; never more than ``current``.

    On an idle 2-core machine the encoder on both cores with the reader beside it ran
    1.2-1.3x faster than on one; under load, oversubscribed OpenMP threads were several
    times slower (docs/benchmarks.md). ``load`` is the 1-minute load average (read when None).
    """
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):  # no load average (Windows): assume busy
            load = float(cores)
    want = cores if load < 0.75 * cores else cores - readers
    return max(1, min(int(current), want))


def extract_features(
    slide: Slide,
    grid: PatchGrid,
    encoder: Encoder,
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    loader: str | None = None,
    indices: Sequence[int] | np.ndarray | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> np.ndarray:
    """(n, encoder.dim) float32 features of the tissue patches, in ``np.flatnonzero(grid.tissue)`` order.

    Features are the encoder's raw output (not L2-normalised). ``indices`` picks
    other patches (grid order numbers) instead. ``loader`` is ``thread``,
    ``process`` or ``inline``; the default is one reader thread on a CPU (as fast
    as a worker process on 2 cores, see docs/benchmarks.md, and no fork) and
    ``min(8, cores - 1)`` DataLoader worker processes on CUDA. ``num_workers``
    sets the readers (0 means inline).
    On a CPU the encoder runs with ``threads`` intra-op threads (default:
    :func:`cpu_threads`), restored afterwards.
    ``progress(done, total, msg)`` is called per batch; ``cancel()`` is checked
    per batch and raises :class:`CancelledError` when it returns True.
    """
    idx = grid.tissue_index if indices is None else np.asarray(indices, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= grid.n):
        raise ProtorefineError(f"patch indices out of range 0..{grid.n - 1}")
    if batch_size < 1:
        raise ProtorefineError(f"batch size {batch_size}: must be at least 1")
    cores = os.cpu_count() or 1
    on_gpu = encoder.device.type == "cuda"
    kind = (loader or (GPU_LOADER if on_gpu else DEFAULT_LOADER)).lower()
    if kind not in LOADERS:
        raise ProtorefineError(f"loader {loader!r}: expected one of {', '.join(LOADERS)}")
    if num_workers is None:
        workers = max(1, min(GPU_WORKERS, cores - 1)) if on_gpu else DEFAULT_WORKERS
    else:
        workers = int(num_workers)
    if workers <= 0:
        kind = "inline"
    workers = min(max(workers, 1), os.cpu_count() or 1, 16)
    out = np.empty((len(idx), encoder.dim), dtype=np.float32)
    level, shrink = read_level(slide, grid, encoder.input_size)
    reader = RegionReader(slide.levels[level])
    origins = window_origins(grid, idx, slide.levels[grid.level].shape[:2]) // shrink
    order = chunk_order(grid, idx, origins, reader)  # positions in ``out``, chunk by chunk
    slots = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches = [idx[p] for p in slots]
    total = len(idx)
    if progress is not None:
        progress(0, total, "features")
    if not batches:
        return out
    if cancel is not None and cancel():
        raise CancelledError("feature extraction cancelled")
    ds = PatchBatches(slide, grid, batches, encoder.input_size)
    pin = encoder.device.type == "cuda"
    if kind == "inline":
        stream = _iter_inline(ds, pin)
    elif kind == "thread":
        stream = _iter_threads(ds, workers, pin)
    else:
        stream = _iter_processes(ds, workers, pin)
    before = torch.get_num_threads()
    if encoder.device.type == "cpu":
        readers = 0 if kind == "inline" else workers
        want = threads if threads is not None else cpu_threads(cores, readers, before)
        torch.set_num_threads(max(1, int(want)))
    done = 0
    try:
        for b, batch in enumerate(stream):
            feats = encoder.embed(batch)
            out[slots[b]] = feats
            done += len(feats)
            if progress is not None:
                progress(done, total, "features")
            if cancel is not None and cancel() and b + 1 < len(batches):
                raise CancelledError(f"feature extraction cancelled after {done}/{total} patches")
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
        torch.set_num_threads(before)
    return out
