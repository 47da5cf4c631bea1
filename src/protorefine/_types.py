"""Callback types every long-running stage takes: progress reports and a cancel check."""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(done, total, message)``: called as work advances.
Progress = Callable[[int, int, str], None]
#: ``cancel() -> bool``: polled between units of work; True stops with CancelledError.
Cancel = Callable[[], bool]
