"""Run one library call at a time in a thread, with a progress bar, a status line and Cancel.

The widgets never compute in the Qt thread: they hand a function of a
:class:`TaskContext` to :class:`TaskRunner`, which runs it in a napari
``thread_worker``, forwards its progress to a napari progress bar and to its own
bar, and turns a click on Cancel into the library's cancel check.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from napari.qt.threading import FunctionWorker, create_worker
from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, QThreadPool, QTimer, Signal
from qtpy.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from protorefine.errors import CancelledError, ProtorefineError

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]
CancelFn = Callable[[], bool]

#: Minimum seconds between two progress signals from the worker (keeps the event loop light:
#: each one repaints the bar, the status line and napari's activity bar).
PROGRESS_INTERVAL = 0.1

#: The runner currently busy in each group (one pipeline run per viewer at a time).
_ACTIVE: weakref.WeakKeyDictionary[object, TaskRunner] = weakref.WeakKeyDictionary()
#: Cancel flags of the runs whose threads are under way (plain events: no Qt object needed).
_UNDER_WAY: set[threading.Event] = set()
#: How long :func:`stop_runs` waits for the threads, in seconds.
STOP_WAIT_S = 30.0


def stop_runs(wait_s: float = STOP_WAIT_S) -> bool:
    """Ask every run under way to stop and wait for their threads; True when all ended.

    Runs at interpreter exit (napari closed with a run or the gallery still loading): a
    worker thread still running while Python tears its Qt objects down aborts the process.
    Finished stages are kept, as with Cancel.
    """
    for event in list(_UNDER_WAY):
        event.set()
    pool = QThreadPool.globalInstance()
    return pool is None or bool(pool.waitForDone(int(wait_s * 1000)))


atexit.register(stop_runs)


def notify(level: str, message: str) -> None:
    """Show ``message`` as a napari notification of ``level`` ("info", "warning", "error")."""
    {"info": show_info, "warning": show_warning, "error": show_error}[level](message)


@dataclass
class TaskContext:
    """What a task function receives: the library's progress and cancel callbacks, and ``send``.

    ``send(obj)`` delivers ``obj`` to the runner's ``on_event`` in the Qt thread
    (e.g. one dict per training round for a live plot).
    """

    progress: ProgressFn
    cancel: CancelFn
    send: Callable[[object], None]


@dataclass
class _Failure:
    """An exception raised by a task, carried back to the Qt thread as a value."""

    exc: BaseException


def _guarded(func: Callable[[TaskContext], Any], ctx: TaskContext) -> Any:
    """Run ``func(ctx)`` in the worker, returning a raised exception as :class:`_Failure`."""
    try:
        return func(ctx)
    except Exception as exc:
        return _Failure(exc)


class _Bridge(QObject):
    """Carries worker-thread events into the Qt thread (queued signal connections)."""

    progressed = Signal(int, int, str)
    sent = Signal(object)


class TaskRunner(QWidget):
    """A status line, a progress bar and a Cancel button that drive one worker thread at a time.

    ``start(title, func, on_done=...)`` runs ``func(ctx)`` in a thread; when it
    returns, ``on_done(result)`` runs in the Qt thread. When ``on_done`` is a
    generator it is run one ``yield`` per event-loop turn (e.g. one new layer per
    turn), and the run counts as finished when it is exhausted. A :class:`ProtorefineError`
    becomes an error notification in plain words, a cancel becomes an info
    notification; in both cases ``on_done`` is not called.
    """

    #: Emitted when the worker thread has ended (before its results are shown): outcome.
    computed = Signal(str)
    #: Emitted in the Qt thread when a task ends, results shown: ``(outcome, message)`` with
    #: outcome "done", "cancelled" or "error".
    finished = Signal(str, str)

    def __init__(self, group: object | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._group_ref = weakref.ref(group) if group is not None else None
        self._bridge = _Bridge()
        self._bridge.progressed.connect(self._on_progress)
        self._bridge.sent.connect(self._on_sent)
        self._cancel_event = threading.Event()
        self._worker: FunctionWorker | None = None
        self._busy = False
        self._pending: tuple[Callable[[Any], Any] | None, Any] | None = None
        self._steps: Iterator | None = None
        self._pbar: napari_progress | None = None
        self._on_event: Callable[[object], None] | None = None
        self._title = ""
        self.last_outcome: str = ""
        self.last_message: str = ""
        self.cancel_requested_at: float | None = None
        self.finished_at: float | None = None

        self.status = QLabel("Idle")
        self.status.setWordWrap(True)
        self.bar = QProgressBar()
        self.bar.setRange(0, 1)
        self.bar.setValue(0)
        self.bar.setTextVisible(True)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the running step; finished steps are kept")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel)

        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.bar, 1)
        row.addWidget(self.cancel_button)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(row)
        lay.addWidget(self.status)

    @property
    def running(self) -> bool:
        """True while a task is in progress (computing or showing its results)."""
        return self._busy

    def start(
        self,
        title: str,
        func: Callable[[TaskContext], Any],
        *,
        on_done: Callable[[Any], Any] | None = None,
        on_event: Callable[[object], None] | None = None,
    ) -> bool:
        """Run ``func(ctx)`` in a thread; return False (and say so) when a task is already running."""
        if self.running:
            notify("warning", f"'{self._title}' is still running: wait for it or press Cancel.")
            return False
        group = self._group_ref() if self._group_ref is not None else None
        other = _ACTIVE.get(group) if group is not None else None
        if other is not None and other.running:
            notify(
                "warning", f"'{other._title}' is still running: wait for it or press its Cancel."
            )
            return False
        if group is not None:
            _ACTIVE[group] = self
        self._title = title
        self._on_event = on_event
        self._cancel_event.clear()
        self.cancel_requested_at = None
        self.finished_at = None
        self.last_outcome = ""
        self.last_message = ""
        bridge = self._bridge
        cancel_event = self._cancel_event
        last_emit = [0.0]

        def progress(done: int, total: int, message: str) -> None:
            now = time.monotonic()
            if done >= total or now - last_emit[0] >= PROGRESS_INTERVAL:
                last_emit[0] = now
                bridge.progressed.emit(int(done), int(total), str(message))

        ctx = TaskContext(progress=progress, cancel=cancel_event.is_set, send=bridge.sent.emit)
        # exceptions come back as values: napari would otherwise show every error,
        # a cancel included, as a traceback notification
        worker = create_worker(_guarded, func, ctx, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(lambda result: self._on_returned(result, on_done))
        worker.finished.connect(self._on_finished)
        self._worker = worker
        self._busy = True
        self._pending = None
        self._pbar = napari_progress(total=0, desc=title)
        self.bar.setRange(0, 0)
        self.status.setText(f"{title}…")
        self.cancel_button.setEnabled(True)
        _UNDER_WAY.add(cancel_event)
        worker.start()
        return True

    def cancel(self) -> None:
        """Ask the running task to stop; the library raises CancelledError at its next check."""
        if self._worker is None or self._cancel_event.is_set():
            return
        self.cancel_requested_at = time.monotonic()
        self._cancel_event.set()
        self.cancel_button.setEnabled(False)
        self.status.setText(f"{self._title}: cancelling…")

    def _on_progress(self, done: int, total: int, message: str) -> None:
        if self._worker is None:
            return
        total = max(int(total), 0)
        done = min(max(int(done), 0), total) if total else 0
        self.bar.setRange(0, total)
        self.bar.setValue(done)
        text = f"{self._title}: {message}" if message else self._title
        self.status.setText(text)
        pbar = self._pbar
        if pbar is not None:
            if pbar.total != total:
                pbar.total = total
            if done != pbar.n:
                pbar.update(done - pbar.n)
            if message:
                pbar.set_description(f"{self._title}: {message}")

    def _on_sent(self, obj: object) -> None:
        if self._on_event is not None and self._worker is not None:
            self._on_event(obj)

    def _on_returned(self, result: Any, on_done: Callable[[Any], Any] | None) -> None:
        if isinstance(result, _Failure):
            self._on_errored(result.exc)
            return
        self.last_outcome = "done"
        self.last_message = f"{self._title}: done"
        self._pending = (on_done, result)

    def _on_errored(self, exc: BaseException) -> None:
        if isinstance(exc, CancelledError):
            self.last_outcome = "cancelled"
            self.last_message = f"{self._title}: cancelled; finished steps are kept."
            notify("info", self.last_message)
        elif isinstance(exc, ProtorefineError):
            self._fail(str(exc))
        else:
            self._fail(f"{self._title} failed: {type(exc).__name__}: {exc}", exc)

    def _fail(self, message: str, exc: BaseException | None = None) -> None:
        """Record and show an error in plain words (a traceback goes to the log for bugs)."""
        self.last_outcome, self.last_message = "error", message
        if exc is not None:
            log.error("%s\n%s", message, "".join(traceback.format_exception(exc)))
        notify("error", message)

    def _on_finished(self) -> None:
        """The worker thread ended: show its result (step by step when on_done yields), then finish."""
        self.finished_at = time.monotonic()
        _UNDER_WAY.discard(self._cancel_event)
        self._worker = None
        self._on_event = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.cancel_button.setEnabled(False)
        self.computed.emit(self.last_outcome or "error")
        pending, self._pending = self._pending, None
        if self.last_outcome != "done" or pending is None or pending[0] is None:
            self._complete()
            return
        on_done, result = pending
        assert on_done is not None  # checked above
        self.status.setText(f"{self._title}: showing the results…")
        try:
            steps = on_done(result)
        except ProtorefineError as exc:
            self._fail(str(exc))
            self._complete()
            return
        if isinstance(steps, Iterator):
            self._steps = steps
            QTimer.singleShot(0, self._step)
        else:
            self._complete()

    def _step(self) -> None:
        """Run the display generator to its next ``yield`` (one layer at a time keeps the loop live)."""
        steps = self._steps
        if steps is None:
            return
        try:
            next(steps)
        except StopIteration:
            self._steps = None
            self._complete()
            return
        except ProtorefineError as exc:
            self._steps = None
            self._fail(str(exc))
            self._complete()
            return
        except Exception as exc:
            self._steps = None
            self._fail(
                f"{self._title}: showing the results failed: {type(exc).__name__}: {exc}", exc
            )
            self._complete()
            return
        QTimer.singleShot(0, self._step)

    def _complete(self) -> None:
        """Release the run lock, reset the bar and Cancel, and emit ``finished``."""
        self._busy = False
        group = self._group_ref() if self._group_ref is not None else None
        if group is not None and _ACTIVE.get(group) is self:
            del _ACTIVE[group]
        self.bar.setRange(0, 1)
        self.bar.setValue(1 if self.last_outcome == "done" else 0)
        self.status.setText(self.last_message or f"{self._title}: stopped")
        self.finished.emit(self.last_outcome or "error", self.last_message)


class LatestOnly(QObject):
    """Runs quick read-only look-ups (measuring outlines, reading every slide's status) in one
    background thread and hands only the newest one's result to ``deliver`` in the Qt thread:
    an answer overtaken by a newer request (another slide, another edit) is dropped.

    For courtesy figures, not for runs: no progress bar, no Cancel; a look-up that fails
    logs and delivers nothing.
    """

    _ready = Signal(int)

    def __init__(self, deliver: Callable[[Any], None], name: str, parent: QObject) -> None:
        super().__init__(parent)  # goes with its widget: no answer reaches a closed pane
        import concurrent.futures as cf

        self._pool = cf.ThreadPoolExecutor(1, thread_name_prefix=f"protorefine-{name}")
        self._deliver = deliver
        self._request = 0
        self._results: dict[int, Any] = {}
        self._ready.connect(self._on_ready)

    def submit(self, func: Callable[..., Any], *args: Any) -> None:
        """Run ``func(*args)`` after the look-ups queued before it; earlier answers are dropped."""
        self._request += 1
        request = self._request

        def run() -> None:
            try:
                self._results[request] = func(*args)
            except Exception:  # noqa: BLE001 - a courtesy figure: the panes report real problems
                log.exception("background look-up failed")
                return
            self._ready.emit(request)

        self._pool.submit(run)

    def drop_pending(self) -> None:
        """Forget the look-ups under way (their answers will not be delivered)."""
        self._request += 1

    def _on_ready(self, request: int) -> None:
        result = self._results.pop(request, None)
        if request == self._request:
            self._deliver(result)
