"""Tuning aid: score config variants of the refinement, and what the features allow at all.

Reuses ``quality.py``'s cached cohorts and projects. For each cohort and encoder it
prints the mean pixel Dice (seeds 0 and 1) of the product's pipeline under each variant, a
dict of ``RefineConfig`` changes (the run ``protorefine refine`` makes, with that change). ``--probe`` adds what a classifier
trained on the *true* patch labels reaches (5-fold over patches of all slides mixed,
so every slide is seen in training): logistic regression and the engine's own head,
on raw and per-slide z-scored features; it tells features from method. Ours can
beat it, because it also uses where the coarse outline runs. ``--outline-probe``
trains on the true labels of the *other* slides with the features, the outline's
prior (inside flag, distance) or both: the last has the true labels ours never gets,
but not the test slide's own patches, which ours learns from.

    python benchmarks/quality_sweep.py --cohorts camelyon-tiles --stride 32 \\
        --variants '{"base": {}, "spe8k": {"samples_per_epoch": 8192}}' --probe
    python benchmarks/quality_sweep.py --cohorts camelyon-tiles \\
        --encoders efficientnet-lite0+colour-texture --outline-probe
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cohorts as C  # noqa: E402
import quality as Q  # noqa: E402


def dice_of(prob: np.ndarray, run: Q.ProductRun, cells, config) -> float:
    """Mean pixel Dice of a per-cell probability through the product's output step."""
    masks = run.output_masks(np.asarray(prob, np.float32), cells, config)
    return Q.scores(masks, run.cohort)["dice"]


def probe(run: Q.ProductRun, cells, config, folds: int = 5) -> dict[str, float]:
    """Dice of classifiers trained on the true patch labels, out of fold."""
    import torch
    from sklearn.linear_model import LogisticRegression

    from protorefine.refine.classifier import predict, train_classifier
    from protorefine.refine.prototypes import standardize_per_slide

    y = (Q.truth_fraction(run, cells) >= 0.5).astype(np.int8)
    fold = np.random.default_rng(0).integers(0, folds, len(y))
    head_cfg = config.replace(early_stop=0.0, epochs=30, samples_per_epoch=8192)
    out = {}
    for name, x in (("raw", cells.features), ("z-scored", None)):
        if x is None:
            x = standardize_per_slide(cells.features, cells.slide_index)
        xt = torch.from_numpy(np.asarray(x, np.float32))
        p_lr = np.zeros(len(y), np.float32)
        p_head = np.zeros(len(y), np.float32)
        for f in range(folds):
            tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
            lr = LogisticRegression(C=0.1, max_iter=2000).fit(x[tr], y[tr])
            p_lr[te] = lr.predict_proba(x[te])[:, 1]
            res = train_classifier(
                xt[tr],
                y[tr],
                np.ones(len(tr), np.float32),
                y[tr].astype(np.float32),
                config=head_cfg,
            )
            p_head[te] = predict(res.model, xt[te])
        out[f"logistic, {name}"] = dice_of(p_lr, run, cells, config)
        out[f"head, {name}"] = dice_of(p_head, run, cells, config)
    return out


def outline_probe(run: Q.ProductRun, cells, config) -> dict[str, float]:
    """Dice of classifiers trained on the true labels of the *other* slides (folds by slide).

    Inputs: the per-slide z-scored features (blocks scaled to equal norm), the coarse
    outline's prior alone (inside flag and distance terms), or both: what supervision
    adds to the inputs ours has, short of labels on the slide itself.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    from protorefine.refine.prototypes import standardize_per_slide

    y = (Q.truth_fraction(run, cells) >= 0.5).astype(np.int8)
    x = standardize_per_slide(cells.features, cells.slide_index)
    blocks = cells.blocks or (x.shape[1],)
    start = 0
    for width in blocks:
        x[:, start : start + width] *= np.sqrt(min(blocks) / width)
        start += width
    d = np.clip(cells.distance, -3, 3)
    prior = 3 * np.stack(
        [cells.coarse, d, np.abs(d), (d > 0) * np.minimum(d, 1.5), np.exp(-(d**2))], axis=1
    )
    fold = cells.slide_index % min(5, len(run.cohort.slides))
    models = {
        "logistic": lambda: LogisticRegression(C=0.05, max_iter=3000),
        "MLP": lambda: MLPClassifier((256,), alpha=0.1, early_stopping=True, random_state=0),
    }
    out = {}
    inputs = {"features": x, "outline": prior, "features+outline": np.concatenate([x, prior], 1)}
    for iname, xin in inputs.items():
        for mname, make in models.items():
            if iname == "outline" and mname == "MLP":
                continue
            p = np.zeros(len(y), np.float32)
            for f in np.unique(fold):
                tr, te = fold != f, fold == f
                p[te] = make().fit(xin[tr], y[tr]).predict_proba(xin[te])[:, 1]
            out[f"{mname}, {iname}"] = dice_of(p, run, cells, config.replace(threshold=0.5))
    return out


def main(argv: list[str] | None = None) -> int:
    """Print ours under each variant (and the true-label probe) per cohort and encoder."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohorts", default="camelyon-canvas,camelyon-tiles")
    ap.add_argument("--encoders", default=",".join(Q.ENCODERS))
    ap.add_argument("--patch-size", type=int, help="encoder window (default: cohort's)")
    ap.add_argument("--stride", type=int, help="grid cell (default: the cohort's patch)")
    ap.add_argument("--variants", default='{"default": {}}', help="JSON {name: config changes}")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--probe", action="store_true", help="also train on the true labels")
    ap.add_argument(
        "--outline-probe",
        action="store_true",
        help="also train on the other slides' true labels, with and without the coarse outline",
    )
    args = ap.parse_args(argv)
    variants = json.loads(args.variants)
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in args.cohorts.split(","):
        cohort = C.build_cohort(name)
        if cohort is None:
            continue
        for enc in args.encoders.split(","):
            run = Q.product_run(
                cohort, enc, patch_size=args.patch_size, stride=args.stride, log=lambda *a: None
            )
            base = run.config
            head = f"{name} {enc} p{base.patch_size}/s{base.stride}"
            for vname, change in variants.items():
                dices = [
                    Q.scores(run.refine({**change, "seed": s})[0], cohort)["dice"] for s in seeds
                ]
                print(f"{head}  {vname:28s} {np.mean(dices):.3f}", flush=True)
            cells = run.cells()
            if args.probe:
                for pname, d in probe(run, cells, base).items():
                    print(f"{head}  true-label probe, {pname:14s} {d:.3f}", flush=True)
            if args.outline_probe:
                for pname, d in outline_probe(run, cells, base).items():
                    print(f"{head}  other slides' labels, {pname:26s} {d:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
