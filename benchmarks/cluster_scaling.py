"""Scaling of ``refine --scheduler``: a cohort refined on a LocalCluster of 1, 2 and 4 worker
processes, against the one-machine run.

Usage: ``python benchmarks/cluster_scaling.py [--slides 8] [--size 768] [--workers 1 2 4]
[--encoder efficientnet-lite0] [--pixel-stage] [--out FILE]``

Per run: wall seconds, the seconds spent in the per-slide work on the workers and in the
central (client) stages, their share, and the median seconds of one slide's features task;
then, from those figures, an estimate for 200 slides on 16 workers (per-slide work divided
over the workers, the central stages scaled with the number of slides). Each run starts
from a new project; the outlines of every cluster run are compared with the one-machine
run's (pixel Dice). On a 2-core machine more than 2 workers cannot be faster: say so with
the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import imageio.v3 as iio  # noqa: E402
import numpy as np  # noqa: E402

from protorefine.annotations import rasterize, write_geojson  # noqa: E402
from protorefine.project import Project  # noqa: E402
from protorefine.project.cluster import ClusterPipeline, connect  # noqa: E402
from protorefine.project.pipeline import Pipeline  # noqa: E402
from protorefine.refine import RefineConfig  # noqa: E402
from protorefine.synthetic import simulate_coarse, synthetic_slide  # noqa: E402


def make_cohort(folder: Path, n: int, size: int) -> list[tuple[Path, Path]]:
    """``n`` synthetic slides (PNG) with their simulated coarse outlines."""
    pairs = []
    for i in range(n):
        slide, truth, ds = synthetic_slide((size, size), seed=10 + i)
        png, coarse = folder / f"s{i}.png", folder / f"s{i}.geojson"
        iio.imwrite(png, np.asarray(slide.levels[0]))
        write_geojson(simulate_coarse(truth, ds, seed=10 + i), coarse)
        pairs.append((png, coarse))
    return pairs


def new_project(folder: Path, pairs, config: RefineConfig) -> Project:
    from protorefine.annotations import read_annotations

    project = Project.create(folder, config)
    for png, coarse in pairs:
        entry = project.add_slide(png)
        project.set_coarse(entry.id, read_annotations(coarse, slide_shape=entry.shape))
    return project


def masks(project: Project) -> dict[str, np.ndarray]:
    """Each slide's refined outline as a full-resolution mask."""
    return {s.id: rasterize(project.refined_annotations(s.id), s.shape, 1) for s in project.slides}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * (a & b).sum() / denom)


def run(project: Project, workers: int | None) -> dict:
    """Refine ``project`` on ``workers`` worker processes (None: this process alone)."""
    t0 = time.perf_counter()
    if workers is None:
        local = Pipeline(project)
        local.run()
        wall = time.perf_counter() - t0
        return {
            "workers": 0,
            "wall_s": round(wall, 2),
            "central_s": round(wall, 2),
            "stages_s": {k: round(v, 2) for k, v in local.times.items()},
        }
    with connect(f"local:{workers}") as cluster:
        started = time.perf_counter() - t0  # the LocalCluster's start, not counted below
        t1 = time.perf_counter()
        pipe = ClusterPipeline(project, cluster)
        pipe.run()
        wall = time.perf_counter() - t1
    central = wall - sum(pipe.task_seconds.values())  # the pixel stage's tasks run within it
    features = [r["seconds"] for r in pipe.slide_runs.get("features", {}).values()]
    return {
        "workers": workers,
        "cluster_start_s": round(started, 2),
        "wall_s": round(wall, 2),
        "central_s": round(central, 2),
        "on_workers_s": round(wall - central, 2),
        "central_share": round(central / wall, 3),
        "features_task_median_s": round(statistics.median(features), 2) if features else None,
        "stages_s": {k: round(v, 2) for k, v in pipe.times.items()},
        "waits_on_workers_s": pipe.task_seconds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--encoder", default="efficientnet-lite0")
    ap.add_argument("--pixel-stage", action="store_true", help="include the pixel stage")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    config = RefineConfig(
        patch_size=64, encoder=args.encoder, device="cpu", pixel_level=args.pixel_stage
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "slides").mkdir()
        pairs = make_cohort(root / "slides", args.slides, args.size)
        base = new_project(root / "local", pairs, config)
        local = run(base, None)
        local_masks = masks(base)
        results.append(local)
        print(json.dumps(local), flush=True)
        for w in args.workers:
            project = new_project(root / f"w{w}", pairs, config)
            res = run(project, w)
            got = masks(project)
            res["min_dice_vs_one_machine"] = round(
                min(dice(local_masks[k], got[k]) for k in local_masks), 4
            )
            res["speedup_vs_one_machine"] = round(local["wall_s"] / res["wall_s"], 2)
            results.append(res)
            print(json.dumps(res), flush=True)
    n = args.slides
    one = next((r for r in results[1:] if r["workers"] == 1), None)  # no contention
    if one is not None:
        per_slide_work = one["on_workers_s"] / n  # worker-seconds a slide
        est = 200 * per_slide_work / 16 + 200 * one["central_s"] / n
        print(
            f"estimate, 200 slides on 16 workers: {est / 60:.1f} min "
            f"({per_slide_work:.1f} worker-s a slide of per-slide work on 1 worker, "
            f"{one['central_s'] / n:.1f} s a slide centrally; central stages taken as linear)"
        )
    summary = {
        "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/cluster_scaling.py " + " ".join(argv or sys.argv[1:]),
        "slides": n,
        "size": args.size,
        "config": {"encoder": args.encoder, "patch_size": 64, "pixel_stage": args.pixel_stage},
        "runs": results,
    }
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
