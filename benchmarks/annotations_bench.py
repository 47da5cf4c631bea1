"""Time annotation rasterise / vectorise and GeoJSON / ASAP / mask I/O at slide scale.

Targets (2 CPU cores): rasterising a 20,000-vertex outline of a 100,000 x 100,000
slide to a downsample-16 mask (6250 x 6250) in under 1 s; vectorising a 4096 x 4096
blobby mask in under 3 s; exact round trip in both.

    python benchmarks/annotations_bench.py [--side 4096] [--vertices 20000]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from shapely.geometry import Polygon

from protorefine.annotations import (
    Annotation,
    AnnotationSet,
    rasterize,
    read_annotations,
    smooth_outline,
    vectorize,
    write_asap_xml,
    write_geojson,
    write_mask,
)


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def _rings(geom):
    """Every ring (exterior and holes) of a polygon or multipolygon."""
    for p in getattr(geom, "geoms", [geom]):
        yield p.exterior
        yield from p.interiors


def run(side: int, vertices: int) -> dict:
    """Return timings (s), sizes and exactness checks for the annotation functions."""
    res: dict = {"machine": platform.processor() or platform.machine(), "side": side}
    rng = np.random.default_rng(0)
    field = ndi.gaussian_filter(rng.standard_normal((side, side)), side / 100)
    mask = field > 0.1 * field.std()
    annset, res["vectorize_s"] = _timed(vectorize, mask, 1)
    res["vectorize_regions"] = len(annset)
    res["vectorize_vertices"] = int(
        sum(
            len(np.asarray(p.exterior.coords))
            for a in annset
            for p in getattr(a.geometry, "geoms", [a.geometry])
        )
    )
    back, res["rasterize_mask_s"] = _timed(rasterize, annset, mask.shape, 1)
    res["mask_round_trip_exact"] = bool(np.array_equal(back, mask))
    smooth, res["smooth_outline_s"] = _timed(
        lambda: AnnotationSet([Annotation(smooth_outline(a.geometry, 1.0)) for a in annset])
    )
    res["smooth_vertices"] = int(
        sum(len(np.asarray(r.coords)) for a in smooth for r in _rings(a.geometry))
    )
    res["smooth_round_trip_exact"] = bool(np.array_equal(rasterize(smooth, mask.shape, 1), mask))

    t = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = 35_000 + 8_000 * np.sin(9 * t) + 2_000 * np.cos(57 * t)
    outline = AnnotationSet(
        [Annotation(Polygon(np.c_[50_000 + r * np.cos(t), 50_000 + r * np.sin(t)]))]
    )
    big, res["rasterize_outline_ds16_s"] = _timed(rasterize, outline, (100_000, 100_000), 16)
    res["rasterize_outline_shape"] = list(big.shape)

    with tempfile.TemporaryDirectory() as d:
        for name, writer in (("a.geojson", write_geojson), ("a.xml", write_asap_xml)):
            _, res[f"write_{name}_s"] = _timed(writer, annset, Path(d) / name)
            _, res[f"read_{name}_s"] = _timed(read_annotations, Path(d) / name)
            res[f"{name}_MB"] = round((Path(d) / name).stat().st_size / 1e6, 2)
        _, res["write_mask_png_s"] = _timed(write_mask, annset, Path(d) / "m.png", mask.shape, 1)
        _, res["read_mask_png_s"] = _timed(read_annotations, Path(d) / "m.png")
    res["peak_rss_MB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in res.items()}


def main() -> None:
    """Command-line entry: print the timings as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=4096, help="side of the square test mask")
    ap.add_argument("--vertices", type=int, default=20_000, help="vertices of the test outline")
    args = ap.parse_args()
    print(json.dumps(run(args.side, args.vertices), indent=1))


if __name__ == "__main__":
    main()
