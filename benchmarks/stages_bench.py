"""Time every refinement stage after features (prototypes -> output polygons) on N patches.

It runs the pipeline's own steps (``protorefine.refine.steps``) on an in-memory ``Cohort``,
without the project's file reads and writes.

Target: all stages for 10,000 patches with 1280-d features (EfficientNet-Lite0 width)
in under 10 s on 2 CPU cores. Features are synthetic clouds (tumour and normal
patterns per slide) laid on grids of ``--slides`` slides; the timing does not
depend on what the features mean. The output stage includes the colour prototypes:
their stain statistics are read from an in-memory slide of 224 px patches at level 0
(a real slide adds the decoding of its tiles), then clustered per slide.

    python benchmarks/stages_bench.py [--patches 10000] [--dim 1280] [--slides 4] [--threads 2]
    python benchmarks/stages_bench.py --blocks 1280,77   # efficientnet-lite0+colour-texture
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch
from scipy import ndimage


def cohort(n: int, dim: int, slides: int, seed: int = 0):
    """Features, coarse labels, distance, slide index and grid positions for ``n`` patches."""
    rng = np.random.default_rng(seed)
    per = n // slides
    side = int(np.ceil(np.sqrt(per)))
    centers = rng.normal(size=(8, dim)).astype(np.float32)
    feats, coarse, dist, sidx, rcs = [], [], [], [], []
    for s in range(slides):
        m = per if s < slides - 1 else n - per * (slides - 1)
        r, c = np.divmod(np.arange(m), side)
        cy, cx = side * rng.uniform(0.35, 0.65, 2)
        truth = np.hypot(r - cy, c - cx) < side * 0.3
        img = np.zeros((side, side), bool)
        img[r, c] = truth
        co = ndimage.binary_dilation(img, iterations=2)
        d = np.where(co, ndimage.distance_transform_edt(co), -ndimage.distance_transform_edt(~co))
        kind = np.where(truth, rng.integers(0, 3, m), rng.integers(3, 8, m))
        feats.append(centers[kind] + rng.normal(scale=0.8, size=(m, dim)).astype(np.float32))
        coarse.append(co[r, c].astype(np.float32))
        dist.append(d[r, c].astype(np.float32))
        sidx.append(np.full(m, s))
        rcs.append(np.stack([r, c], 1))
    return (
        np.concatenate(feats),
        np.concatenate(coarse),
        np.concatenate(dist),
        np.concatenate(sidx),
        np.concatenate(rcs),
    )


def run(n: int, dim: int, slides: int, blocks: tuple[int, ...] | None = None) -> dict:
    """Run each stage once (after a small warm-up) and return the seconds per stage.

    ``blocks``: feature widths of a combined encoder (``dim`` is then their sum).
    """
    from protorefine.features import make_grid
    from protorefine.refine import (
        Cohort,
        RefineConfig,
        classifier_step,
        outline_step,
        probability_step,
        prototypes_step,
        pseudo_labels_step,
    )
    from protorefine.refine.postprocess import scatter_grid
    from protorefine.refine.stain_clusters import cell_features, cell_sums
    from protorefine.slides.base import Slide

    f, c, d, s, rc = cohort(n, dim, slides)
    ids = [str(k) for k in np.unique(s)]
    coh = Cohort.stack([(sid, f[s == k], rc[s == k]) for k, sid in enumerate(ids)], blocks)
    coh.coarse, coh.distance = c.astype(np.float32), d.astype(np.float32)
    cfg = RefineConfig(device="cpu")
    side = int(rc.max()) + 1
    block = np.random.default_rng(1).integers(60, 250, (224, 224, 3), dtype=np.uint8)
    image = Slide.from_array(np.tile(block, (side, side, 1)))  # each slide's pixels
    pixel_grid = make_grid(image, patch_size=224, tissue=True)
    times: dict[str, float] = {}
    t = time.perf_counter()
    protos = prototypes_step(coh, cfg)
    times["prototypes"] = time.perf_counter() - t
    t = time.perf_counter()
    pl = pseudo_labels_step(coh, protos, cfg)
    times["pseudo_labels"] = time.perf_counter() - t
    t = time.perf_counter()
    cr = classifier_step(coh, pl, cfg)
    times["classifier"] = time.perf_counter() - t
    t = time.perf_counter()
    prob = probability_step(coh, cr.model, pl.score, cfg)
    polygons = 0
    for sid in ids:
        rows = coh.slide_rows(sid)
        grid = scatter_grid(prob[rows], coh.rc[rows])
        tissue = scatter_grid(
            np.ones(rows.stop - rows.start, bool), coh.rc[rows], grid.shape, fill=False
        )
        colour = cell_features(cell_sums(image, pixel_grid, cfg.output_upsample))
        colour = colour[
            : grid.shape[0] * cfg.output_upsample, : grid.shape[1] * cfg.output_upsample
        ]
        out = outline_step(
            grid,
            tissue,
            cfg,
            cell=224.0,
            shape=(grid.shape[0] * 224, grid.shape[1] * 224),
            classification="Tumor",
            colour=colour,
        )
        polygons += len(out.outline.annotations)
    times["output"] = time.perf_counter() - t
    times["total"] = sum(times.values())
    return {
        "seconds": {k: round(v, 3) for k, v in times.items()},
        "local_prototypes": int(len(protos.local_centers)),
        "global_prototypes": int(len(protos.global_centers)),
        "polygons": polygons,
    }


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the stages and print JSON with the machine."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--slides", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target is 2)")
    ap.add_argument(
        "--blocks", default=None, help="feature widths of a combined encoder, e.g. 1280,77"
    )
    args = ap.parse_args(argv)
    blocks = tuple(int(b) for b in args.blocks.split(",")) if args.blocks else None
    dim = sum(blocks) if blocks else args.dim
    torch.set_num_threads(args.threads)
    run(500, 64, 2)  # warm-up: first-call costs of torch kernels
    res = run(args.patches, dim, args.slides, blocks)
    res.update(
        patches=args.patches,
        dim=dim,
        blocks=list(blocks) if blocks else None,
        slides=args.slides,
        threads=torch.get_num_threads(),
        machine=platform.processor() or platform.machine(),
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
