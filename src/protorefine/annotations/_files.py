"""Reading annotation files with one-line errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

from protorefine.errors import ProtorefineError


def check_input_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path; ProtorefineError if it is missing or a folder."""
    p = Path(path)
    if not p.exists():
        raise ProtorefineError(f"{p}: file not found")
    if p.is_dir():
        raise ProtorefineError(f"{p}: is a folder, expected an annotation file")
    return p


def read_input_bytes(path: str | os.PathLike[str]) -> bytes:
    """The bytes of an annotation file; ProtorefineError if missing, a folder or unreadable."""
    p = check_input_file(path)
    try:
        return p.read_bytes()
    except OSError as e:
        raise ProtorefineError(f"{p}: cannot read ({e.strerror or e})") from e


def read_input_text(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of an annotation file; ProtorefineError if empty or not text."""
    raw = read_input_bytes(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ProtorefineError(
            f"{path}: not a UTF-8 text file (byte {e.start} cannot be decoded)"
        ) from e
    if not text.strip():
        raise ProtorefineError(f"{path}: empty file, no annotations in it")
    return text
