"""kill -9 a real ``protorefine refine`` run at random points and check the project after
each kill (used by tests/test_kill.py and benchmarks/kill_test.py)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from protorefine.refine.config import STAGE_ORDER

#: A real run, small: the CLI tests' settings on a small slide (pixel stage included).
SETTINGS = ["--patch-size", "64", "--encoder", "colour-texture", "--device", "cpu"]


def refine_cmd(slide: Path, coarse: Path, out: Path) -> list[str]:
    """``protorefine refine`` as a user runs it, its project in ``out/project``."""
    cli = [sys.executable, "-m", "protorefine.cli", "refine", str(slide)]
    return [*cli, "--coarse", str(coarse), "--out", str(out), *SETTINGS]


#: A progress line of a pipeline stage (the run has started its work).
STAGE_LINE = re.compile(rf"^({'|'.join(STAGE_ORDER)}): ", re.M)


def _run(
    cmd: list[str], log: Path, kill_at: float | None = None, *, after_start: bool = False
) -> tuple[int, str, float | None]:
    """Run ``cmd``; SIGKILL it ``kill_at`` s after it began (or, with ``after_start``, after
    its first stage progress line). Returns its exit status, the stage of its last progress
    line ("starting" before any) and when its first stage line came (s after the start)."""
    this = log.with_suffix(".last")
    t0 = time.perf_counter()
    first: float | None = None
    deadline = None if kill_at is None or after_start else t0 + kill_at
    with this.open("wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=fh, start_new_session=True)
        while (rc := proc.poll()) is None:
            now = time.perf_counter()
            if first is None and STAGE_LINE.search(_text(this)):
                first = now - t0
                if after_start and kill_at is not None:
                    deadline = now + kill_at
            if deadline is not None and now >= deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
                break
            time.sleep(0.05)
    text = _text(this)
    with log.open("a") as fh:
        fh.write(text + f"[exit {rc}]\n")
    stages = STAGE_LINE.findall(text)
    return rc, stages[-1] if stages else "starting", first


def _text(path: Path) -> str:
    return path.read_text(errors="replace").replace("\r", "\n")


def check_project(folder: Path) -> tuple[set[str], list[str]]:
    """Open the project as a user would and load what it says is finished; returns the
    finished stages and the problems found (a corrupt project has some)."""
    from protorefine.errors import ProtorefineError
    from protorefine.project import Project
    from protorefine.project.pipeline import Pipeline

    if not folder.exists():
        return set(), []  # killed before the project was made
    problems: list[str] = []
    try:
        project = Project.open(folder)
        done = {s for s in Pipeline.STAGES if project.stage_done(s)}
        for s in project.slides:
            if "grid" in done:
                project.grid(s.id)
            if "output" in done:
                project.result_grid(s.id, "refined")
                project.refined_annotations(s.id)
            project.coarse(s.id)
    except (ProtorefineError, OSError, ValueError) as exc:
        return set(), [f"{type(exc).__name__}: {exc}"]
    return done, problems


def outline(path: Path) -> list:
    """The refined outline's features as written, less the random id each feature gets."""
    features = json.loads(path.read_text())["features"]
    return [{k: v for k, v in f.items() if k != "id"} for f in features]


def leftovers(folder: Path) -> list[str]:
    """Temp folders a killed run left in the project's stages (a finished rerun removes them)."""
    stages = folder / "stages"
    return sorted(p.name for p in stages.glob(".*.tmp")) if stages.is_dir() else []


def kill_run(slide: Path, coarse: Path, work: Path, *, kills: int = 20, seed: int = 19) -> dict:
    """An uninterrupted run, then runs killed at random points (``seed``) and resumed until
    ``kills`` kills landed: a quarter at a random moment of start-up (Python, torch, the
    project), the rest at a random moment of the stages' work. A run that finishes before
    its kill starts the next one afresh, so the kills fall all along a run. After each kill
    the project is checked; each finished run's outline is compared with the uninterrupted
    run's."""
    work.mkdir(parents=True, exist_ok=True)
    log = work / "runs.log"
    t0 = time.perf_counter()
    rc, _, startup = _run(refine_cmd(slide, coarse, work / "reference"), log)
    full = time.perf_counter() - t0
    if rc != 0 or startup is None:
        raise RuntimeError(f"the uninterrupted run failed ({rc}); see {log}")
    reference = outline(work / "reference" / f"{slide.stem}.geojson")
    rng = random.Random(seed)
    out = work / "killed"
    records: list[dict] = []
    problems: list[str] = []
    corrupt, finished, different = 0, 0, 0
    previous: set[str] = set()
    left: list[str] = []
    while len(records) < kills:
        in_startup = rng.random() < 0.25
        delay = rng.uniform(0.2, startup) if in_startup else rng.uniform(0.0, full - startup)
        cmd = refine_cmd(slide, coarse, out)
        rc, doing, _ = _run(cmd, log, delay, after_start=not in_startup)
        if rc == 0:  # finished before the kill: compare, then start afresh
            finished += 1
            different += outline(out / f"{slide.stem}.geojson") != reference
            left += leftovers(out / "project")
            shutil.rmtree(out)
            previous = set()
            continue
        done, found = check_project(out / "project")
        if not done >= previous:
            found.append(f"finished stages lost: {sorted(previous - done)}")
        corrupt += bool(found)
        when = f"{delay:.1f} s after {'the start' if in_startup else 'its first stage line'}"
        problems += [f"kill {len(records) + 1}, {when}: {p}" for p in found]
        records.append({"when": when, "killed_in": doing, "stages_done": sorted(done)})
        previous = done if not found else previous
    rc, _, _ = _run(refine_cmd(slide, coarse, out), log)
    if rc != 0:
        problems.append(f"the last rerun failed ({rc}); see {log}")
        corrupt += 1
    else:
        finished += 1
        different += outline(out / f"{slide.stem}.geojson") != reference
        left += leftovers(out / "project")
    return {
        "kills": len(records),
        "seed": seed,
        "uninterrupted_s": round(full, 1),
        "startup_s": round(startup, 1),
        "corrupt": corrupt,
        "problems": problems,
        "finished_runs": finished,
        "same_outline": different == 0,
        "leftovers": left,
        "kills_by_stage": _by_stage(records),
        "runs": records,
    }


def _by_stage(records: list[dict]) -> dict[str, int]:
    """How many kills fell in each stage of a run ("starting": before its first stage)."""
    counts: dict[str, int] = {}
    for r in records:
        counts[r["killed_in"]] = counts.get(r["killed_in"], 0) + 1
    return counts
