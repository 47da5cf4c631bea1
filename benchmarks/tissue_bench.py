"""Tissue detection on real H&E: how much tumour the tissue mask keeps, and how much glass it drops.

Tumour is always tissue, so on the tiles with a tumour mask (OCDC, CAMELYON) the share
of tumour pixels inside ``tissue_mask`` should be close to 1; the SVS slides show that
glass is still left out; the synthetic slides that pale stroma is kept.

    python benchmarks/tissue_bench.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    """Print one row per cohort: tumour pixels kept (mean, min) and the mask's tissue share."""
    from skimage.io import imread

    from protorefine.slides import open_slide, tissue_mask
    from protorefine.synthetic import synthetic_slide

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data", help="the shared data folder")
    args = ap.parse_args(argv)
    data = Path(args.data)
    print(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {platform.processor() or platform.machine()}"
    )
    print("| images | tumour pixels kept: mean | min | tissue share of the image |")
    print("|---|---|---|---|")
    for cohort in ("ocdc", "camelyon-tiles"):
        kept, share = [], []
        for image in sorted((data / cohort / "images").glob("*.jpg")):
            mask, _ = tissue_mask(open_slide(image))
            truth = imread(data / cohort / "masks" / f"{image.stem}.png") > 127
            share.append(mask.mean())
            if truth.any():
                kept.append(mask[truth].mean())
        print(
            f"| {cohort} ({len(share)} tiles) | {np.mean(kept):.3f} | {np.min(kept):.3f} | {np.mean(share):.3f} |"
        )
    for svs in sorted((data / "slides").glob("*.svs")):
        try:
            mask, _ = tissue_mask(open_slide(svs))
        except Exception as exc:  # broken.svs
            print(f"| {svs.name} | – | – | not readable ({type(exc).__name__}) |")
            continue
        print(f"| {svs.name} | – | – | {mask.mean():.3f} |")
    for seed in (0, 1, 2):
        slide, _, _ = synthetic_slide((1536, 1536), seed=seed)
        mask, down = tissue_mask(slide)
        thumb = np.asarray(slide.levels[0])[:: int(down), :: int(down)][
            : mask.shape[0], : mask.shape[1]
        ]
        not_white = thumb.min(axis=2) < 215
        print(
            f"| synthetic seed {seed} (not-white pixels kept) | {mask[not_white].mean():.3f} | – "
            f"| {mask.mean():.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
