"""Quality benchmark: does the refinement make coarse tumour outlines better than the baselines?

For every cohort (see ``cohorts.py``) and encoder it extracts patch features (cached),
then scores, by pixel-level Dice and IoU within tissue against the true tumour map:
the coarse outline itself; the coarse labels on the patch grid; a classifier trained on
the coarse labels; DkNN; the refinement; and its ablations. Every patch-level
prediction goes through the engine's own output path (``prob_to_fine_mask``, the
one the pipeline's polygons come from). Prints one markdown table and writes it to
``benchmarks/results/quality.md`` with the details in ``quality.json``.

    python benchmarks/quality.py [--cohorts a,b] [--encoders a,b] [--quick] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cohorts as C  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ENCODERS = ("efficientnet-lite0", "colour-texture", "efficientnet-lite0+colour-texture")
ABLATIONS = {
    "ours": {},
    "ours: + global prototype evidence": {"use_global": True},
    "ours: global prototypes only": {"use_local": False, "use_global": True},
    "ours: no per-slide standardisation": {"slide_norm": False},
    "ours: no dynamic sampling": {"dynamic_sampling": False},
    "ours: 3 rounds of re-finetuning": {"rounds": 3},
    "ours: no early stopping (10 epochs)": {"early_stop": 0.0, "epochs": 10},
    "ours: no colour prototypes": {"colour_prototypes": 0},
}


@dataclass
class PatchData:
    """Everything the methods see for one cohort and encoder: one row per tissue patch."""

    features: np.ndarray
    patch_size: int
    stride: int
    inside: np.ndarray
    distance: np.ndarray
    slide_index: np.ndarray
    rc: np.ndarray
    grid_shapes: list[tuple[int, int]]
    cells: list[float]
    encoder: str
    seconds: float
    blocks: tuple[int, ...] | None = None
    grids: list = field(default_factory=list, repr=False)
    colour: dict = field(default_factory=dict, repr=False)  # (slide, factor) -> cell features

    def colour_features(self, cohort: C.Cohort, k: int, factor: int) -> np.ndarray:
        """Slide ``k``'s fine-cell stain statistics for colour prototypes (computed once)."""
        from protorefine.refine.stain_clusters import cell_features, cell_sums

        if (k, factor) not in self.colour:
            sums = cell_sums(cohort.slides[k].slide(), self.grids[k], factor)
            self.colour[k, factor] = cell_features(sums)
        return self.colour[k, factor]


def patch_data(
    cohort: C.Cohort,
    encoder_name: str,
    *,
    patch_size: int | None = None,
    stride: int | None = None,
    cache: Path = C.CACHE,
    log=print,
) -> PatchData:
    """Grid, coarse labels and features of every slide of a cohort (features cached on disk).

    ``patch_size`` (encoder window) and ``stride`` (grid cell) default to the cohort's patch size.
    """
    from protorefine.features import coarse_labels, extract_features, get_encoder, make_grid

    patch_size = patch_size or cohort.patch_size
    stride = stride or cohort.patch_size
    if "+" in encoder_name:  # a combined encoder: its parts' cached features side by side
        parts = [
            patch_data(cohort, n, patch_size=patch_size, stride=stride, cache=cache, log=log)
            for n in encoder_name.split("+")
        ]
        return replace(
            parts[0],
            features=np.concatenate([p.features for p in parts], axis=1),
            encoder=encoder_name,
            seconds=sum(p.seconds for p in parts),
            blocks=tuple(p.features.shape[1] for p in parts),
        )
    encoder = get_encoder(encoder_name, device="cpu")
    geometry = (
        "" if (patch_size, stride) == (cohort.patch_size,) * 2 else f"-p{patch_size}s{stride}"
    )
    detect = cohort.name == "synthetic"  # real cohorts are crops of tissue: every patch counts
    tissue = None if detect else True
    grids = [
        make_grid(s.slide(), patch_size=patch_size, stride=stride, tissue=tissue)
        for s in cohort.slides
    ]
    name = f"{cohort.key}{geometry}-{encoder_name}-{encoder.weight_hash[:10]}"
    if detect:  # other tissue detection, other patches: their features go to another file
        packed = b"".join(np.packbits(g.tissue).tobytes() for g in grids)
        name += f"-t{hashlib.sha1(packed).hexdigest()[:8]}"
    path = cache / "features" / f"{name}.npz"
    feats: list[np.ndarray] = []
    seconds = 0.0
    if path.exists():
        z = np.load(path)
        feats = [z[f"f{k}"] for k in range(len(cohort.slides))]
        seconds = float(z["seconds"])
    else:
        t0 = time.perf_counter()
        for k, (s, g) in enumerate(zip(cohort.slides, grids, strict=True)):
            log(
                f"  features {cohort.name} [{encoder_name}] slide {k + 1}/{len(grids)} ({int(g.tissue.sum())} patches)"
            )
            feats.append(np.asarray(extract_features(s.slide(), g, encoder), dtype=np.float32))
        seconds = time.perf_counter() - t0
        from protorefine._atomic import atomic_path

        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, seconds=seconds, **{f"f{k}": f for k, f in enumerate(feats)})
    rows = {k: [] for k in ("features", "inside", "distance", "slide", "rc")}
    for k, (s, g, f) in enumerate(zip(cohort.slides, grids, feats, strict=True)):
        idx = g.tissue_index
        if len(f) != len(idx):
            raise RuntimeError(f"{s.name}: {len(f)} feature rows for {len(idx)} tissue patches")
        inside, distance = coarse_labels(g, s.coarse)
        rows["features"].append(f)
        rows["inside"].append(inside[idx])
        rows["distance"].append(distance[idx])
        rows["slide"].append(np.full(len(idx), k))
        rows["rc"].append(g.rc[idx])
    return PatchData(
        features=np.concatenate(rows["features"]),
        patch_size=patch_size,
        stride=stride,
        inside=np.concatenate(rows["inside"]).astype(np.float32),
        distance=np.concatenate(rows["distance"]).astype(np.float32),
        slide_index=np.concatenate(rows["slide"]),
        rc=np.concatenate(rows["rc"]),
        grid_shapes=[(g.rows, g.cols) for g in grids],
        cells=[float(g.downsample) for g in grids],
        encoder=encoder_name,
        seconds=seconds,
        grids=grids,
    )


def to_eval(labels: np.ndarray, pd: PatchData, k: int, s: C.BenchSlide) -> np.ndarray:
    """Paint slide ``k``'s per-patch labels onto its evaluation raster (off-grid pixels are 0)."""
    sel = pd.slide_index == k
    grid = np.zeros(pd.grid_shapes[k], bool)
    grid[pd.rc[sel, 0], pd.rc[sel, 1]] = labels[sel]
    h, w = s.truth.shape
    ds, cell = s.eval_downsample, pd.cells[k]
    rr = np.minimum(((np.arange(h) + 0.5) * ds // cell).astype(int), grid.shape[0] - 1)
    cc = np.minimum(((np.arange(w) + 0.5) * ds // cell).astype(int), grid.shape[1] - 1)
    return grid[np.ix_(rr, cc)]


def output_masks(prob: np.ndarray, pd: PatchData, cohort: C.Cohort, config) -> list[np.ndarray]:
    """Per-patch probability -> the pipeline's output mask per slide, on each evaluation raster.

    Same path as the refined polygons the pipeline writes: the probability grid goes
    through ``prob_to_fine_mask`` at ``config.output_upsample`` x the grid resolution
    (``prob_to_mask`` on the grid itself when the factor is 1).
    """
    from protorefine.refine import postprocess as pp

    f = max(1, int(getattr(config, "output_upsample", 1)))
    out = []
    for k, s in enumerate(cohort.slides):
        sel = pd.slide_index == k
        pgrid = np.zeros(pd.grid_shapes[k], np.float32)
        valid = np.zeros(pd.grid_shapes[k], bool)
        pgrid[pd.rc[sel, 0], pd.rc[sel, 1]] = prob[sel]
        valid[pd.rc[sel, 0], pd.rc[sel, 1]] = True
        if f > 1:
            colour = pd.colour_features(cohort, k, f) if config.colour_prototypes > 0 else None
            mask = pp.prob_to_fine_mask(pgrid, tissue=valid, config=config, factor=f, colour=colour)
        else:
            mask, f = pp.prob_to_mask(pgrid, tissue=valid, config=config), 1
        h, w = s.truth.shape
        cell = pd.cells[k] / f
        rr = np.minimum(
            ((np.arange(h) + 0.5) * s.eval_downsample // cell).astype(int), mask.shape[0] - 1
        )
        cc = np.minimum(
            ((np.arange(w) + 0.5) * s.eval_downsample // cell).astype(int), mask.shape[1] - 1
        )
        out.append(mask[np.ix_(rr, cc)])
    return out


def truth_fraction(pd: PatchData, cohort: C.Cohort) -> np.ndarray:
    """Share of each tissue patch that is truly tumour, from the slides' truth rasters."""
    out = np.zeros(len(pd.slide_index), np.float32)
    for k, s in enumerate(cohort.slides):
        sel = np.flatnonzero(pd.slide_index == k)
        f = pd.cells[k] / s.eval_downsample
        rows, cols = pd.grid_shapes[k]
        yy = np.minimum((np.arange(s.truth.shape[0]) // f).astype(int), rows - 1)
        xx = np.minimum((np.arange(s.truth.shape[1]) // f).astype(int), cols - 1)
        tot = np.zeros((rows, cols))
        cnt = np.zeros((rows, cols))
        np.add.at(tot, (yy[:, None], xx[None, :]), s.truth)
        np.add.at(cnt, (yy[:, None], xx[None, :]), 1)
        frac = tot / np.maximum(cnt, 1)
        out[sel] = frac[pd.rc[sel, 0], pd.rc[sel, 1]]
    return out


def scores(pred: list[np.ndarray], cohort: C.Cohort) -> dict:
    """Mean and per-slide pixel Dice and IoU within tissue."""
    d, j = [], []
    for p, s in zip(pred, cohort.slides, strict=True):
        a, b = p & s.tissue, s.truth & s.tissue
        inter, tot = int((a & b).sum()), int(a.sum() + b.sum())
        d.append(1.0 if tot == 0 else 2 * inter / tot)
        j.append(1.0 if tot == inter else inter / (tot - inter))
    return {
        "dice": float(np.mean(d)),
        "iou": float(np.mean(j)),
        "dice_per_slide": [round(x, 4) for x in d],
    }


def refine_cohort(pd: PatchData, config) -> np.ndarray:
    """Ours on a cohort's patches: the final per-patch tumour probability (as the pipeline)."""
    from protorefine.refine.core import refine_patches

    res = refine_patches(
        pd.features,
        pd.inside,
        pd.slide_index,
        pd.rc,
        distance=pd.distance,
        config=config,
        blocks=pd.blocks,
    )
    return np.asarray(res.prob, np.float32)


def run_methods(cohort: C.Cohort, pd: PatchData, seeds: list[int], *, log=print) -> dict:
    """Score every patch-level method (baselines, ours, ablations) on one cohort and encoder."""
    from protorefine.refine.baselines import coarse_classifier, dknn
    from protorefine.refine.config import RefineConfig
    from protorefine.refine.prototypes import standardize_per_slide

    base = RefineConfig(
        patch_size=pd.patch_size, stride=pd.stride, encoder=pd.encoder, device="cpu"
    )
    coarse = (pd.inside >= 0.5).astype(np.uint8)
    out: dict[str, dict] = {}

    def record(name: str, probs_per_seed: list[np.ndarray], seconds: float, config=base) -> None:
        per_seed = []
        for prob in probs_per_seed:
            pred = output_masks(np.asarray(prob, np.float32), pd, cohort, config)
            per_seed.append(scores(pred, cohort))
        res = {
            "dice": float(np.mean([r["dice"] for r in per_seed])),
            "iou": float(np.mean([r["iou"] for r in per_seed])),
            "dice_seeds": [round(r["dice"], 4) for r in per_seed],
            "dice_per_slide": per_seed[0]["dice_per_slide"],
            "seconds": round(seconds / max(len(probs_per_seed), 1), 2),
        }
        out[name] = res
        log(
            f"    {name:34s} Dice {res['dice']:.3f}  IoU {res['iou']:.3f}  ({res['seconds']:.1f} s)"
        )

    # references: what the grid itself allows, so without the colour step below the patch
    grid_only = base.replace(colour_prototypes=0)
    truth = (truth_fraction(pd, cohort) >= 0.5).astype(np.float32)
    record("true labels on the patch grid (reference)", [truth], 0.0, grid_only)
    record("coarse labels on the patch grid", [coarse.astype(np.float32)], 0.0, grid_only)

    t = time.perf_counter()
    probs = [
        coarse_classifier(pd.features, coarse, seed=seed, config=base, blocks=pd.blocks)
        for seed in seeds
    ]
    record("classifier on coarse labels", probs, time.perf_counter() - t)

    t = time.perf_counter()
    lab = dknn(pd.features, coarse, k=5, blocks=pd.blocks)
    record("DkNN (k=5)", [lab.astype(np.float32)], time.perf_counter() - t)

    # the same baselines on the features ours sees (z-scored within each slide), for fairness
    zf = standardize_per_slide(pd.features, pd.slide_index)
    t = time.perf_counter()
    probs = [
        coarse_classifier(zf, coarse, seed=seed, config=base, blocks=pd.blocks) for seed in seeds
    ]
    record("classifier on coarse labels, per-slide z-scored", probs, time.perf_counter() - t)
    t = time.perf_counter()
    lab = dknn(zf, coarse, k=5, blocks=pd.blocks)
    record("DkNN (k=5), per-slide z-scored", [lab.astype(np.float32)], time.perf_counter() - t)

    for name, change in ABLATIONS.items():
        t = time.perf_counter()
        config = base.replace(**change)
        probs = [refine_cohort(pd, config.replace(seed=seed)) for seed in seeds]
        record(name, probs, time.perf_counter() - t, config)
    return out


def coarse_pixel_scores(cohort: C.Cohort) -> dict:
    """Dice/IoU of the coarse outline itself, rasterised at the evaluation resolution."""
    return scores([s.coarse_mask for s in cohort.slides], cohort)


def markdown(results: dict, cohort_names: list[str], encoders: list[str]) -> str:
    """One table: rows are methods (per encoder), columns cohorts, cells 'Dice / IoU'."""
    head = "| method | encoder | " + " | ".join(cohort_names) + " |"
    lines = [head, "|" + "---|" * (len(cohort_names) + 2)]

    def cell(r: dict | None) -> str:
        return "–" if r is None else f"{r['dice']:.3f} / {r['iou']:.3f}"

    lines.append(
        "| coarse outline | – | "
        + " | ".join(cell(results[c]["coarse"]) for c in cohort_names)
        + " |"
    )
    names = list(next(iter(next(iter(results.values()))["methods"].values())).keys())
    for enc in encoders:
        for name in names:
            cells = [cell(results[c]["methods"].get(enc, {}).get(name)) for c in cohort_names]
            bold = name == "ours"
            label = f"**{name}**" if bold else name
            lines.append(f"| {label} | {enc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict:
    """Where the benchmark ran."""
    import os

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def merge(folders: list[str], out: Path) -> int:
    """Combine the quality.json of several runs (e.g. one per cohort, run in parallel) into one table."""
    from protorefine._atomic import atomic_write_text

    runs = [json.loads((Path(f) / "quality.json").read_text()) for f in folders]
    results: dict = {}
    for r in runs:
        results.update(r["cohorts"])
    names = [c for c in C.COHORTS if c in results]
    encoders = list(next(iter(results.values()))["methods"])
    table = markdown(results, names, encoders)
    wall = max(r["wall_seconds"] for r in runs)
    info = runs[0]["machine"]
    # a merged result lists its own runs under "commands": merging into it keeps them
    cmds = "; ".join(f"`{c}`" for r in runs for c in r.get("commands", [r.get("command")]))
    header = (
        f"Pixel-level Dice / IoU within tissue, mean over slides (seeds {runs[0]['seeds']}). "
        f"{info['date']}, {info['cpu']}, {info['nproc']} cores; {len(runs)} runs in parallel, "
        f"longest {wall / 60:.1f} min: {cmds}"
    )
    print(table)
    atomic_write_text(out / "quality.md", header + "\n\n" + table + "\n")
    commands = [c for r in runs for c in r.get("commands", [r.get("command")])]
    merged = {"machine": info, "commands": commands, "wall_seconds": wall}
    merged.update({"seeds": runs[0]["seeds"], "cohorts": results})
    atomic_write_text(out / "quality.json", json.dumps(merged, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Build cohorts, extract features, score every method, print and save the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cohorts", default=",".join(C.COHORTS), help="comma-separated cohort names")
    ap.add_argument("--encoders", default=",".join(ENCODERS), help="comma-separated encoder names")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds for the trained methods")
    ap.add_argument("--quick", action="store_true", help="small cohorts, for a smoke run")
    ap.add_argument("--patch-size", type=int, help="encoder window in pixels (default: cohort's)")
    ap.add_argument("--stride", type=int, help="grid cell in pixels (default: the cohort's patch)")
    ap.add_argument("--out", default=str(RESULTS), help="folder for quality.md and quality.json")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="DIR",
        help="only merge the quality.json of runs made in parallel (one per cohort) into --out",
    )
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, Path(args.out))
    names = [c for c in args.cohorts.split(",") if c]
    encoders = [e for e in args.encoders.split(",") if e]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    unknown = [c for c in names if c not in C.COHORTS]
    if unknown:
        print(
            f"quality: unknown cohort(s) {', '.join(unknown)}; known: {', '.join(C.COHORTS)}",
            file=sys.stderr,
        )
        return 2
    t0 = time.perf_counter()
    results: dict = {}
    for name in names:
        cohort = C.build_cohort(name, quick=args.quick)
        if cohort is None:
            continue
        n_slides = len(cohort.slides)
        print(f"cohort {name}: {n_slides} slides, coarse Dice {cohort.notes.get('coarse_dice')}")
        entry = {
            "notes": cohort.notes,
            "coarse": coarse_pixel_scores(cohort),
            "methods": {},
            "patches": {},
        }
        for enc in encoders:
            pd = patch_data(cohort, enc, patch_size=args.patch_size, stride=args.stride)
            entry["patches"][enc] = {
                "n": int(len(pd.features)),
                "feature_seconds": round(pd.seconds, 1),
            }
            print(f"  [{enc}] {len(pd.features)} patches")
            entry["methods"][enc] = run_methods(cohort, pd, seeds)
        results[name] = entry
    if not results:
        print("quality: no cohort could be built", file=sys.stderr)
        return 2
    done = [c for c in names if c in results]
    table = markdown(results, done, encoders)
    wall = time.perf_counter() - t0
    info = machine()
    cmd = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = (
        f"Pixel-level Dice / IoU within tissue, mean over slides (seeds {args.seeds}). "
        f"{info['date']}, {info['cpu']}, {info['nproc']} cores, {wall / 60:.1f} min. `{cmd.strip()}`"
    )
    print()
    print(table)
    out = Path(args.out)
    from protorefine._atomic import atomic_write_text

    suffix = "-quick" if args.quick else ""
    atomic_write_text(out / f"quality{suffix}.md", header + "\n\n" + table + "\n")
    atomic_write_text(
        out / f"quality{suffix}.json",
        json.dumps(
            {
                "machine": info,
                "command": cmd.strip(),
                "wall_seconds": round(wall, 1),
                "seeds": seeds,
                "cohorts": results,
            },
            indent=1,
        ),
    )
    print(f"\nwrote {out / f'quality{suffix}.md'} ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
