"""One run at a time on a project: a second process is refused in one line, a stale lock (its
run killed) is taken over, and the lock goes when a run ends, also on an error or Ctrl-C."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protorefine.cli import main
from protorefine.errors import ProtorefineError
from protorefine.project import Project
from protorefine.project.lock import (
    LOCK_FILE,
    ProjectBusyError,
    _process_start,
    busy_message,
    project_lock,
)
from protorefine.project.pipeline import Pipeline
from refine_synth import write_slide_case

FAST = ["--patch-size", "64", "--encoder", "colour-texture", "--device", "cpu"]
#: A second process that holds a project's lock until its stdin closes.
HOLDER = """
import sys
from protorefine.project.lock import project_lock
with project_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""
BUSY_CHECK = "import sys; from protorefine.project.lock import busy_message; print(busy_message(sys.argv[1]))"


@pytest.fixture
def holder(tmp_path):
    """Start a process holding the lock of a folder; yields a function taking the folder."""
    procs: list[subprocess.Popen] = []

    def hold(folder: Path) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        return proc

    yield hold
    for proc in procs:
        proc.communicate(timeout=60)  # closes stdin: the holder lets go and exits


def _error_lines(capsys) -> tuple[list[str], str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("protorefine: error:")], err


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(folder: Path, pid: int, *, host: str | None = None, start: float | None) -> None:
    record = {
        "pid": pid,
        "host": host or socket.gethostname(),
        "since": time.time() - 60,
        "process_start": start,
        "token": "left-by-a-killed-run",
    }
    (folder / LOCK_FILE).write_text(json.dumps(record))


def test_a_second_process_is_refused_in_one_line_naming_the_project_pid_and_since(
    tmp_path, holder, capsys
):
    folder = tmp_path / "proj"
    Project.create(folder)
    config_before = (folder / "config.json").read_bytes()
    proc = holder(folder)

    assert main(["export", str(folder), "--out", str(tmp_path / "o")]) == 2
    (line,), _ = _error_lines(capsys)
    assert f"{folder}: project busy" in line
    assert f"PID {proc.pid} on {socket.gethostname()}, since " in line
    assert not (tmp_path / "o").exists()

    case = write_slide_case(tmp_path / "case", size=256)
    args = ["refine", str(case["slide"]), "--coarse", str(case["coarse"])]
    t0 = time.perf_counter()
    assert main([*args, "--out", str(tmp_path / "o2"), "--project", str(folder), *FAST]) == 2
    assert time.perf_counter() - t0 < 10  # at once, not after a run
    (line,), _ = _error_lines(capsys)
    assert f"{folder}: project busy" in line and f"PID {proc.pid}" in line
    assert (folder / "config.json").read_bytes() == config_before  # the holder's settings kept
    assert json.loads((folder / "slides.json").read_text()) == []

    with pytest.raises(ProjectBusyError):  # the library's own runs too (napari, benchmarks)
        Pipeline(Project.open(folder)).run()

    proc.communicate(timeout=60)
    assert not (folder / LOCK_FILE).exists()  # released when the holder ends
    assert busy_message(folder) is None


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_one_note(tmp_path, capsys):
    folder = tmp_path / "proj"
    Project.create(folder)
    pid = _dead_pid()
    _write_lock(folder, pid, start=time.time() - 100)
    assert busy_message(folder) is None

    notes: list[str] = []
    with project_lock(folder, note=notes.append):
        mine = json.loads((folder / LOCK_FILE).read_text())
        assert mine["pid"] == os.getpid() and mine["host"] == socket.gethostname()
    assert len(notes) == 1
    assert f"took over the lock of a run that is no longer running (PID {pid} on " in notes[0]
    assert not (folder / LOCK_FILE).exists()

    _write_lock(folder, pid, start=None)  # the CLI says so on stderr in one line, then runs
    assert main(["export", str(folder), "--out", str(tmp_path / "o")]) == 2
    (line,), err = _error_lines(capsys)
    assert "no slide has a refined outline yet" in line  # got past the lock
    assert f"took over the lock of a run that is no longer running (PID {pid} " in err
    assert not (folder / LOCK_FILE).exists()


def test_a_lock_whose_pid_was_reused_is_stale(tmp_path):
    """The PID is alive (here: this very process) but started after the lock's holder did."""
    folder = tmp_path / "proj"
    folder.mkdir()
    start = _process_start(os.getpid())
    assert start is not None
    _write_lock(folder, os.getpid(), start=start - 1000)
    assert busy_message(folder) is None
    notes: list[str] = []
    with project_lock(folder, note=notes.append):
        pass
    assert len(notes) == 1 and f"PID {os.getpid()}" in notes[0]


def test_a_lock_held_on_another_host_counts_as_live_and_says_how_to_clear_it(tmp_path):
    folder = tmp_path / "proj"
    folder.mkdir()
    _write_lock(folder, _dead_pid(), host="other-host.example", start=None)
    message = busy_message(folder)
    assert message is not None and "other-host.example" in message
    assert f"delete {folder / LOCK_FILE}" in message
    with pytest.raises(ProjectBusyError, match="project busy"):
        with project_lock(folder):
            pass
    assert (folder / LOCK_FILE).exists()  # not ours to remove


def test_the_lock_is_released_after_an_error_and_ctrl_c(tmp_path):
    folder = tmp_path / "proj"
    for exc in (ProtorefineError("bad input"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with project_lock(folder):
                assert (folder / LOCK_FILE).exists()
                raise exc
        assert not (folder / LOCK_FILE).exists()
    assert not folder.exists()  # made for the lock and left empty: removed again


def test_the_lock_is_reentrant_in_one_process(tmp_path):
    folder = tmp_path / "proj"
    with project_lock(folder):
        with project_lock(folder):  # refine's run holds it around Pipeline.run, which takes it
            pass
        assert (folder / LOCK_FILE).exists()  # still held by the outer block
    assert not folder.exists()


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_slide_case(tmp_path_factory.mktemp("case"), size=1024)


@pytest.mark.slow
def test_a_run_holds_the_lock_and_releases_it_after_success_error_and_ctrl_c(
    case, tmp_path, monkeypatch, capsys
):
    """While ``protorefine refine`` runs, another process sees the project busy; the lock is
    gone after the run ends, however it ends."""
    project = tmp_path / "p"
    args = ["refine", str(case["slide"]), "--coarse", str(case["coarse"]), "--out"]
    args += [str(tmp_path / "o"), "--project", str(project), *FAST]
    seen: list[str] = []
    run_stage = Pipeline._run_stage

    def watched(self, name, *a, **kw):
        if name == "prototypes":  # mid-run: what a second process sees
            out = subprocess.run(
                [sys.executable, "-c", BUSY_CHECK, str(project)],
                capture_output=True,
                text=True,
                check=True,
            )
            seen.append(out.stdout.strip())
        return run_stage(self, name, *a, **kw)

    monkeypatch.setattr(Pipeline, "_run_stage", watched)
    assert main(args) == 0
    assert len(seen) == 1 and f"PID {os.getpid()}" in seen[0] and "project busy" in seen[0]
    assert not (project / LOCK_FILE).exists()

    for exc, rc in ((ProtorefineError("the disk went away"), 2), (KeyboardInterrupt(), 130)):

        def failing(self, name, *a, exc=exc, **kw):
            raise exc

        monkeypatch.setattr(Pipeline, "_run_stage", failing)
        assert main([*args, "--threshold", "0.5"]) == rc  # the output stage must rerun
        assert "Traceback" not in capsys.readouterr().err
        assert not (project / LOCK_FILE).exists()


def test_a_running_writes_temp_folders_are_not_taken_for_leftovers(tmp_path, holder):
    """What a killed run leaves (``stages/.grid.<8>.tmp/grid``) looks like what a running
    one is writing: only removed when no other process holds the lock."""
    folder = tmp_path / "proj"
    project = Project.create(folder)
    writing = folder / "stages" / ".grid.abcd1234.tmp" / "grid"
    writing.mkdir(parents=True)
    proc = holder(folder)
    assert project.remove_leftovers() == [] and writing.is_dir()
    proc.communicate(timeout=60)
    assert project.remove_leftovers() == [writing.parent] and not writing.parent.exists()


def test_a_project_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    folder = tmp_path / "proj"
    folder.mkdir()

    def read_only(_fd: int) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "fsync", read_only)
    with pytest.raises(ProtorefineError, match=r"proj: cannot write the project's lock"):
        with project_lock(folder):
            pass
    monkeypatch.undo()
    assert list(folder.iterdir()) == []  # no temp file left behind
