"""Does the model's unsure share tell which refined outlines are worst? (the review order)

"Next slide to review" goes to the slide whose refined tumour probabilities are most
often unsure (``protorefine.measure.unsure_share``). This checks that ordering on the
benchmark cohorts refined by the product's pipeline (``quality.py``'s cached cohorts
and projects): per slide, the
unsure share against the refined outline's pixel Dice, as a Spearman rank correlation
with the error (1 - Dice) and as the mean Dice of the least sure quarter of the
slides against the rest. Cohorts need many slides for this to mean anything: the
61 CAMELYON tiles.

    python benchmarks/review_order.py --cohorts camelyon-tiles \\
        --encoders efficientnet-lite0+colour-texture,efficientnet-lite0 --seeds 0,1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cohorts as C  # noqa: E402
import quality as Q  # noqa: E402


def order_figures(unsure: np.ndarray, dice: np.ndarray) -> dict[str, float]:
    """Spearman correlation of unsure share with error, and mean Dice of the least sure
    quarter of the slides against the other three quarters."""
    from scipy.stats import spearmanr

    top = unsure >= np.quantile(unsure, 0.75)
    return {
        "spearman": float(spearmanr(unsure, 1 - dice).statistic),
        "dice_least_sure_quarter": float(dice[top].mean()),
        "dice_rest": float(dice[~top].mean()),
        "slides_least_sure_quarter": int(top.sum()),
    }


def main(argv: list[str] | None = None) -> int:
    """Print one line per cohort, encoder and seed."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohorts", default="camelyon-tiles")
    ap.add_argument("--encoders", default="efficientnet-lite0+colour-texture,efficientnet-lite0")
    ap.add_argument("--seeds", default="0,1")
    args = ap.parse_args(argv)
    print(
        "| cohort | encoder | seed | Spearman (unsure, 1 - Dice) | Dice, least sure quarter | Dice, rest |"
    )
    print("|---|---|---|---|---|---|")
    for name in args.cohorts.split(","):
        cohort = C.build_cohort(name)
        for enc in args.encoders.split(","):
            run = Q.product_run(cohort, enc, log=lambda *a: None)
            for seed in (int(s) for s in args.seeds.split(",")):
                masks, _ = run.refine({"seed": seed})
                dice = np.array(Q.scores(masks, cohort)["dice_per_slide"])
                shares = run.project.unsure_shares()  # what "Next slide to review" sorts by
                unsure = np.array([shares[sid] for sid in run.ids])
                f = order_figures(unsure, dice)
                print(
                    f"| {name} | {enc} | {seed} | {f['spearman']:.3f} | "
                    f"{f['dice_least_sure_quarter']:.3f} ({f['slides_least_sure_quarter']} slides) "
                    f"| {f['dice_rest']:.3f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
