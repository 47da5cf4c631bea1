"""A full disk while the classifier's checkpoint is written: one line naming the file (torch's
own writer said "[enforce fail at inline_container.cc] unexpected pos" in a traceback)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from protorefine.cli import main
from protorefine.refine.classifier import PatchHead, load_checkpoint, save_checkpoint
from refine_synth import write_slide_case

FAST = ["--patch-size", "64", "--encoder", "colour-texture", "--device", "cpu"]

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")


def _fill_disk_for(monkeypatch, name: str) -> None:
    """``fsync`` of a file called ``name`` fails as on a full disk (the kernel reports a
    delayed ENOSPC there); every other file is written as usual."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(name):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_a_checkpoint_on_a_full_disk_is_an_oserror_naming_it(tmp_path, monkeypatch):
    head = PatchHead(8, 4, torch.zeros(8, dtype=torch.long))
    target = tmp_path / "model.pt"
    save_checkpoint(head, target)
    before = target.read_bytes()
    _fill_disk_for(monkeypatch, "model.pt")
    with pytest.raises(OSError) as info:
        save_checkpoint(head, target)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    assert target.read_bytes() == before  # the earlier checkpoint is whole
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left
    monkeypatch.undo()
    assert isinstance(load_checkpoint(target), PatchHead)


@pytest.mark.slow
def test_refine_on_a_full_disk_at_the_checkpoint_is_one_line_then_resumes(
    tmp_path, monkeypatch, capsys
):
    case = write_slide_case(tmp_path / "case", size=1024)
    args = ["refine", str(case["slide"]), "--coarse", str(case["coarse"])]
    args += ["--out", str(tmp_path / "o"), *FAST]
    _fill_disk_for(monkeypatch, "model.pt")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (line,) = [x for x in err.splitlines() if x.startswith("protorefine: error:")]
    assert line.endswith("model.pt: No space left on device")
    assert "/stages/" in line
    monkeypatch.undo()  # space freed: the rerun resumes and finishes
    assert main(args) == 0
    assert (tmp_path / "o" / "project" / "stages" / "classifier" / "model.pt").is_file()
