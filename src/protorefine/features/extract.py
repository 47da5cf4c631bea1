"""Batched feature extraction: read patches from the slide pyramid while the encoder runs.

Reading (dask/zarr chunk reads, decompression, resizing) happens in a loader
that runs ahead of the encoder, so on a GPU the device never waits for the disk
and on a CPU the two overlap as far as the cores allow. Patches in a batch that
lie side by side on one grid row are read as one strip (one read per row run,
not one per patch).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from protorefine.errors import CancelledError, ProtorefineError
from protorefine.features.encoders import Encoder, resize_batch
from protorefine.features.grid import PatchGrid
from protorefine.slides.base import Slide

Progress = Callable[[int, int, str], None]
Cancel = Callable[[], bool]
#: Loader kinds: ``thread`` (background threads), ``process`` (DataLoader worker processes),
#: ``inline`` (read, then embed, in the calling thread).
LOADERS = ("thread", "process", "inline")
#: Default loader and worker count, chosen by benchmarks/features_bench.py on 2 CPU cores.
DEFAULT_LOADER = "thread"
DEFAULT_WORKERS = 1


def _read_level(slide: Slide, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
    """An ``(h, w, 3)`` uint8 region at ``level`` read with dask's synchronous scheduler; white outside."""
    arr = slide.levels[level]
    H, W = arr.shape[:2]
    out = np.full((h, w, 3), 255, dtype=np.uint8)
    y0, x0 = max(y, 0), max(x, 0)
    y1, x1 = min(y + h, H), min(x + w, W)
    if y1 > y0 and x1 > x0:
        part = arr[y0:y1, x0:x1, :3]
        if hasattr(part, "compute"):
            part = part.compute(scheduler="synchronous")
        out[y0 - y : y1 - y, x0 - x : x1 - x] = np.asarray(part)
    return out


def read_patches(
    slide: Slide, grid: PatchGrid, indices: Sequence[int] | np.ndarray, size: int | None = None
) -> np.ndarray:
    """uint8 (B, size, size, 3) patches ``indices`` of ``grid`` (``size`` default: ``grid.patch_size``).

    Runs of patches side by side on one grid row are read as one strip.
    """
    idx = np.asarray(indices, dtype=np.int64)
    size = grid.patch_size if size is None else int(size)
    rs = grid.read_size
    out = np.empty((len(idx), rs, rs, 3), dtype=np.uint8)
    if len(idx):
        rows, cols = np.divmod(idx, grid.cols)
        step = grid.read_stride
        order = np.lexsort((cols, rows))
        start = 0
        while start < len(order):
            # grow a run on one grid row while the strip stays no more than twice the patches read
            end = start + 1
            while (
                end < len(order)
                and rows[order[end]] == rows[order[start]]
                and (cols[order[end]] - cols[order[start]]) * step + rs
                <= 2 * rs * (end + 1 - start)
            ):
                end += 1
            run = order[start:end]
            c0 = int(cols[run[0]])
            y, x = int(rows[run[0]]) * step, c0 * step
            width = (int(cols[run[-1]]) - c0) * step + rs
            strip = _read_level(slide, grid.level, y, x, rs, width)
            for k in run:
                dx = (int(cols[k]) - c0) * step
                out[k] = strip[:, dx : dx + rs]
            start = end
    return resize_batch(out, size)


class PatchBatches(Dataset):
    """Dataset whose item ``i`` is the uint8 (B, S, S, 3) tensor of the ``i``-th batch of patches."""

    def __init__(self, slide: Slide, grid: PatchGrid, batches: list[np.ndarray], size: int) -> None:
        self.slide, self.grid, self.batches, self.size = slide, grid, batches, size

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(read_patches(self.slide, self.grid, self.batches[i], self.size))


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
    ``process`` or ``inline`` (default :data:`DEFAULT_LOADER`, the fastest
    measured on 2 CPU cores) with ``num_workers`` readers (0 means inline).
    On a CPU the encoder runs with ``threads`` intra-op threads (default: the
    cores left over by the readers), restored afterwards: oversubscribed OpenMP
    threads are many times slower on a busy machine.
    ``progress(done, total, msg)`` is called per batch; ``cancel()`` is checked
    per batch and raises :class:`CancelledError` when it returns True.
    """
    idx = grid.tissue_index if indices is None else np.asarray(indices, dtype=np.int64)
    if len(idx) and (idx.min() < 0 or idx.max() >= grid.n):
        raise ProtorefineError(f"patch indices out of range 0..{grid.n - 1}")
    if batch_size < 1:
        raise ProtorefineError(f"batch size {batch_size}: must be at least 1")
    kind = (loader or DEFAULT_LOADER).lower()
    if kind not in LOADERS:
        raise ProtorefineError(f"loader {loader!r}: expected one of {', '.join(LOADERS)}")
    workers = DEFAULT_WORKERS if num_workers is None else int(num_workers)
    if workers <= 0:
        kind = "inline"
    workers = min(max(workers, 1), os.cpu_count() or 1, 16)
    out = np.empty((len(idx), encoder.dim), dtype=np.float32)
    batches = [idx[i : i + batch_size] for i in range(0, len(idx), batch_size)]
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
        cores = os.cpu_count() or 1
        want = threads if threads is not None else cores - (0 if kind == "inline" else workers)
        torch.set_num_threads(max(1, int(want)))
    done = 0
    try:
        for b, batch in enumerate(stream):
            feats = encoder.embed(batch)
            out[done : done + len(feats)] = feats
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
