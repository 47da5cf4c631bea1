"""Refine on a dask.distributed cluster (``protorefine refine --scheduler``).

The per-slide work of a stage (patch grid, patch features, stain statistics) runs as one
task a slide on the cluster's workers; each worker writes its slide's result into the
project's own caches (``features/``, ``colour/``) with the same atomic writes a local run
uses, or, for the grid, returns it to the client. The stages themselves then run on the
client exactly as in a local run, find those caches filled and write their stage folders,
so the project stays the single source of truth: a killed run resumes like a local one, and
a stage is never half-written. The prototypes stage sends each slide's local prototypes (k-means
of its cells, in the cosine space the client fitted on the cohort), and clusters what comes
back into global ones. The pixel stage sends its two per-slide steps itself: dense
features (cached in ``dense/``) and known cells, whose small summaries come back for the
cohort model; then self-training, probability and outline tracing, whose maps and polygons
come back for the client to store. The cross-slide steps (global prototypes, pseudo-labels,
classifier, the pixel stage's cohort model) run on the client.

Workers must see the project folder and the slides at the same paths as the client (a
shared file system). A worker lost mid-task is replaced by the scheduler, which runs its
task again elsewhere; a task that raises is retried :data:`RETRIES` times.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import logging
import multiprocessing
import os
import re
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from protorefine._types import Cancel, Progress
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.features import get_encoder
from protorefine.features.dense import dense_grid
from protorefine.features.grid import PatchGrid
from protorefine.project.pipeline import Pipeline, PixelOutput
from protorefine.project.store import Project
from protorefine.refine.config import RefineConfig
from protorefine.refine.pixels import NO_SAMPLE, PixelPrep
from protorefine.refine.prototypes import LocalPrototypes
from protorefine.refine.steps import Cohort

#: Seconds to wait for a scheduler to answer before the address is refused.
CONNECT_TIMEOUT_S = 10
#: Seconds to wait for the first worker to join a scheduler that has none.
WORKER_WAIT_S = 300
#: Times a slide's task is run again after it raised (a lost worker is handled by the
#: scheduler itself, up to its ``distributed.scheduler.allowed-failures``).
RETRIES = 2
#: The stages whose per-slide work runs on the workers, before the stage itself runs (the
#: prototypes and pixel stages send their per-slide steps from within).
SLIDE_STAGES = ("grid", "features", "output")
#: What ``local:N`` looks like.
_LOCAL = re.compile(r"local:(?P<n>\d+)")
#: A scheduler address without a protocol (``host:port``) is a TCP one.
_HOST_PORT = re.compile(r"[\w.\-]+:\d+")


class Cluster:
    """A connection to a dask scheduler (and the LocalCluster behind ``local:N``).

    Open it with :func:`connect`; close it (or use it as a context manager) when the run ends.
    """

    def __init__(self, address: str, client: Any, local: Any = None) -> None:
        self.address = address
        self.client = client
        self._local = local

    @property
    def scheduler(self) -> str:
        """The scheduler's own address (``tcp://host:port``)."""
        return str(self.client.scheduler.address)

    def workers(self) -> list[str]:
        """Addresses of the workers that are connected now."""
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    def hosts(self) -> dict[str, int]:
        """Per host, the task threads of all its workers together (to share out its cores)."""
        out: dict[str, int] = {}
        for info in self.client.scheduler_info(n_workers=-1)["workers"].values():
            out[info["host"]] = out.get(info["host"], 0) + int(info.get("nthreads", 1))
        return out

    def close(self) -> None:
        """Disconnect (and stop the LocalCluster of ``local:N``)."""
        self.client.close()
        if self._local is not None:
            # a worker that has imported torch can take over the nanny's 4 s to exit; it is
            # then killed, as intended here, so that warning is not shown
            nanny = logging.getLogger("distributed.nanny")
            level = nanny.level
            nanny.setLevel(logging.ERROR)
            try:
                self._local.close()
            finally:
                nanny.setLevel(level)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(
    address: str,
    *,
    timeout: float | None = None,
    worker_wait: float | None = None,
    say: Callable[[str], None] | None = None,
) -> Cluster:
    """Connect to the dask scheduler at ``address``: ``tcp://host:port`` (or ``host:port``,
    any dask protocol), a scheduler file (``dask scheduler --scheduler-file``), or
    ``local:N`` for a LocalCluster of N worker processes on this machine. An address that
    is none of these, or where no scheduler answers within ``timeout`` seconds, is a
    one-line :class:`ProtorefineError` naming it; so is a scheduler no worker joins within
    ``worker_wait`` seconds (``say`` gets a line while it waits). The waits default to
    :data:`CONNECT_TIMEOUT_S` and :data:`WORKER_WAIT_S`."""
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    worker_wait = WORKER_WAIT_S if worker_wait is None else worker_wait
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError as exc:  # pragma: no cover - a dependency; a broken install only
        raise ProtorefineError(
            f"--scheduler {address}: dask.distributed is not installed ({exc})"
        ) from None
    text = str(address).strip()
    local = _LOCAL.fullmatch(text)
    if local is not None:
        n = int(local["n"])
        if n < 1:
            raise ProtorefineError(f"--scheduler {text}: a LocalCluster needs at least 1 worker")
        # dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also turns off
        # glibc's adaptive mmap threshold: every large tensor is mapped and unmapped, and the
        # encoders ran about 1.5x slower in such a worker here; local workers go without it
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}),
            warnings.catch_warnings(),  # its HTTP server takes another port when 8787 is taken
        ):
            warnings.filterwarnings("ignore", message="Port 8787 is already in use")
            lc = LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
            )
        return Cluster(text, Client(lc, set_as_default=False), lc)
    if "://" in text or (_HOST_PORT.fullmatch(text) and not Path(text).is_file()):
        kwargs: dict[str, Any] = {"address": text}
    elif Path(text).is_file():
        kwargs = {"address": _scheduler_file_address(Path(text))}
    else:
        raise ProtorefineError(
            f"--scheduler {text}: not a scheduler address (tcp://host:port), a scheduler file "
            "that exists, or local:N"
        )
    try:
        client = Client(**kwargs, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError, TypeError, KeyError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProtorefineError(
            f"--scheduler {text}: no dask scheduler answers there ({reason}); start one with "
            "`dask scheduler` or give local:N"
        ) from None
    cluster = Cluster(text, client)
    if not cluster.workers():
        if say is not None:
            say(f"waiting for workers to join the scheduler at {text}")
        try:
            client.wait_for_workers(1, timeout=worker_wait)
        except (OSError, TimeoutError) as exc:
            cluster.close()
            raise ProtorefineError(
                f"--scheduler {text}: no worker joined in {worker_wait:g} s; start some with "
                f"`dask worker {cluster.scheduler}`"
            ) from exc
    return cluster


def _scheduler_file_address(path: Path) -> str:
    """The address in a scheduler file (``dask scheduler --scheduler-file``), or a one-line
    error naming the file."""
    try:
        address = json.loads(path.read_text()).get("address")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ProtorefineError(
            f"--scheduler {path}: not a dask scheduler file (unreadable JSON: {reason})"
        ) from None
    if not isinstance(address, str) or not address:
        raise ProtorefineError(f"--scheduler {path}: not a dask scheduler file (no address in it)")
    return address


@dataclass(frozen=True)
class SlideTask:
    """Where one slide's task of a cluster run stands, for a display (napari's slide list):
    ``state`` is "queued", "running" (on ``worker``), "done" or "cached" (after
    ``seconds``), "failed" or "cancelled"."""

    step: str
    slide_id: str
    state: str
    worker: str = ""
    seconds: float | None = None

    def describe(self) -> str:
        """One short line: ``features: 3.2 s on 127.0.0.1:40123``."""
        where = self.worker.removeprefix("tcp://")
        if self.state == "running":
            return f"{self.step}: on {where}"
        if self.state in ("done", "cached") and self.seconds is not None:
            took = "cached" if self.state == "cached" else f"{self.seconds:.1f} s"
            return f"{self.step}: {took} on {where}"
        return f"{self.step}: {self.state}"


class ClusterPipeline(Pipeline):
    """A :class:`Pipeline` whose per-slide work runs on a dask cluster's workers.

    ``slide_runs[stage][slide]`` records, for each slide task of this run, the worker that
    ran it, its seconds and whether it found the result cached. ``on_task``, when set, is
    told each change of a slide task's state (:class:`SlideTask`), from the thread that runs
    the pipeline.
    """

    def __init__(
        self,
        project: Project,
        cluster: Cluster | str,
        config: RefineConfig | None = None,
        *,
        partial: bool = False,
        loader: str | None = None,
    ) -> None:
        """``cluster``: a connected :class:`Cluster`, or an address that is connected (through
        :func:`shared_cluster`) when the first stage with per-slide work runs, in the thread
        that runs the pipeline (napari: not the event loop)."""
        super().__init__(project, config, partial=partial, loader=loader)
        self._cluster = cluster
        self.slide_runs: dict[str, dict[str, dict]] = {}
        #: Wall seconds this run waited on the workers, per step (``slide_runs``' keys).
        self.task_seconds: dict[str, float] = {}
        self.on_task: Callable[[SlideTask], None] | None = None

    @property
    def cluster(self) -> Cluster:
        """The cluster the per-slide work runs on (connected now when given as an address)."""
        if isinstance(self._cluster, str):
            self._cluster = shared_cluster(self._cluster)
        return self._cluster

    def _run_stage(
        self,
        name: str,
        progress: Progress | None,
        cancel: Cancel | None,
        on_round=None,
        on_epoch=None,
    ) -> None:
        if name in SLIDE_STAGES and self._has_slide_work(name):
            self._on_workers(name, progress, cancel)
        super()._run_stage(name, progress, cancel, on_round, on_epoch)

    def _has_slide_work(self, name: str) -> bool:
        cfg = self.config
        if name == "output":
            return cfg.colour_prototypes > 0 and cfg.colour_weight > 0 and cfg.output_upsample > 1
        return True

    def _on_workers(self, name: str, progress: Progress | None, cancel: Cancel | None) -> None:
        """One task a slide of stage ``name`` on the workers; progress counts slides done."""
        say = progress or (lambda *_: None)
        results = self._slide_tasks(
            name, name, {}, lambda d, n, m: say(d, n, f"{name}: {m}"), cancel
        )
        for sid, result in results.items():
            grid = result.pop("grid", None)
            if grid is not None:
                self.ready_grids[sid] = PatchGrid.from_dict(grid)

    def _local_prototypes(self, coh: Cohort, prog, check) -> list[LocalPrototypes]:
        """Each slide's local prototypes on the workers, in the cosine space the client
        fitted on the cohort; the client clusters them into global ones."""
        space = coh.cosine_space(self.config)
        assert coh.coarse is not None
        args = {}
        for i, sid in enumerate(coh.slide_ids):
            rows = coh.slide_rows(sid)
            dist = None if coh.distance is None else coh.distance[rows]
            args[sid] = (i, space, coh.coarse[rows], dist)
        results = self._slide_tasks("prototypes", "prototypes", args, prog, check)
        return [results[sid].pop("local") for sid in coh.slide_ids]

    def _pixel_prepares(self, ids: list[str], prog, check) -> list[PixelPrep]:
        """Each slide's dense features and known cells on the workers; their small
        summaries (:class:`PixelPrep`) come back for the cohort model."""
        args = {sid: (i, len(ids)) for i, sid in enumerate(ids)}
        results = self._slide_tasks("pixel-prepare", "pixels", args, prog, check)
        return [results[sid].pop("prep") for sid in ids]

    def _pixel_finishes(
        self,
        ids: list[str],
        preps: list[PixelPrep],
        cohort,
        prog,
        check,
        on_output: Callable[[int, PixelOutput], None],
    ) -> list[PixelOutput]:
        """Each slide's self-training, probability and traced outline on the workers."""
        args = {
            sid: (i, replace(prep, sample=NO_SAMPLE), cohort)  # the cohort's share stays here
            for i, (sid, prep) in enumerate(zip(ids, preps, strict=True))
        }
        results = self._slide_tasks("pixel-finish", "pixels-outline", args, prog, check)
        outputs = [results[sid].pop("output") for sid in ids]
        for i, output in enumerate(outputs):
            on_output(i, output)
        return outputs

    def _slide_tasks(
        self,
        task: str,
        record: str,
        args: dict[str, tuple],
        say: Progress,
        cancel: Cancel | None,
    ) -> dict[str, dict]:
        """One ``task`` a slide (with its ``args``) on the workers, their results by slide;
        each slide's worker and seconds kept in ``slide_runs[record]``."""
        from distributed import wait

        t0 = time.perf_counter()
        client = self.cluster.client
        folder = str(self.project.folder.resolve())
        config = self.config.to_dict()
        ids = [s.id for s in self.slides]
        run = uuid.uuid4().hex[:8]
        hosts = self.cluster.hosts()
        futures = {
            client.submit(
                slide_task,
                task,
                folder,
                config,
                sid,
                self.partial,
                hosts,
                args.get(sid, ()),
                key=f"protorefine-{task}-{sid}-{run}",
                retries=RETRIES,
                pure=False,
            ): sid
            for sid in ids
        }
        n = len(ids)
        runs: dict[str, dict] = {}
        say(0, n, f"{n} slide(s) on {len(self.cluster.workers())} worker(s)")
        tell = self.on_task or (lambda _task: None)
        for sid in ids:
            tell(SlideTask(record, sid, "queued"))
        slide_of = {fut.key: sid for fut, sid in futures.items()}
        on_worker: dict[str, str] = {}
        pending = set(futures)
        try:
            while pending:
                if cancel is not None and cancel():
                    raise CancelledError(
                        f"run cancelled in stage {record!r}; finished slides are kept"
                    )
                if self.on_task is not None:
                    self._tell_running(slide_of, runs, on_worker, record)
                try:
                    with client.as_current():  # this client, not a dask-wide default
                        finished, pending = wait(
                            pending, timeout=0.5, return_when="FIRST_COMPLETED"
                        )
                except TimeoutError:
                    continue
                for fut in finished:
                    sid = futures[fut]
                    try:
                        runs[sid] = result = _result(fut, sid, record)
                    except ProtorefineError:
                        tell(SlideTask(record, sid, "failed", on_worker.get(sid, "")))
                        raise
                    state = "cached" if result["cached"] else "done"
                    tell(SlideTask(record, sid, state, result["worker"], result["seconds"]))
                    took = f"{result['seconds']:.1f} s" + (", cached" if result["cached"] else "")
                    say(len(runs), n, f"{sid} on {result['worker']} ({took})")
        finally:
            if pending:
                client.cancel(list(pending))  # running tasks finish; their writes are atomic
                for fut in pending:
                    tell(SlideTask(record, futures[fut], "cancelled"))
        self.slide_runs[record] = {
            sid: {k: runs[sid][k] for k in ("worker", "seconds", "cached")} for sid in ids
        }
        self.task_seconds[record] = round(time.perf_counter() - t0, 3)
        return runs

    def _tell_running(
        self, slide_of: dict, runs: dict, on_worker: dict[str, str], record: str
    ) -> None:
        """Tell ``on_task`` of the slides the scheduler has given a worker since last asked."""
        assert self.on_task is not None
        try:
            processing = self.cluster.client.processing()
        except Exception:  # the scheduler is busy or gone: the wait below says so
            return
        for worker, keys in processing.items():
            for key in keys:
                sid = slide_of.get(key)
                if sid is not None and sid not in runs and on_worker.get(sid) != worker:
                    on_worker[sid] = worker
                    self.on_task(SlideTask(record, sid, "running", worker))


def _result(future: Any, slide_id: str, stage: str) -> dict:
    """A slide task's result; its ProtorefineError as one; a slide that kept killing its
    workers named."""
    from distributed import KilledWorker

    try:
        result = future.result()
    except KilledWorker as exc:
        raise ProtorefineError(
            f"slide {slide_id!r}: its {stage} task was lost with its worker too often ({exc}); "
            "the worker may run out of memory on this slide"
        ) from None
    if "error" in result:
        raise ProtorefineError(result["error"])
    return dict(result)


@functools.lru_cache(maxsize=4)
def _encoder(name: str, device: str):
    """A worker's encoder, built once per process and reused for its next slides."""
    return get_encoder(name, device=device)


def slide_task(
    stage: str,
    folder: str,
    config: dict,
    slide_id: str,
    partial: bool,
    hosts: dict[str, int] | None = None,
    args: tuple = (),
) -> dict:
    """Run on a worker: stage ``stage``'s work for one slide of the project at ``folder``
    with the client's ``config`` (and the step's ``args``). Returns the worker's address,
    seconds, whether the result was cached, and what the step gives back (the grid of the
    grid stage, a slide's local prototypes, the pixel stage's summary or output); a
    ProtorefineError comes back as ``{"error": message}`` (a user's error is not retried).
    ``hosts`` (:meth:`Cluster.hosts`) shares each machine's cores among its workers' task
    threads."""
    from distributed import get_worker

    t0 = time.perf_counter()
    me = get_worker()
    worker = me.address
    _share_cores((hosts or {}).get(me.ip, 0))
    try:
        out = _slide_work(stage, folder, config, slide_id, partial, args)
    except ProtorefineError as exc:
        return {"error": f"worker {worker}: {exc}"}
    out.update(worker=worker, seconds=round(time.perf_counter() - t0, 3))
    return out


def _share_cores(threads_on_host: int) -> None:
    """Give the encoders of this worker's task its share of the machine's cores: a dask
    worker process starts with one OpenMP thread (the nanny sets OMP_NUM_THREADS=1), which
    leaves the other cores of a machine with fewer workers than cores idle."""
    if threads_on_host < 1:
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(max(1, (cores or 1) // threads_on_host))


def _slide_work(
    stage: str, folder: str, config: dict, slide_id: str, partial: bool, args: tuple = ()
) -> dict:
    if not (Path(folder) / "config.json").is_file():
        raise ProtorefineError(
            f"{folder}: this worker cannot see the project folder; workers need the client's "
            "file system at the same paths"
        )
    project = Project.open(folder)
    project.config = RefineConfig.from_dict(config)  # the client's, in memory only
    # a worker process is a daemon: it cannot start the patch reader's worker processes
    loader = "thread" if multiprocessing.current_process().daemon else None
    pipe = Pipeline(project, partial=partial, loader=loader)
    cfg = pipe.config
    if stage == "grid":
        grid = project.compute_grid(slide_id)
        return {"grid": grid.to_dict(), "cached": False}
    if stage == "features":
        encoder = _encoder(cfg.encoder, cfg.device)
        cache = project.feature_cache(encoder.name, encoder.weight_hash)
        return {"cached": not pipe.slide_features(slide_id, encoder, cache)}
    if stage == "output":
        grid, factor = project.grid(slide_id), max(1, int(cfg.output_upsample))
        path, cells = project.colour_cache(slide_id, factor)
        had = path.exists() and cells.exists() and cells.read_text() == grid.signature()
        pipe.stain_features(slide_id, grid, factor)
        return {"cached": had}
    if stage == "prototypes":
        return {"local": pipe.slide_prototypes(slide_id, *args), "cached": False}
    if stage == "pixel-prepare":
        index, n_slides = args
        dgrid = dense_grid(project.open_slide(slide_id), mpp=cfg.pixel_mpp, cell=cfg.pixel_cell)
        had = pipe._cached_dense(slide_id, dgrid)[0] is not None
        return {"prep": pipe.pixel_prepare(slide_id, index, n_slides), "cached": had}
    if stage == "pixel-finish":
        index, prep, cohort = args
        return {"output": pipe.pixel_finish(slide_id, index, prep, cohort), "cached": False}
    raise ProtorefineError(f"stage {stage!r} has no per-slide work")


_shared: dict[str, Cluster] = {}
_shared_lock = threading.Lock()


def shared_cluster(address: str) -> Cluster:
    """A connection to ``address`` kept for the process and reused by the next runs (napari
    runs one after another; ``local:N`` starts its workers once); reconnected when it was
    lost. Closed when the process exits."""
    with _shared_lock:
        cluster = _shared.get(address)
        if cluster is None or cluster.client.status != "running":
            if not _shared:
                atexit.register(close_shared)
            cluster = _shared[address] = connect(address)
        return cluster


def close_shared() -> None:
    """Close the connections :func:`shared_cluster` kept (and their ``local:N`` workers)."""
    with _shared_lock:
        while _shared:
            _, cluster = _shared.popitem()
            with contextlib.suppress(Exception):  # already gone with its scheduler
                cluster.close()


@contextlib.contextmanager
def maybe_cluster(address: str | None, **kwargs: Any) -> Iterator[Cluster | None]:
    """The cluster at ``address`` for the duration (None when no address is given)."""
    if not address:
        yield None
        return
    with connect(address, **kwargs) as cluster:
        yield cluster
