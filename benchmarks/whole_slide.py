"""Whole-slide scale: a pyramidal TIFF of ``--size``² pixels at 0.25 µm/px laid from the real
CAMELYON tiles (tissue over about 40 % of it, tumour regions inside, glass around), refined end
to end by ``protorefine refine`` at default flags in its own process: wall seconds per stage,
peak resident memory, and the refined outline's Dice against the map it was laid from.

Usage: ``python benchmarks/whole_slide.py [--size 32768] [--device cpu] [--keep DIR]``

The slide is written tile by tile (JPEG, 512² tiles, a level per halving down to 1024 px), so
building it needs little memory whatever its size. Its truth is the square map (64 µm
squares): straight boundaries, so the Dice is a sanity check at scale, not a quality figure
(docs/benchmarks.md has those, from real boundaries).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

import cohorts as C  # noqa: E402

from protorefine.annotations import rasterize, write_geojson  # noqa: E402
from protorefine.project import Project  # noqa: E402
from protorefine.refine.config import STAGE_ORDER  # noqa: E402
from protorefine.synthetic import simulate_coarse  # noqa: E402

MPP = 0.25
SQUARE = 256  # level-0 pixels per map cell (64 µm)
TILE = 512
GLASS = 0


def square_bank(rng: np.random.Generator) -> dict[int, list[np.ndarray]]:
    """Pure tumour (2) and normal (1) squares of the CAMELYON tiles (0.5 µm/px, 128 px),
    upsampled to SQUARE at 0.25 µm/px."""
    bank: dict[int, list[np.ndarray]] = {1: [], 2: []}
    for _, img, mask in C._tile_pairs(C.DATA / "camelyon-tiles"):
        im, m = C._read_tile(img, mask)
        cut = C.cut_squares(im, m, SQUARE // 2)
        bank[1] += cut[0]
        bank[2] += cut[1]
    if not bank[1] or not bank[2]:
        raise SystemExit(f"no CAMELYON tiles under {C.DATA / 'camelyon-tiles'}")
    for k in bank:
        rng.shuffle(bank[k])
        bank[k] = [np.kron(sq, np.ones((2, 2, 1), np.uint8)) for sq in bank[k][:400]]
    return bank


def class_map(cells: int, rng: np.random.Generator) -> np.ndarray:
    """(cells, cells) 0 glass, 1 normal tissue, 2 tumour: one tissue section (a smooth blob
    over about 40 % of the slide) with tumour regions inside it."""
    field = ndi.gaussian_filter(rng.standard_normal((cells, cells)), cells / 6, mode="constant")
    yy, xx = np.mgrid[:cells, :cells] / cells - 0.5
    field = field / field.std() - 6 * (yy**2 + xx**2)  # one section near the middle
    tissue = field > np.quantile(field, 0.6)
    tissue = ndi.binary_fill_holes(ndi.binary_opening(tissue, iterations=2))
    tumour = C.tumour_map((cells, cells), rng, fraction=0.35) & ndi.binary_erosion(
        tissue, iterations=3
    )
    return np.where(tumour, 2, np.where(tissue, 1, GLASS)).astype(np.uint8)


def write_slide(path: Path, cmap: np.ndarray, bank, rng: np.random.Generator) -> None:
    """The class map painted with squares as a pyramidal tiled TIFF, one 512² tile at a time."""
    import tifffile

    cells = cmap.shape[0]
    size = cells * SQUARE
    pick = rng.integers(0, 1 << 30, cmap.shape)  # which square, rotation, flip per map cell
    levels = [1]
    while size // (2 * levels[-1]) >= 1024:
        levels.append(2 * levels[-1])

    def square(i: int, j: int, f: int) -> np.ndarray:
        c = int(cmap[i, j])
        if c == GLASS:
            return np.full((SQUARE // f, SQUARE // f, 3), 236, np.uint8)
        pool = bank[c]
        sq = np.rot90(pool[pick[i, j] % len(pool)], int(pick[i, j] // 7 % 4))
        return sq[::f, ::f] if f > 1 else sq

    def tiles(f: int):
        side = size // f
        per = SQUARE // f  # pixels of a map cell at this level
        for y in range(0, side, TILE):
            for x in range(0, side, TILE):
                out = np.full((TILE, TILE, 3), 236, np.uint8)
                for i in range(y // per, min(cells, (y + TILE - 1) // per + 1)):
                    for j in range(x // per, min(cells, (x + TILE - 1) // per + 1)):
                        sq = square(i, j, f)
                        ya, xa = i * per - y, j * per - x
                        ys, xs = max(0, ya), max(0, xa)
                        ye, xe = min(TILE, ya + per), min(TILE, xa + per)
                        out[ys:ye, xs:xe] = sq[ys - ya : ye - ya, xs - xa : xe - xa]
                yield out

    res = (1e4 / MPP, 1e4 / MPP)
    opts = dict(
        photometric="rgb", tile=(TILE, TILE), compression="jpeg", compressionargs={"level": 90}
    )
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(
            tiles(1),
            shape=(size, size, 3),
            dtype=np.uint8,
            subifds=len(levels) - 1,
            resolution=res,
            resolutionunit="CENTIMETER",
            **opts,
        )
        for f in levels[1:]:
            tw.write(
                tiles(f),
                shape=(size // f, size // f, 3),
                dtype=np.uint8,
                subfiletype=1,
                resolution=(res[0] / f, res[1] / f),
                resolutionunit="CENTIMETER",
                **opts,
            )


def watch_rss(proc: subprocess.Popen, t0: float) -> dict:
    """Wait for ``proc``, sampling its resident memory; when (seconds after ``t0``) it peaked."""
    peak = {"mb": 0.0, "at_s": 0.0}
    status = Path(f"/proc/{proc.pid}/status")
    while proc.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmRSS:"):
                    mb = int(line.split()[1]) / 1024
                    if mb > peak["mb"]:
                        peak = {"mb": mb, "at_s": round(time.perf_counter() - t0, 1)}
        except OSError:
            pass
        time.sleep(0.2)
    return peak


def stage_at(project: Project, at_s: float, total_s: float) -> str:
    """The stage that ran ``at_s`` seconds into the command, from the stages' own durations
    (the time before the first stage, opening the slide and the project, counted first)."""
    times = [(k, float(project.stage_info(k).get("seconds", 0))) for k in STAGE_ORDER]
    t = total_s - sum(s for _, s in times)
    if at_s < t:
        return "start"
    for name, seconds in times:
        t += seconds
        if at_s <= t:
            return name
    return "end"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--size", type=int, default=32768, help="slide side in pixels (multiple of 256)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--keep", help="build the slide and project in this folder and keep them")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    cells = args.size // SQUARE
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="whole-slide-"))
    folder.mkdir(parents=True, exist_ok=True)
    tif, coarse = folder / f"slide{args.size}.tif", folder / f"slide{args.size}.geojson"
    cmap = class_map(cells, rng)
    truth = cmap == 2
    t = time.perf_counter()
    if not tif.exists():
        write_slide(tif, cmap, square_bank(rng), rng)
    build_s = time.perf_counter() - t
    write_geojson(simulate_coarse(truth, SQUARE, strength=0.6, seed=0), coarse)  # Dice ~0.83
    out_dir = folder / "out"
    cmd = [sys.executable, "-m", "protorefine.cli", "refine", str(tif), "--coarse", str(coarse)]
    cmd += ["--out", str(out_dir), "--device", args.device]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        peak = watch_rss(proc, t)
        refine_s = time.perf_counter() - t
        if proc.returncode != 0:
            err.seek(0)
            print(err.read()[-3000:])
            return 1
    project = Project.open(out_dir / "project")
    sid = project.slides[0].id
    shape = project.slide(sid).shape
    ds = SQUARE // 8  # score on an 8 µm grid
    refined = rasterize(project.refined_annotations(sid), shape, ds)
    coarse_m = rasterize(project.coarse(sid), shape, ds)
    truth_m = np.kron(truth, np.ones((SQUARE // ds,) * 2, bool))[
        : refined.shape[0], : refined.shape[1]
    ]
    tissue_m = np.kron(cmap > 0, np.ones((SQUARE // ds,) * 2, bool))[
        : refined.shape[0], : refined.shape[1]
    ]
    result = {
        "size": args.size,
        "mpp": MPP,
        "tissue_share": round(float((cmap > 0).mean()), 3),
        "tumour_share_of_tissue": round(float(truth.sum() / max(1, (cmap > 0).sum())), 3),
        "build_s": round(build_s, 1),
        "refine_s": round(refine_s, 1),
        "stages_s": {
            k: round(float(project.stage_info(k).get("seconds", 0)), 1) for k in STAGE_ORDER
        },
        "refine_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        "peak_rss_at_s": peak["at_s"],
        "peak_rss_in_stage": stage_at(project, peak["at_s"], refine_s),
        "dice_coarse": round(C.dice(coarse_m, truth_m, tissue_m), 4),
        "dice_refined": round(C.dice(refined, truth_m, tissue_m), 4),
        "command": f"protorefine refine slide{args.size}.tif --coarse slide{args.size}.geojson --out OUT --device {args.device}",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(json.dumps(result, indent=1))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"whole_slide_{args.size}_{args.device}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
