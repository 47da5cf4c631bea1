"""Does ``protorefine demo``'s project refine its coarse outlines? Pixel Dice against the truth.

Builds the demo's sample cohort (``make_sample_cohort``, project config as the demo
sets it), runs the whole pipeline unattended, and prints per slide the Dice of the
coarse and of the refined outline against the synthetic truth, at downsample 16.

    python benchmarks/demo_quality.py [--out /tmp/demo-quality] [--patch-size 64]
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks (1 when both are empty)."""
    tot = int(a.sum()) + int(b.sum())
    return 1.0 if tot == 0 else 2.0 * int((a & b).sum()) / tot


def main(argv: list[str] | None = None) -> int:
    """Build the demo cohort, refine it, print coarse and refined Dice per slide and the times."""
    from protorefine.annotations import rasterize, tumour_geometry
    from protorefine.demo import COHORT_SHAPES, make_sample_cohort
    from protorefine.project.pipeline import Pipeline
    from protorefine.synthetic import synthetic_slide

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/demo-quality", help="folder for the demo cohort")
    ap.add_argument("--patch-size", type=int, default=None, help="override the demo's patch size")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    project, _ = make_sample_cohort(args.out)
    if args.patch_size:
        project.set_config(project.config.replace(patch_size=args.patch_size))
    t1 = time.perf_counter()
    Pipeline(project).run()
    t2 = time.perf_counter()
    print(f"patch size {project.config.patch_size}, encoder {project.config.encoder}")
    for i, s in enumerate(project.slides):
        _, truth, tds = synthetic_slide(COHORT_SHAPES[i], seed=i)
        shape = (truth.shape[0] * tds, truth.shape[1] * tds)
        t = truth.astype(bool)

        def raster(annset, t=t, shape=shape, tds=tds) -> np.ndarray:
            return rasterize(tumour_geometry(annset), shape, tds)[: t.shape[0], : t.shape[1]]

        coarse = dice(raster(project.coarse(s.id)), t)
        refined = dice(raster(project.refined_annotations(s.id)), t)
        print(f"{s.id}: coarse Dice {coarse:.3f}  refined Dice {refined:.3f}")
    print(f"cohort {t1 - t0:.0f} s, pipeline {t2 - t1:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
