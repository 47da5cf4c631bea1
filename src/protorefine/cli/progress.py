"""Progress on the terminal: a tqdm bar on stderr behind the library's progress callback."""

from __future__ import annotations

import sys
from collections.abc import Callable


def tqdm_progress(desc: str) -> tuple[Callable[[int, int, str], None], Callable[[], None]]:
    """A progress callback that draws a tqdm bar on stderr, and a function to close it."""
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
