"""Project bookkeeping on many slides: what the panes and exports read per slide.

Builds a project of ``--slides`` small synthetic slides (every tenth left without a coarse
outline, as a batch outlined in part), refines it with the colour-texture encoder, then
times the reads the napari panes do on every switch and status update (results present?
review state?), the slide list's status of every slide (a background thread), the
measurements spreadsheet and the review order.

    python benchmarks/project_scale.py --slides 200 [--out /tmp/protorefine-scale]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Build, refine, time; print one line per read."""
    import imageio.v3 as iio
    import numpy as np

    from protorefine.napari.widgets.project import _slide_status
    from protorefine.project import Project
    from protorefine.project.pipeline import Pipeline
    from protorefine.project.review import write_measurements_csv
    from protorefine.refine import RefineConfig
    from protorefine.synthetic import simulate_coarse, synthetic_slide

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=200)
    ap.add_argument("--out", default="/tmp/protorefine-scale")
    args = ap.parse_args(argv)
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    (root / "slides").mkdir(parents=True)
    slide, truth, ds = synthetic_slide((384, 384), seed=1)
    image, coarse = np.asarray(slide.levels[0]), simulate_coarse(truth, ds, seed=1)
    config = RefineConfig(patch_size=64, encoder="colour-texture", device="cpu", epochs=3)
    project = Project.create(root / "project", config)
    t0 = time.perf_counter()
    for i in range(args.slides):
        path = root / "slides" / f"s{i:04d}.png"
        iio.imwrite(path, image)
        entry = project.add_slide(path)
        if i % 10:
            project.set_coarse(entry.id, coarse)
    print(f"{args.slides} slides added in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    Pipeline(project, partial=True).run()
    print(
        f"refined ({len(project.run_slides())} with an outline) in {time.perf_counter() - t0:.1f} s"
    )
    sid = project.run_slides()[0].id
    reads = {
        "has_results (one slide)": lambda: project.has_results(sid),
        "review_state (one slide)": lambda: project.review_state(sid),
        "slide list status (every slide, background)": lambda: _slide_status(project),
        "tumour_measurements.csv": lambda: write_measurements_csv(project, root / "m.csv"),
        "review order": project.review_order,
    }
    for name, read in reads.items():
        t0 = time.perf_counter()
        read()
        print(f"{name}: {1000 * (time.perf_counter() - t0):.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
