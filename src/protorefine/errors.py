"""User-facing errors: one line that names the file or value and says what is wrong."""

from __future__ import annotations


class ProtorefineError(Exception):
    """An error caused by the user's input, shown as one line (no traceback).

    The message must name the offending file or value and say what is wrong,
    e.g. ``"broken.svs: not a TIFF file (bad header)"``.
    """


class CancelledError(ProtorefineError):
    """A long-running stage stopped because its cancel check returned True."""
