"""Quality benchmark: does the refinement make coarse tumour outlines better than the baselines?

For every cohort (see ``cohorts.py``) and encoder, the slides are written as TIFF files with
their coarse outlines as GeoJSON and refined by the product's own pipeline: the project
set-up and ``Pipeline`` that ``protorefine refine --patch-size P --stride S --encoder E
--device cpu`` runs, with every other setting at its default (features cached in the
project between runs). Scored by pixel-level Dice and IoU within tissue against the true
tumour map, on each slide's evaluation grid: the coarse outline itself; true and coarse
labels on the patch grid (what the grid allows); a classifier trained on the coarse labels;
DkNN; ours (the outline polygons the product writes, rasterised); and ablations (the same
run with one setting changed). Per-cell baselines go through the product's output step
(``refine.outline_step``). Prints one markdown table and writes it to
``benchmarks/results/quality.md`` with the details in ``quality.json``.

    python benchmarks/quality.py [--cohorts a,b] [--encoders a,b] [--quick] [--seeds 0,1]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cohorts as C  # noqa: E402

from protorefine._atomic import atomic_path, atomic_write_text  # noqa: E402
from protorefine.annotations import TUMOR, fit_mask, rasterize, write_geojson  # noqa: E402
from protorefine.errors import ProtorefineError  # noqa: E402
from protorefine.project import Project  # noqa: E402
from protorefine.project.pipeline import Pipeline, prepare_project  # noqa: E402
from protorefine.refine import Cohort, RefineConfig, outline_step  # noqa: E402
from protorefine.refine.baselines import attention_mil, coarse_classifier, dknn  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ENCODERS = ("efficientnet-lite0", "colour-texture", "efficientnet-lite0+colour-texture")
ABLATIONS = {
    "ours": {},
    "ours at patch level (no pixel stage)": {"pixel_level": False},
    "ours: + global prototype evidence": {"use_global": True},
    "ours: global prototypes only": {"use_local": False, "use_global": True},
    "ours: no per-slide standardisation": {"slide_norm": False},
    "ours: no dynamic sampling": {"dynamic_sampling": False},
    "ours: 3 rounds of re-finetuning": {"rounds": 3},
    "ours: no early stopping (10 epochs)": {"early_stop": 0.0, "epochs": 10},
    "ours: no colour prototypes": {"colour_prototypes": 0},
}
#: The rows every run scores; ``--all-ablations`` adds the others of ABLATIONS.
MAIN_ROWS = ("ours", "ours at patch level (no pixel stage)")
#: Grids (level-0 pixels) whose perfect labels are scored as references.
REFERENCE_GRIDS = (64, 32, 16)


def grid_reference(cohort: C.Cohort, cell: int) -> list[np.ndarray]:
    """Each slide's truth made blocky on a ``cell``-pixel grid (a cell is tumour when most of
    it is), on the evaluation grid: what perfect labels on that grid would draw."""
    out = []
    for s in cohort.slides:
        ds = s.eval_downsample
        full = np.kron(s.truth, np.ones((ds, ds), bool))
        h, w = (full.shape[0] // cell) * cell, (full.shape[1] // cell) * cell
        major = full[:h, :w].reshape(h // cell, cell, w // cell, cell).mean((1, 3)) >= 0.5
        blocky = full.copy()
        blocky[:h, :w] = np.kron(major, np.ones((cell, cell), bool))
        out.append(blocky[ds // 2 :: ds, ds // 2 :: ds][: s.truth.shape[0], : s.truth.shape[1]])
    return out


@dataclass
class ProductRun:
    """One cohort as ``protorefine refine`` sees it: slide files with their coarse outlines in
    a project (kept between runs, so features are extracted once), refined with the config
    the command makes from ``flags`` (its defaults for everything else)."""

    cohort: C.Cohort
    folder: Path
    pairs: list[tuple[Path, Path]]
    flags: dict
    project: Project = field(repr=False)
    ids: list[str] = field(default_factory=list)

    @property
    def config(self) -> RefineConfig:
        """What ``protorefine refine`` with these flags runs on a new project."""
        return RefineConfig().replace(**self.flags)

    @property
    def command(self) -> str:
        """The ``protorefine refine`` command line that runs the same config."""
        opts = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in self.flags.items())
        return f"protorefine refine SLIDES --coarse COARSE {opts}"

    def refine(self, changes: dict | None = None) -> tuple[list[np.ndarray], float]:
        """The product's refined outlines, rasterised on each slide's evaluation grid, with
        ``changes`` to the config (ablations, seeds); and the seconds the run took."""
        config = self.config.replace(**(changes or {}))
        t = time.perf_counter()
        self.project, self.ids = prepare_project(self.folder, self.pairs, lambda _base: config)
        # every stage after the (cached) features is computed by the code under test: a
        # stage stored by an earlier run with the same settings may come from other code
        pipe = Pipeline(self.project)
        pipe.invalidate("prototypes")
        pipe.run()
        seconds = time.perf_counter() - t
        masks = [
            outline_raster(self.project.refined_annotations(sid), self.project, sid, s)
            for sid, s in zip(self.ids, self.cohort.slides, strict=True)
        ]
        return masks, seconds

    def cells(self) -> Cohort:
        """Every slide's tissue cells (features, grid positions, coarse labels) from the project."""
        pipe = Pipeline(self.project)
        cohort = pipe.cohort(coarse=False)
        cohort.coarse, cohort.distance = pipe.coarse_labels()
        return cohort

    def output_masks(
        self, prob: np.ndarray, cells: Cohort, config: RefineConfig
    ) -> list[np.ndarray]:
        """A per-cell tumour probability (a baseline's, a reference's) through the product's
        output step, on each slide's evaluation grid."""
        pipe = Pipeline(self.project)
        out = []
        for sid, s in zip(self.ids, self.cohort.slides, strict=True):
            grid = self.project.grid(sid)
            pgrid = grid.to_image(np.asarray(prob[cells.slide_rows(sid)], np.float32), fill=0.0)
            f = max(1, int(config.output_upsample))
            colour = pipe.stain_features(sid, grid, f) if config.colour_prototypes > 0 else None
            res = outline_step(
                pgrid,
                grid.tissue.reshape(grid.rows, grid.cols),
                config,
                cell=grid.downsample,
                shape=grid.shape,
                classification=TUMOR,
                colour=colour,
            )
            out.append(outline_raster(res.outline, self.project, sid, s))
        return out


def slide_files(cohort: C.Cohort, cache: Path = C.CACHE) -> list[tuple[Path, Path]]:
    """Each benchmark slide as a tiled TIFF (0.5 µm/px in its resolution tags) with its coarse
    outline as GeoJSON, written once per cohort: what a user hands ``protorefine refine``."""
    import tifffile

    folder = cache / "slides" / cohort.key
    folder.mkdir(parents=True, exist_ok=True)
    pairs = []
    for s in cohort.slides:
        tif, coarse = folder / f"{s.name}.tif", folder / f"{s.name}.geojson"
        if not tif.exists():
            with atomic_path(tif) as tmp:
                tifffile.imwrite(
                    tmp,
                    s.image,
                    photometric="rgb",
                    tile=(256, 256),
                    compression="zlib",
                    resolution=(1e4 / 0.5, 1e4 / 0.5),
                    resolutionunit="CENTIMETER",
                )
        if not coarse.exists():
            write_geojson(s.coarse, coarse)
        pairs.append((tif, coarse))
    return pairs


def product_run(
    cohort: C.Cohort,
    encoder: str,
    *,
    patch_size: int | None = None,
    stride: int | None = None,
    defaults: bool = False,
    cache: Path = C.CACHE,
    log=print,
) -> ProductRun:
    """The cohort's project for ``encoder`` with its features extracted (cached on disk).

    ``patch_size`` (encoder window) and ``stride`` (grid cell) default to the cohort's patch
    size; they are the only flags besides the encoder and ``--device cpu``. ``defaults``:
    no geometry flags either, the product's own defaults.
    """
    if defaults:  # `protorefine refine --encoder E --device cpu`: no geometry flags at all
        flags = {"encoder": encoder, "device": "cpu"}
        geometry = "defaults"
    else:
        patch_size = patch_size or cohort.patch_size
        stride = stride or patch_size
        flags = {"patch_size": patch_size, "stride": stride, "encoder": encoder, "device": "cpu"}
        geometry = f"p{patch_size}s{stride}"
    pairs = slide_files(cohort, cache)
    folder = cache / "projects" / f"{cohort.key}-{geometry}-{encoder}"
    config = RefineConfig().replace(**flags)
    project, ids = prepare_project(folder, pairs, lambda _base: config)
    if not project.stage_done("features"):
        log(f"  features {cohort.name} [{encoder}] {len(ids)} slides")
    Pipeline(project).run(until="features")
    return ProductRun(cohort, folder, pairs, flags, project, ids)


def outline_raster(annset, project: Project, sid: str, s: C.BenchSlide) -> np.ndarray:
    """An outline rasterised on a benchmark slide's evaluation grid (its truth's shape)."""
    mask = rasterize(annset, project.slide(sid).shape, s.eval_downsample)
    return fit_mask(mask, s.truth.shape)


def truth_fraction(run: ProductRun, cells: Cohort) -> np.ndarray:
    """Share of each tissue cell that is truly tumour, from the slides' truth rasters."""
    out = np.zeros(len(cells), np.float32)
    for sid, s in zip(run.ids, run.cohort.slides, strict=True):
        grid = run.project.grid(sid)
        rows = cells.slide_rows(sid)
        f = grid.downsample / s.eval_downsample
        yy = np.minimum((np.arange(s.truth.shape[0]) // f).astype(int), grid.rows - 1)
        xx = np.minimum((np.arange(s.truth.shape[1]) // f).astype(int), grid.cols - 1)
        tot = np.zeros((grid.rows, grid.cols))
        cnt = np.zeros((grid.rows, grid.cols))
        np.add.at(tot, (yy[:, None], xx[None, :]), s.truth)
        np.add.at(cnt, (yy[:, None], xx[None, :]), 1)
        frac = tot / np.maximum(cnt, 1)
        out[rows] = frac[cells.rc[rows, 0], cells.rc[rows, 1]]
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


def run_methods(
    run: ProductRun, seeds: list[int], *, log=print, rows: tuple[str, ...] = MAIN_ROWS
) -> dict:
    """Score every method (references, baselines, ours and the ablations in ``rows``) on one
    cohort and encoder. Ours is the product's own run; every per-cell baseline goes through its
    output step."""
    cohort = run.cohort
    base = run.config
    out: dict[str, dict] = {}

    def record(name: str, preds_per_seed: list[list[np.ndarray]], seconds: float) -> None:
        per_seed = [scores(pred, cohort) for pred in preds_per_seed]
        res = {
            "dice": float(np.mean([r["dice"] for r in per_seed])),
            "iou": float(np.mean([r["iou"] for r in per_seed])),
            "dice_seeds": [round(r["dice"], 4) for r in per_seed],
            "dice_per_slide": per_seed[0]["dice_per_slide"],
            "seconds": round(seconds / max(len(preds_per_seed), 1), 2),
        }
        out[name] = res
        log(
            f"    {name:34s} Dice {res['dice']:.3f}  IoU {res['iou']:.3f}  ({res['seconds']:.1f} s)"
        )

    def timed(fn, probs_config=base) -> tuple[list[list[np.ndarray]], float]:
        t = time.perf_counter()
        probs = fn()
        seconds = time.perf_counter() - t
        return [
            run.output_masks(np.asarray(p, np.float32), cells, probs_config) for p in probs
        ], seconds

    # ours first: its prototypes stage stores the coarse labels the others read
    for name, change in ABLATIONS.items():
        if name not in rows:
            continue
        preds, seconds = [], 0.0
        for seed in seeds:
            masks, sec = run.refine({**change, "seed": seed})
            preds.append(masks)
            seconds += sec
        record(name, preds, seconds)
    run.refine({"seed": seeds[0]})  # leave the project as `protorefine refine` made it
    cells = run.cells()
    coarse = (cells.coarse >= 0.5).astype(np.uint8)

    # references: what a grid itself allows
    for g in REFERENCE_GRIDS:
        record(f"perfect labels on the {g} px grid (reference)", [grid_reference(cohort, g)], 0.0)
    grid_only = base.replace(colour_prototypes=0)
    truth = (truth_fraction(run, cells) >= 0.5).astype(np.float32)
    record("true labels on the patch grid (reference)", *timed(lambda: [truth], grid_only))
    record("coarse labels on the patch grid", *timed(lambda: [coarse], grid_only))
    blocks = cells.blocks
    for label, feats in (
        ("", cells.features),
        (", per-slide z-scored", cells.refine_features(base)),
    ):
        record(
            f"classifier on coarse labels{label}",
            *timed(
                lambda f=feats: [
                    coarse_classifier(f, coarse, seed=seed, config=base, blocks=blocks)
                    for seed in seeds
                ]
            ),
        )
        record(
            f"DkNN (k=5){label}",
            *timed(lambda f=feats: [dknn(f, coarse, k=5, blocks=blocks).astype(np.float32)]),
        )
    record(
        "LC-MIL-style attention MIL (per slide)",
        *timed(
            lambda: [
                attention_mil(
                    cells.refine_features(base), coarse, cells.slide_index, cells.rc, seed=seed
                )
                for seed in seeds
            ]
        ),
    )
    first = [k for k in out if k not in ABLATIONS]  # references and baselines, then ours
    return {k: out[k] for k in [*first, *(a for a in ABLATIONS if a in out)]}


def coarse_pixel_scores(cohort: C.Cohort) -> dict:
    """Dice/IoU of the coarse outline itself, rasterised at the evaluation resolution."""
    return scores([s.coarse_mask for s in cohort.slides], cohort)


def markdown(results: dict, cohort_names: list[str], encoders: list[str]) -> str:
    """One table: rows are methods (per encoder), columns cohorts, cells 'Dice / IoU'."""
    head = "| method | encoder | " + " | ".join(cohort_names) + " |"
    lines = [head, "|" + "---|" * (len(cohort_names) + 2)]

    def cell(r: dict | None) -> str:
        return "refused" if r is None else f"{r['dice']:.3f} / {r['iou']:.3f}"

    lines.append(
        "| coarse outline | – | "
        + " | ".join(cell(results[c]["coarse"]) for c in cohort_names)
        + " |"
    )
    scored = [r["methods"] for r in results.values() if r["methods"]]
    names = list(next(iter(scored[0].values())).keys()) if scored else []
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
    ap.add_argument(
        "--defaults",
        action="store_true",
        help="no --patch-size/--stride: the product's default geometry (what a user gets)",
    )
    ap.add_argument(
        "--all-ablations",
        action="store_true",
        help="score every ablation of ours, not only ours and ours at patch level",
    )
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
            run = product_run(
                cohort, enc, patch_size=args.patch_size, stride=args.stride, defaults=args.defaults
            )
            n = sum(int(run.project.grid(sid).tissue.sum()) for sid in run.ids)
            entry["patches"][enc] = {
                "n": n,
                "feature_seconds": round(run.project.stage_info("features").get("seconds", 0), 1),
                "command": run.command,
            }
            print(f"  [{enc}] {n} tissue patches; ours = `{run.command}`")
            try:
                rows = tuple(ABLATIONS) if args.all_ablations else MAIN_ROWS
                entry["methods"][enc] = run_methods(run, seeds, rows=rows)
            except ProtorefineError as exc:  # what `protorefine refine` says to a user: a result
                entry["refused"] = {**entry.get("refused", {}), enc: str(exc)}
                print(f"    refine refuses this cohort: {exc}")
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
