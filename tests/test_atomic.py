"""``protorefine._atomic``: a file never replaces a folder; a folder the program made may be replaced."""

from __future__ import annotations

from pathlib import Path

import pytest

from protorefine._atomic import atomic_path, atomic_write_bytes, atomic_write_text
from protorefine.errors import ProtorefineError


def _folder_with_a_file(path: Path) -> Path:
    path.mkdir()
    (path / "keep.txt").write_text("the user's work")
    return path


@pytest.mark.parametrize("write", [atomic_write_text, atomic_write_bytes])
def test_a_file_never_replaces_an_existing_folder(tmp_path: Path, write) -> None:
    folder = _folder_with_a_file(tmp_path / "result.json")
    data = "{}" if write is atomic_write_text else b"{}"
    with pytest.raises(ProtorefineError, match=r"result\.json: .*folder") as exc:
        write(folder, data)
    assert "\n" not in str(exc.value)
    assert (folder / "keep.txt").read_text() == "the user's work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]  # no temporary left


def test_atomic_path_refuses_a_folder_before_anything_is_written(tmp_path: Path) -> None:
    folder = _folder_with_a_file(tmp_path / "store.zarr")
    ran = []
    with pytest.raises(ProtorefineError, match="store.zarr"):
        with atomic_path(folder) as tmp:
            ran.append(tmp)
    assert ran == []  # refused before the caller wrote anything
    assert (folder / "keep.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.zarr"]


def test_a_symlink_to_a_folder_is_refused_too(tmp_path: Path) -> None:
    folder = _folder_with_a_file(tmp_path / "real")
    link = tmp_path / "link.json"
    link.symlink_to(folder)
    with pytest.raises(ProtorefineError, match="link.json"):
        atomic_write_text(link, "{}")
    assert link.is_symlink() and (folder / "keep.txt").exists()


def test_replace_dir_replaces_a_folder_the_program_made(tmp_path: Path) -> None:
    target = tmp_path / "stage"
    for content in ("first", "second"):
        with atomic_path(target, replace_dir=True) as tmp:
            tmp.mkdir()
            (tmp / "done.json").write_text(content)
    assert (target / "done.json").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage"]


def test_files_are_still_replaced(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_write_error_without_a_file_name_gets_the_target(tmp_path: Path) -> None:
    """numpy's "419840 requested and 261088 written" on a full disk names no file: the
    target is named, as the CLI prints ``<file>: <reason>``."""
    target = tmp_path / "features.npy"
    with pytest.raises(OSError) as info:
        with atomic_path(target):
            raise OSError("419840 requested and 261088 written")
    assert info.value.filename == str(target)
    assert not target.exists()
