"""kill -9 a real ``protorefine refine`` run at 20 random points (fixed seed) and check the
project after each kill; prints the result as JSON (recorded in docs/reliability.md).

    python benchmarks/kill_test.py [--kills 20] [--seed 19] [--size 512] [--work /tmp/kill-test]

The checks are those of tests/test_kill.py (which kills 3 times): after each kill the
project opens and what it says is finished loads, the next run resumes (no finished stage
is lost), no temp folder is left once a run finishes, and every finished run's outline
equals the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from kill_run import SETTINGS, kill_run  # noqa: E402
from refine_synth import write_slide_case  # noqa: E402

#: File this script leaves in its --work folder: only in such a folder are the script's
#: own subfolders (:data:`MADE`) removed by the next run.
MARK = ".protorefine-kill-test"
#: What a run makes in its --work folder (and the next run removes): the slide case, the runs.
MADE = ("case", "runs")


def prepare_work(work: Path) -> None:
    """Make ``work`` ready for a run: a new or empty folder gets :data:`MARK`; in a marked
    one, only the subfolders an earlier run made (:data:`MADE`) are removed; any other
    folder (not empty, not marked) is refused in one line. Nothing else is deleted."""
    if work.exists() and not work.is_dir():
        raise SystemExit(f"--work {work}: not a folder; give a folder")
    mark = work / MARK
    if work.exists() and any(work.iterdir()) and not mark.exists():
        raise SystemExit(
            f"--work {work}: not empty and not made by this script; give another folder"
        )
    for name in MADE:
        made = work / name
        if made.is_symlink():  # this script never makes links: not its own to remove
            raise SystemExit(f"--work {work}: {name} is a link, not a folder this script made")
        if made.is_dir():
            shutil.rmtree(made)
    work.mkdir(parents=True, exist_ok=True)
    mark.touch()


def main(argv: list[str] | None = None) -> int:
    """Run the kill test and print its result."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=19)
    ap.add_argument("--size", type=int, default=512, help="side of the synthetic slide in px")
    ap.add_argument(
        "--work",
        default="/tmp/kill-test",
        help="folder for the runs (emptied when this script made it)",
    )
    args = ap.parse_args(argv)
    work = Path(args.work)
    prepare_work(work)
    t0 = time.perf_counter()
    case = write_slide_case(work / "case", size=args.size)
    result = kill_run(
        case["slide"], case["coarse"], work / "runs", kills=args.kills, seed=args.seed
    )
    result["settings"] = " ".join(SETTINGS)
    result["slide_px"] = args.size
    result["total_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result, indent=2))
    return 0 if result["corrupt"] == 0 and result["same_outline"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
