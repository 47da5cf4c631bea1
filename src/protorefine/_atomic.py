"""Atomic writes: write beside the target, then rename, so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from protorefine.errors import ProtorefineError

#: The name :func:`atomic_path` gives its temporary folder beside ``<target>``
#: (``tempfile.mkdtemp``'s 8 random characters between a prefix and a suffix).
_TEMP_NAME = re.compile(r"\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp")


def is_leftover(path: Path) -> bool:
    """True when ``path`` is a temporary folder :func:`atomic_path` made and a killed run
    left: its name, a real folder (not a link), holding nothing but the item it was writing."""
    m = _TEMP_NAME.fullmatch(path.name)
    if m is None or path.is_symlink() or not path.is_dir():
        return False
    return all(child.name == m["target"] for child in path.iterdir())


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], *, replace_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success move it onto ``target``.

    Works for files and for folders (e.g. a zarr store). On error the temporary
    path is removed and ``target`` is left untouched. An existing folder at ``target``
    is refused (:func:`refuse_folder`) before anything is written: only callers that
    replace a folder they made themselves (a project's stage folder, an OME-Zarr they
    wrote) pass ``replace_dir=True``.
    """
    target = Path(target)
    if not replace_dir:
        refuse_folder(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp_item = tmp / target.name
    try:
        try:
            yield tmp_item
        except OSError as exc:  # e.g. numpy's "N requested and M written" on a full disk
            if exc.filename is None:
                exc.filename = str(target)  # names no file: the CLI prints <file>: <reason>
            raise
        if not tmp_item.exists():
            raise FileNotFoundError(f"{target}: nothing was written")
        if target.is_dir() and not target.is_symlink():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp_item, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_item, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def refuse_folder(target: str | os.PathLike[str]) -> None:
    """One-line error when ``target``, where a file is to be written, is an existing folder
    (or a link to one): what is in it is not the program's to delete."""
    if Path(target).is_dir():
        raise ProtorefineError(
            f"{target}: is a folder, not a file to write; nothing was written (choose another name)"
        )


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically and return the path."""
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(target)


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically and return the path."""
    return atomic_write_bytes(target, text.encode("utf-8"))
