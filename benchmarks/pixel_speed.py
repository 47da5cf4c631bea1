"""Speed and memory of the pixel stage: dense features against per-patch crops, and the
default `protorefine refine` of a 4096² region at 0.25 µm/px.

Usage: ``python benchmarks/pixel_speed.py [--size 4096] [--device cpu] [--out DIR]``

1. Dense features (the pixel stage's encoder pass) and the per-patch crops of
   ``--patch-size 64 --stride 32`` (the finest grid of the patch stage) on the same region,
   in seconds per megapixel of the slide.
2. The whole default refine (a new project, every stage, no flags) of a synthetic region of
   ``--size``² pixels at 0.25 µm/px with its simulated coarse outline: wall seconds per stage
   and the peak resident memory of the process.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from protorefine.annotations import write_geojson  # noqa: E402
from protorefine.features import extract_features, get_encoder, make_grid  # noqa: E402
from protorefine.features.dense import DenseEncoder, dense_features, dense_grid  # noqa: E402
from protorefine.project import Project  # noqa: E402
from protorefine.refine.config import STAGE_ORDER  # noqa: E402
from protorefine.slides import open_slide  # noqa: E402
from protorefine.synthetic import simulate_coarse, synthetic_slide  # noqa: E402


def _slide_files(folder: Path, size: int) -> tuple[Path, Path, object]:
    """A synthetic region at 0.25 µm/px as a tiled TIFF with its coarse outline."""
    import numpy as np
    import tifffile

    slide, truth, ds = synthetic_slide((size, size), seed=5, mpp=0.25)
    tif, coarse = folder / "region.tif", folder / "region.geojson"
    tifffile.imwrite(
        tif,
        np.asarray(slide.levels[0]),
        photometric="rgb",
        tile=(256, 256),
        compression="zlib",
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    write_geojson(simulate_coarse(truth, ds, seed=5), coarse)
    return tif, coarse, slide


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    import torch

    result: dict = {"size": args.size, "device": args.device, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        tif, coarse, _ = _slide_files(Path(tmp), args.size)
        slide = open_slide(tif)  # both read the same tiled TIFF
        mp = args.size * args.size / 1e6
        # 1. dense features vs crops, same region, encoder already loaded
        enc = DenseEncoder(args.device)
        grid = dense_grid(slide, mpp=0.5, cell=16)
        t = time.perf_counter()
        dense_features(slide, grid, enc)
        dense_s = time.perf_counter() - t
        patch = get_encoder("efficientnet-lite0", device=args.device)
        pgrid = make_grid(slide, patch_size=64, stride=32, mpp=0.5, tissue=True)
        t = time.perf_counter()
        extract_features(slide, pgrid, patch, loader="thread")
        crops_s = time.perf_counter() - t
        result["dense_s_per_mp"] = round(dense_s / mp, 3)
        result["crops_stride32_s_per_mp"] = round(crops_s / mp, 3)
        result["dense_speedup"] = round(crops_s / dense_s, 2)
        print(
            f"dense features {dense_s:.1f} s ({dense_s / mp:.2f} s/MP); "
            f"p64 s32 crops {crops_s:.1f} s ({crops_s / mp:.2f} s/MP): {crops_s / dense_s:.1f}x"
        )
        # 2. the default refine, from a new project: the command a user runs, in its own process
        out_dir = Path(tmp) / "out"
        cmd = [sys.executable, "-m", "protorefine.cli", "refine", str(tif), "--coarse", str(coarse)]
        cmd += ["--out", str(out_dir), "--device", args.device]
        t = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:])
            return 1
        result["refine_s"] = round(time.perf_counter() - t, 1)
        result["refine_command"] = "protorefine refine region.tif --coarse region.geojson --out OUT"
        project = Project.open(out_dir / "project")
        result["stages_s"] = {
            k: round(float(project.stage_info(k).get("seconds", 0)), 1) for k in STAGE_ORDER
        }
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        result["refine_peak_rss_mb"] = round(rss)
        print(f"default refine of {args.size}² at 0.25 µm/px: {result['refine_s']} s {result}")
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pixel_speed_{args.device}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
