"""Does the quality benchmark's "ours" row measure the product? Run `protorefine refine` as a
user would (the cohort's slide files, a new output folder, the row's flags) and score what it
writes the way ``quality.py`` scores its row; print both.

    python benchmarks/product_parity.py --cohort ocdc-canvas --encoder colour-texture \\
        [--results benchmarks/results/quality.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cohorts as C  # noqa: E402
import quality as Q  # noqa: E402

from protorefine.annotations import read_geojson  # noqa: E402
from protorefine.cli import main as cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Refine one cohort with the CLI, score it, and print it beside the benchmark's row."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohort", default="ocdc-canvas")
    ap.add_argument("--encoder", default="colour-texture")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(Q.RESULTS / "quality.json"))
    args = ap.parse_args(argv)
    cohort = C.build_cohort(args.cohort)
    if cohort is None:
        return 2
    run = Q.product_run(cohort, args.encoder)
    bench = Q.scores(run.refine({"seed": args.seed})[0], cohort)
    flags = run.command.split(" --coarse COARSE ")[1].split() + ["--seed", str(args.seed)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "refined"
        argv_ = ["refine", *[str(t) for t, _ in run.pairs], "--coarse"]
        argv_ += [str(c) for _, c in run.pairs] + ["--out", str(out), *flags]
        if cli(argv_) != 0:
            return 1
        masks = [
            Q.outline_raster(read_geojson(out / f"{s.name}.geojson"), run.project, s.name, s)
            for s in cohort.slides
        ]
    product = Q.scores(masks, cohort)
    stored = json.loads(Path(args.results).read_text())["cohorts"][args.cohort]["methods"]
    row = stored[args.encoder]["ours"]["dice_seeds"][0] if args.seed == 0 else None
    print(f"`protorefine refine {' '.join(flags)}` on {args.cohort}: Dice {product['dice']:.4f}")
    print(f"quality.py's ours row, seed {args.seed}, computed now: Dice {bench['dice']:.4f}")
    if row is not None:
        print(f"quality.py's ours row, seed 0, stored in {args.results}: Dice {row:.4f}")
    return 0 if abs(product["dice"] - bench["dice"]) < 1e-12 else 1


if __name__ == "__main__":
    raise SystemExit(main())
