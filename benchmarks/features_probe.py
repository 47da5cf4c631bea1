"""Linear probe: how well each encoder's features separate tumour from normal on real tiles.

Cuts 224-px patches (stride 144) from the CAMELYON tiles in ``../shared/data``,
keeps those at least 95% tumour or 95% normal by the mask, embeds them with each
encoder, L2-normalises, and reports the balanced accuracy of a logistic regression
in 5-fold cross-validation grouped by tile (no tile in both train and test)::

    .venv/bin/python benchmarks/features_probe.py [--encoders colour-texture:112,efficientnet-lite0:112]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from skimage.io import imread
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score

from protorefine.features import get_encoder

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PROTOREFINE_DATA", REPO.parent / "shared" / "data"))


def pure_patches(folder: Path, size: int = 224, step: int = 144):
    """(patches, labels, tile index) of pure-tumour and pure-normal patches."""
    xs, ys, groups = [], [], []
    for k, f in enumerate(sorted((folder / "images").glob("*.jpg"))):
        img = imread(f)[..., :3]
        mask = imread(folder / "masks" / f"{f.stem}.png") > 127
        mask = mask[..., 0] if mask.ndim == 3 else mask
        for y in range(0, img.shape[0] - size + 1, step):
            for x in range(0, img.shape[1] - size + 1, step):
                frac = mask[y : y + size, x : x + size].mean()
                if frac > 0.95 or frac < 0.05:
                    xs.append(img[y : y + size, x : x + size])
                    ys.append(int(frac > 0.5))
                    groups.append(k)
    return np.stack(xs), np.array(ys), np.array(groups)


def main() -> int:
    """Print patches/s and grouped-CV balanced accuracy per encoder."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--encoders", default="colour-texture:112,efficientnet-lite0:112,efficientnet-lite0:224"
    )
    ap.add_argument("--data", type=Path, default=DATA / "camelyon-tiles")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y, groups = pure_patches(args.data)
    print(f"{len(y)} patches from {groups.max() + 1} tiles, {y.mean():.0%} tumour")
    for spec in args.encoders.split(","):
        name, _, size = spec.partition(":")
        enc = get_encoder(name, device="cpu", input_size=int(size) if size else None)
        t = time.perf_counter()
        f = np.concatenate([enc.embed(x[i : i + 64]) for i in range(0, len(x), 64)])
        rate = len(x) / (time.perf_counter() - t)
        f /= np.linalg.norm(f, axis=1, keepdims=True) + 1e-12
        clf = LogisticRegression(max_iter=2000)
        score = cross_val_score(
            clf, f, y, cv=GroupKFold(5), groups=groups, scoring="balanced_accuracy"
        )
        print(
            f"{name} @{enc.input_size}: balanced accuracy {score.mean():.3f} ({rate:.0f} patches/s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
