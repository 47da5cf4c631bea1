"""Benchmark: convert a large pyramidal JPEG TIFF to OME-Zarr; peak RSS and throughput.

Usage: ``python benchmarks/convert_bench.py [TIFF] [--size 32768] [--out DIR] [--workers N]``

Creates the TIFF with ``make_big_tiff`` when it is absent. Runs, each in a fresh
child process that reports its own peak RSS (``resource.getrusage``):

1. raw decode: tifffile decodes every level-0 tile of the file (``TiffPage.segments``),
   the floor any converter pays;
2. ``convert_to_ome_zarr`` of the whole slide (level 0 plus all reduced levels).

Prints a JSON summary with times, MP/s, the ratio convert/raw-decode throughput
(level-0 pixels per second) and peak RSS. Targets: peak RSS < 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_big_tiff import DEFAULT_PATH, DEFAULT_SIZE, make_big_tiff  # noqa: E402


def _peak_rss_mb() -> float:
    """Peak resident set size of this process in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def child_decode(path: str, workers: int) -> dict:
    """Decode every level-0 tile with tifffile, keeping nothing; return time and peak RSS."""
    import tifffile

    t0 = time.perf_counter()
    n = 0
    with tifffile.TiffFile(path) as tf:
        page = tf.pages.first
        for segment, _index, _shape in page.segments(maxworkers=workers):
            if segment is not None:
                n += 1
        shape = page.shape
    return {
        "seconds": time.perf_counter() - t0,
        "tiles": n,
        "pixels": int(shape[0]) * int(shape[1]),
        "peak_rss_mb": _peak_rss_mb(),
    }


def child_convert(path: str, out: str, tile: int) -> dict:
    """Convert with protorefine and return time, level shapes, output size and peak RSS."""
    from protorefine.slides import convert_to_ome_zarr, open_slide

    t0 = time.perf_counter()
    slide = open_slide(path)
    target = convert_to_ome_zarr(slide, out, tile=tile)
    seconds = time.perf_counter() - t0
    back = open_slide(target)
    size = sum(p.stat().st_size for p in Path(target).rglob("*") if p.is_file())
    return {
        "seconds": seconds,
        "pixels": slide.shape[0] * slide.shape[1],
        "levels": [list(lvl.shape[:2]) for lvl in back.levels],
        "output_mb": size / 1e6,
        "peak_rss_mb": _peak_rss_mb(),
    }


def _run_child(*args: str) -> dict:
    """Run this script in child mode and parse its JSON line."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    proc = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tiff", nargs="?", default=str(DEFAULT_PATH))
    parser.add_argument(
        "--size", type=int, default=DEFAULT_SIZE, help="side when the TIFF is created"
    )
    parser.add_argument("--out", default=None, help="output folder (default: beside the TIFF)")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--keep", action="store_true", help="keep the converted OME-Zarr")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        mode, *rest = args.child
        if mode == "decode":
            result = child_decode(rest[0], int(rest[1]))
        else:
            result = child_convert(rest[0], rest[1], int(rest[2]))
        print(json.dumps(result))
        return 0

    tiff = Path(args.tiff)
    t0 = time.perf_counter()
    make_big_tiff(tiff, args.size)
    made = time.perf_counter() - t0
    out = Path(args.out) if args.out else tiff.parent / f"{tiff.stem}.bench.zarr"
    shutil.rmtree(out, ignore_errors=True)

    decode = _run_child("decode", str(tiff), str(args.workers))
    convert = _run_child("convert", str(tiff), str(out), str(args.tile))
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)

    mp = decode["pixels"] / 1e6
    summary = {
        "file": str(tiff),
        "file_mb": round(tiff.stat().st_size / 1e6, 1),
        "tiff_seconds_to_make_or_check": round(made, 1),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "workers": args.workers,
        "raw_decode_s": round(decode["seconds"], 1),
        "raw_decode_mp_per_s": round(mp / decode["seconds"], 1),
        "raw_decode_peak_rss_mb": round(decode["peak_rss_mb"]),
        "convert_s": round(convert["seconds"], 1),
        "convert_mp_per_s_level0": round(mp / convert["seconds"], 1),
        "throughput_ratio_convert_vs_decode": round(decode["seconds"] / convert["seconds"], 3),
        "convert_peak_rss_mb": round(convert["peak_rss_mb"]),
        "levels": convert["levels"],
        "output_mb": round(convert["output_mb"], 1),
        "target_peak_rss_under_1500_mb": convert["peak_rss_mb"] < 1500,
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
