"""Progress on stderr behind the library's progress callback: a tqdm bar on a terminal, plain
lines (one per tenth of the way) when stderr is a log file or a pipe, nothing with ``--quiet``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

#: How many plain lines a step of work prints at most (one per tenth, and one when done).
LINE_STEPS = 10

_quiet = False


def set_quiet(quiet: bool) -> None:
    """``--quiet``: show no progress at all (errors and the closing summary only)."""
    global _quiet
    _quiet = bool(quiet)


def is_quiet() -> bool:
    """True when ``--quiet`` was given."""
    return _quiet


def tqdm_progress(desc: str) -> tuple[Callable[[int, int, str], None], Callable[[], None]]:
    """A progress callback for the work named ``desc``, and a function to close it: a tqdm
    bar when stderr is a terminal, else :func:`line_progress`; nothing with ``--quiet``."""
    if _quiet:
        return _silent, _nothing
    if not _is_terminal():
        return line_progress(desc)
    from tqdm import tqdm  # here, not at the top: ``protorefine --help`` stays quick

    bar = tqdm(total=0, desc=desc, file=sys.stderr, leave=True, dynamic_ncols=True)

    def progress(done: int, total: int, message: str = "") -> None:
        if bar.total != total:
            bar.reset(total=total)
        bar.n = done
        if message:
            bar.set_postfix_str(message, refresh=False)
        bar.refresh()

    return progress, bar.close


def line_progress(desc: str) -> tuple[Callable[[int, int, str], None], Callable[[], None]]:
    """Progress as plain lines on stderr (``desc: 40% (4/10) message``), one each time a
    further tenth is done, and ``desc: done in 12.3 s`` when closed: a log keeps them readable
    (tqdm's carriage returns pile up into one line there)."""
    start = time.perf_counter()
    state = {"step": -1, "total": 0, "done": 0}

    def progress(done: int, total: int, message: str = "") -> None:
        if total <= 0:
            return
        if total != state["total"]:  # a new phase of the work counts from its start
            state.update(total=total, step=-1)
        step = min(LINE_STEPS, LINE_STEPS * done // total)
        state["done"] = done
        if step > state["step"]:
            state["step"] = step
            note = f" {message}" if message else ""
            _line(f"{desc}: {100 * done // total}% ({done}/{total}){note}")

    def close() -> None:
        if state["total"]:
            _line(f"{desc}: done in {time.perf_counter() - start:.1f} s")

    return progress, close


def _line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _silent(done: int, total: int, message: str = "") -> None:
    """A progress callback that shows nothing (``--quiet``)."""


def _nothing() -> None:
    """Closes nothing."""
