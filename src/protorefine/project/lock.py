"""One run at a time on a project: a lock file in the project folder that names its holder.

``run.lock`` holds the holder's PID, host name, the process's start time and when it took
the lock. It is written whole beside its place and linked in (``os.link`` fails when the
lock exists: an exclusive create that never shows half a file), and removed when the run
ends, also on an error or Ctrl-C. A lock whose process is gone (a run killed with kill -9)
is stale and taken over with a one-line note: its PID is no longer alive on this host, or
the process now under that PID started after the holder did (the PID was reused). A lock
held on another host cannot be checked from here and counts as live.

The lock is re-entrant within a process (``protorefine refine`` holds it around its
:meth:`Pipeline.run`, which takes it too), so it keeps other processes out, not threads.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Concatenate, ParamSpec, Protocol, TypeVar

import psutil

from protorefine.errors import ProtorefineError

__all__ = [
    "LOCK_FILE",
    "LockHolder",
    "ProjectBusyError",
    "busy_message",
    "holds_project_lock",
    "lock_holder",
    "project_lock",
]

#: The lock file in a project folder.
LOCK_FILE = "run.lock"
#: Seconds two readings of one process's start time may differ by (clock-tick rounding).
_START_SLACK = 1.0
#: Seconds a lock file that cannot be read yet (being written on a file system without
#: hard links) counts as live.
_YOUNG = 10.0

_log = logging.getLogger("protorefine")
_held: dict[Path, tuple[str, int]] = {}  # lock path -> (our token, how many holds)
_held_guard = threading.Lock()


class _HasFolder(Protocol):
    folder: Path


class _HasProject(Protocol):
    @property
    def project(self) -> _HasFolder: ...


_Runner = TypeVar("_Runner", bound=_HasProject)
_P = ParamSpec("_P")
_R = TypeVar("_R")


class ProjectBusyError(ProtorefineError):
    """Another process holds the project's lock."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds a project's lock."""

    pid: int
    host: str
    since: float  # when the lock was taken (seconds since the epoch)
    process_start: float | None  # when the holder's process started, if known
    token: str = ""

    def describe(self) -> str:
        """``PID 1234 on host, since 2026-12-07 19:45:12`` (local time)."""
        when = dt.datetime.fromtimestamp(self.since).strftime("%Y-%m-%d %H:%M:%S")
        return f"PID {self.pid} on {self.host}, since {when}"


def _process_start(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch); None when it is not running."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host."""
    return pid > 0 and psutil.pid_exists(pid)


def _read(path: Path) -> LockHolder | None:
    """The holder recorded in ``path``; None when it cannot be read (absent, or half made
    by an exclusive create on a file system without hard links)."""
    try:
        data = json.loads(path.read_text())
        return LockHolder(
            pid=int(data["pid"]),
            host=str(data["host"]),
            since=float(data["since"]),
            process_start=(
                float(data["process_start"]) if data.get("process_start") is not None else None
            ),
            token=str(data.get("token", "")),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _stale(holder: LockHolder) -> bool:
    """True when the holder's process is gone: on this host, its PID is not running or the
    process under it started at another time than the holder's (the PID was reused)."""
    if holder.host != socket.gethostname():
        return False  # cannot be checked from here
    if not _alive(holder.pid):
        return True
    now_start = _process_start(holder.pid)
    if now_start is None or holder.process_start is None:
        return False
    return abs(now_start - holder.process_start) > _START_SLACK


def lock_holder(folder: str | os.PathLike[str]) -> LockHolder | None:
    """The live holder of the project's lock when it is another process; None when the
    project is free, the lock is stale, or this process holds it."""
    path = Path(folder) / LOCK_FILE
    holder = _read(path)
    if holder is None:
        if path.exists() and _age(path) < _YOUNG:
            return LockHolder(pid=0, host="?", since=time.time(), process_start=None)
        return None
    with _held_guard:
        ours = _held.get(path.resolve())
    if ours is not None and ours[0] == holder.token:
        return None
    return None if _stale(holder) else holder


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return _YOUNG


def _busy(folder: Path, holder: LockHolder) -> ProjectBusyError:
    return ProjectBusyError(_busy_text(folder, holder))


def _busy_text(folder: Path, holder: LockHolder) -> str:
    path = folder / LOCK_FILE
    if holder.pid == 0:
        what = "another protorefine run is starting on it"
    else:
        what = f"another protorefine run ({holder.describe()}) is using it"
    hint = "wait for it to finish"
    if holder.host != socket.gethostname():
        hint += f" (if nothing runs on {holder.host} any more, delete {path})"
    return f"{folder}: project busy: {what}; {hint}"


def busy_message(folder: str | os.PathLike[str]) -> str | None:
    """One line saying who runs on the project in ``folder`` when another live process holds
    its lock (what a second run is refused with); None when it is free."""
    holder = lock_holder(folder)
    return None if holder is None else _busy_text(Path(folder), holder)


def _create(path: Path, record: dict) -> bool:
    """Make ``path`` holding ``record``, whole, unless it exists; True when made."""
    text = json.dumps(record, indent=2).encode()
    tmp = path.with_name(f".{path.name}.{record['token']}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # fails when the lock exists; never shows half a file
            return True
        except FileExistsError:
            return False
        except OSError as exc:  # no hard links here (some network or FAT file systems)
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(path: Path, stale: LockHolder) -> bool:
    """Move a stale lock aside and delete it; False when what was moved turned out not to be
    that lock (another process took over first, or it no longer reads), which is put back."""
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True  # gone meanwhile: try to create it
    moved = _read(aside)
    if moved is None or moved.token != stale.token:  # not the stale lock read: put it back
        with contextlib.suppress(OSError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


@contextlib.contextmanager
def project_lock(
    folder: str | os.PathLike[str], *, note: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold the lock of the project in ``folder`` (made when absent) while the block runs.

    :class:`ProjectBusyError` (one line naming the project, the holder's PID and host and
    since when) when another live process holds it; a stale lock is taken over and
    ``note`` (default: the ``protorefine`` logger) gets one line saying so. Released when
    the block ends, also on an error or KeyboardInterrupt; a folder made for the lock and
    left empty is removed again.
    """
    folder = Path(folder)
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    key = path.resolve()
    with _held_guard:
        if key in _held:  # this process holds it already (the CLI around Pipeline.run)
            token, count = _held[key]
            _held[key] = (token, count + 1)
            acquired = False
        else:
            acquired = True
    if acquired:
        token = uuid.uuid4().hex
        try:
            _acquire(folder, path, token, note or _log.warning)
        except BaseException:
            if made:
                _remove_if_empty(folder)
            raise
        with _held_guard:
            _held[key] = (token, 1)
    try:
        yield
    finally:
        with _held_guard:
            token, count = _held[key]
            if count > 1:
                _held[key] = (token, count - 1)
            else:
                del _held[key]
        if count == 1:
            holder = _read(path)
            if holder is not None and holder.token == token:
                path.unlink(missing_ok=True)
            if made:
                _remove_if_empty(folder)


def _acquire(folder: Path, path: Path, token: str, note: Callable[[str], None]) -> None:
    pid = os.getpid()
    record = {
        "pid": pid,
        "host": socket.gethostname(),
        "since": time.time(),
        "since_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "process_start": _process_start(pid),
        "token": token,
    }
    for _ in range(5):
        try:
            made = _create(path, record)
        except OSError as exc:  # a read-only folder, a full disk: the project is named
            raise ProtorefineError(
                f"{folder}: cannot write the project's lock file {LOCK_FILE} "
                f"({exc.strerror or exc}); a run needs to write to the project folder"
            ) from None
        if made:
            return
        holder = _read(path)
        if holder is None:
            if path.exists() and _age(path) < _YOUNG:
                raise _busy(folder, LockHolder(0, "?", time.time(), None))
            holder = LockHolder(0, "?", 0.0, None)  # unreadable and old: stale
        elif not _stale(holder):
            raise _busy(folder, holder)
        if _take_over(path, holder):
            if holder.pid:
                note(
                    f"{folder}: took over the lock of a run that is no longer running "
                    f"({holder.describe()})"
                )
            else:
                note(f"{folder}: removed an unreadable lock file {path.name}")
    raise _busy(folder, _read(path) or LockHolder(0, "?", time.time(), None))


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):
        folder.rmdir()  # only when empty: nothing of anyone's is removed


def holds_project_lock(
    method: Callable[Concatenate[_Runner, _P], _R],
) -> Callable[Concatenate[_Runner, _P], _R]:
    """Decorate a method of an object with a ``project`` (the pipeline) so that it runs
    holding that project's lock (:func:`project_lock`)."""

    @functools.wraps(method)
    def locked(self: _Runner, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with project_lock(self.project.folder):
            return method(self, *args, **kwargs)

    return locked
