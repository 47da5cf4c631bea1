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
