"""Compare protorefine's mask tracing (``annotations.vectorize``) with ``rasterio.features.shapes``.

Same masks for both: blobby tumour-like regions with holes, and a noisy mask with many
small parts. Checks that both give the same polygons (same count, same parts, and the
union of each side's polygons equal, point set by point set) and times each, best of
``--repeat`` runs. Since protorefine traces with rasterio itself (this comparison chose it:
docs/benchmarks.md keeps the figures of the shapely edge tracer it replaced), the gap is
what ``vectorize`` adds (scaling, annotations) over the bare call.

    python benchmarks/vectorize_rasterio.py [--side 3000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import shapely
from scipy import ndimage as ndi
from shapely.geometry import shape

from protorefine.annotations import vectorize


def _masks(side: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    blobby = ndi.gaussian_filter(rng.standard_normal((side, side)), side / 100)
    noisy = ndi.gaussian_filter(rng.standard_normal((side, side)), 2.0)
    return {
        "blobby": blobby > 0.1 * blobby.std(),
        "noisy": noisy > 0.5 * noisy.std(),
    }


def _best(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


def _ours(mask: np.ndarray) -> list:
    return [a.geometry for a in vectorize(mask, 1.0)]


def _rasterio(mask: np.ndarray) -> list:
    from rasterio import features

    m = mask.astype(np.uint8)
    return [shape(g) for g, v in features.shapes(m, mask=mask, connectivity=4) if v == 1]


def run(side: int, repeat: int) -> dict:
    """Timings (s) and polygon equality of both tracers on each test mask."""
    import rasterio

    res: dict = {
        "side": side,
        "rasterio": rasterio.__version__,
        "machine": platform.processor() or platform.machine(),
        "nproc": os.cpu_count(),
        "load": os.getloadavg()[0],
        "masks": {},
    }
    for name, mask in _masks(side).items():
        ours, t_ours = _best(lambda m=mask: _ours(m), repeat)
        theirs, t_rio = _best(lambda m=mask: _rasterio(m), repeat)
        # exact: rasterio's polygons follow pixel edges too; compare as point sets
        u_ours = shapely.union_all(ours)
        u_rio = shapely.union_all(theirs)
        same_set = bool(shapely.equals(u_ours, u_rio))
        key = lambda g: (round(g.area, 6), tuple(np.round(g.bounds, 6)))  # noqa: E731
        same_parts = sorted(map(key, ours)) == sorted(map(key, theirs))
        vertices = lambda gs: int(sum(shapely.get_num_coordinates(g) for g in gs))  # noqa: E731
        res["masks"][name] = {
            "set_pixels": int(mask.sum()),
            "polygons": [len(ours), len(theirs)],
            "vertices": [vertices(ours), vertices(theirs)],
            "same_union": same_set,
            "same_polygons": same_parts,
            "protorefine_s": round(t_ours, 3),
            "rasterio_s": round(t_rio, 3),
            "speedup": round(t_ours / t_rio, 2),
        }
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=3000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(run(args.side, args.repeat), indent=2))


if __name__ == "__main__":
    main()
