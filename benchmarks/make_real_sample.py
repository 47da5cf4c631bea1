"""Write the real H&E sample the package ships (``src/protorefine/data/``).

One canvas laid out as the ``camelyon-canvas`` cohort lays them (benchmarks/cohorts.py):
pure-tumour and pure-normal squares cut from the CAMELYON tiles (CC0) in
``../shared/data/camelyon-tiles``, placed along a random smooth tumour map, which is
the truth; the coarse outline is simulated from it at the cohort's coarse Dice (about
0.78). Written as a JPEG-compressed tiled pyramidal TIFF at 0.5 µm/px with the two
outlines as QuPath GeoJSON, a few MB in all.

    python benchmarks/make_real_sample.py [--squares 12] [--seed 7] [--out src/protorefine/data]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cohorts import DATA, REPO, add_coarse, build_canvas_cohort  # noqa: E402

MPP = 0.5
TILE = 256
NAME = "camelyon_sample"


def _down2(a: np.ndarray) -> np.ndarray:
    """Half size by 2x2 means (the pyramid's next level)."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    b = a[:h, :w].astype(np.uint16)
    return ((b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2] + 2) // 4).astype(
        np.uint8
    )


def write_tiff(path: Path, image: np.ndarray) -> None:
    """A tiled JPEG TIFF with a 2x pyramid down to 1024 px or less, pixel size in its tags."""
    levels = [image]
    while max(levels[-1].shape[:2]) > 1024:
        levels.append(_down2(levels[-1]))
    res = 1e4 / MPP
    with tifffile.TiffWriter(path) as tw:
        for i, level in enumerate(levels):
            tw.write(
                level,
                tile=(TILE, TILE),
                photometric="rgb",
                compression="jpeg",
                compressionargs={"level": 85},
                subifds=len(levels) - 1 if i == 0 else None,
                subfiletype=1 if i else 0,
                resolution=(res / 2**i, res / 2**i),
                resolutionunit="CENTIMETER",
                description=f"protorefine CAMELYON sample|MPP = {MPP}" if i == 0 else None,
            )


def main(argv: list[str] | None = None) -> int:
    """Build the canvas, simulate its coarse outline, write the three files."""
    from protorefine.annotations import AnnotationSet, vectorize, write_geojson

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--squares", type=int, default=12, help="canvas side in 128 px squares")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", default=str(REPO / "src" / "protorefine" / "data"))
    args = ap.parse_args(argv)
    slides, notes = build_canvas_cohort(
        DATA / "camelyon-tiles",
        n_slides=1,
        squares=args.squares,
        size=128,
        patch_size=64,
        seed=args.seed,
        offset=48,
    )
    info = add_coarse(slides, args.seed)
    (s,) = slides
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_tiff(out / f"{NAME}.tif", s.image)
    truth = vectorize(s.truth, s.eval_downsample)
    write_geojson(AnnotationSet(list(truth)), out / f"{NAME}_truth.geojson")
    write_geojson(s.coarse, out / f"{NAME}_coarse.geojson")
    print(f"{s.image.shape[1]}x{s.image.shape[0]} px from {len(s.sources)} tiles; {notes}")
    print(f"coarse Dice against the truth {info['coarse_dice']:.3f}")
    for p in sorted(out.glob(f"{NAME}*")):
        print(f"{p}: {p.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
