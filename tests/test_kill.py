"""kill -9 at random points of a real ``protorefine refine`` run: after every kill the
project opens, what it says is finished loads, a rerun resumes (never loses a finished
stage), and at the end the outline equals an uninterrupted run's.

The full run (20 kills) is ``benchmarks/kill_test.py``, whose result is recorded in
``docs/reliability.md``; the test here kills 3 times.
"""

from __future__ import annotations

import pytest

from kill_run import kill_run
from refine_synth import write_slide_case

pytestmark = pytest.mark.slow


def test_kill_9_at_random_points_never_damages_the_project(tmp_path) -> None:
    case = write_slide_case(tmp_path / "case", size=512)
    result = kill_run(case["slide"], case["coarse"], tmp_path / "work", kills=3, seed=19)
    assert result["kills"] == 3
    assert result["corrupt"] == 0, result["problems"]
    assert result["same_outline"], "the resumed run's outline differs from the uninterrupted one"
    assert result["leftovers"] == [], "a rerun left a killed run's temp folders behind"


def test_the_kill_benchmark_removes_only_what_it_made(tmp_path) -> None:
    """``benchmarks/kill_test.py --work DIR``: a marked folder loses only the script's own
    subfolders (the user's files beside them stay); an unmarked non-empty folder, a file or
    a link where the script's folder would be is refused; nothing is deleted then."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from kill_test import MARK, prepare_work

    work = tmp_path / "work"
    prepare_work(work)  # new: made and marked
    assert (work / MARK).exists()
    for name in ("case", "runs"):  # what a run made
        (work / name / "x").mkdir(parents=True)
    (work / "notes.txt").write_text("mine")  # the user's, beside them
    prepare_work(work)
    assert not (work / "case").exists() and not (work / "runs").exists()
    assert (work / "notes.txt").read_text() == "mine"

    other = tmp_path / "other"
    other.mkdir()
    (other / "runs").mkdir()
    (other / "keep.txt").write_text("keep")
    with pytest.raises(SystemExit, match="not empty and not made by this script"):
        prepare_work(other)
    assert (other / "runs").is_dir() and (other / "keep.txt").exists()

    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "data").write_text("data")
    (work / "runs").symlink_to(target)
    with pytest.raises(SystemExit, match="runs is a link"):
        prepare_work(work)
    assert (target / "data").exists()

    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SystemExit, match="not a folder"):
        prepare_work(afile)
    assert afile.read_text() == "x"
