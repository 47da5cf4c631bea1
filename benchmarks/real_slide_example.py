"""The refinement on a real tumour section: a coarse outline around one carcinoma region of
the TCGA slide in ``../shared/data/slides``, refined by ``protorefine refine``, drawn over the slide.

No ground truth exists for this slide; the figure is for looking at (does the outline follow
the tumour nests and leave out the stroma?), not a score.

    python benchmarks/real_slide_example.py [--data ../shared/data] [--out /tmp/real-slide]
        [--png docs/screenshots/real_slide_refined.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

SLIDE = "slides/TCGA-CR-7395-01A-01-TS1.svs"
#: A quick coarse outline around the left carcinoma region, level-0 pixels (x, y).
COARSE = [(146, 1528), (546, 873), (1274, 728), (1601, 1092), (1528, 2183), (1092, 2620),
          (437, 2474), (146, 2038)]  # fmt: skip


def outline(mask: np.ndarray, width: int = 2) -> np.ndarray:
    """Pixels on the inside edge of a mask, ``width`` thick."""
    return mask & ~ndi.binary_erosion(mask, iterations=width)


def main(argv: list[str] | None = None) -> int:
    """Refine the coarse outline, print the run's time, write the overlay PNG."""
    import imageio.v3 as iio
    from shapely.geometry import Polygon
    from skimage.transform import resize

    from protorefine.annotations import (
        Annotation,
        AnnotationSet,
        rasterize,
        read_geojson,
        write_geojson,
    )
    from protorefine.cli import main as cli
    from protorefine.slides import open_slide

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data", help="the shared data folder")
    ap.add_argument("--out", default="/tmp/real-slide", help="output folder")
    ap.add_argument("--png", default="docs/screenshots/real_slide_refined.png")
    ap.add_argument("--encoder", default="efficientnet-lite0+colour-texture")
    args = ap.parse_args(argv)
    slide_path = Path(args.data) / SLIDE
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    coarse = out / f"{slide_path.stem}.geojson"
    write_geojson(AnnotationSet([Annotation(Polygon(COARSE))]), coarse)
    t0 = time.perf_counter()
    argv_ = ["refine", str(slide_path), "--coarse", str(coarse), "--out", str(out / "refined")]
    rc = cli([*argv_, "--patch-size", "64", "--level", "1", "--encoder", args.encoder])
    if rc:
        return rc
    print(f"refine: {time.perf_counter() - t0:.1f} s (resumed if {args.out} held a finished run)")
    refined = read_geojson(out / "refined" / f"{slide_path.stem}.geojson")
    slide = open_slide(slide_path)
    level = len(slide.levels) - 1
    d = slide.downsamples[level]
    h, w = slide.levels[level].shape[:2]
    img = slide.read_region(level, 0, 0, h, w)
    for annset, colour in ((read_geojson(coarse), (40, 60, 230)), (refined, (0, 190, 0))):
        img[outline(rasterize(annset, slide.shape, d)[:h, :w], 3)] = colour
    y0, y1, x0, x1 = (int(v / d) for v in (550, 2800, 0, 1800))
    crop = img[y0:y1, x0:x1]
    scale = 640 / crop.shape[1]
    crop = (resize(crop, (round(crop.shape[0] * scale), 640), anti_aliasing=True) * 255).astype(
        np.uint8
    )
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.png, crop)
    print(f"wrote {args.png} ({crop.shape[1]} x {crop.shape[0]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
