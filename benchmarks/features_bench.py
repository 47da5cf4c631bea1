"""Feature extraction speed: the whole of extract_features against the encoder alone.

A slide with about 2000 tissue patches (224 px) is built once from the real
CAMELYON tiles in ``../shared/data`` (a disc of tissue tiles, flipped and rotated,
on white glass; falls back to the synthetic slide when the data is absent),
written as OME-Zarr and opened through ``open_slide`` like any user slide. For
each encoder at its default input size it measures

* ``alone``: patches/s of ``encoder.embed`` on the same patches preloaded in memory
  (already at the encoder's input size; with 1 and with all intra-op threads), and
* ``whole``: patches/s of ``extract_features`` (reading from zarr, resizing,
  embedding) with each loader,

alternating the runs ``--repeats`` times (the best of each counts, as the machine
is shared), and prints the ratio whole / best alone (target >= 0.8: reading and resizing hidden
behind the encoder). ``--loaders thread:1@1`` pins the encoder to one thread
(the default lets ``extract_features`` choose, see ``cpu_threads``). Usage::

    .venv/bin/python benchmarks/features_bench.py [--patches 2000] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import dask.array as da
import numpy as np
import torch

from protorefine.features import extract_features, get_encoder, make_grid, read_patches
from protorefine.slides import Slide, convert_to_ome_zarr, open_slide

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PROTOREFINE_DATA", REPO.parent / "shared" / "data"))
TILE = 512


def _tile_mosaic(n_cells: int, seed: int) -> tuple[da.Array, int]:
    """Lazy (H, W, 3) mosaic: a disc of real H&E tiles on white, about n_cells 224-px tissue cells."""
    from skimage.io import imread

    files = sorted((DATA / "camelyon-tiles" / "images").glob("*.jpg"))
    tiles = [np.ascontiguousarray(imread(f)[:TILE, :TILE, :3]) for f in files]
    # a disc covers pi/4 of its square; choose the side so the disc holds n_cells 224-px cells
    side_cells = int(np.ceil(np.sqrt(n_cells / (np.pi / 4)))) + 1
    n_tiles = int(np.ceil(side_cells * 224 / TILE))
    rng = np.random.default_rng(seed)
    choice = rng.integers(0, len(tiles), (n_tiles, n_tiles))
    turns = rng.integers(0, 8, (n_tiles, n_tiles))
    centre = (n_tiles - 1) / 2
    radius = n_tiles / 2

    def block(block_id: tuple[int, int, int] | None = None) -> np.ndarray:
        i, j = block_id[0], block_id[1]
        if np.hypot(i - centre, j - centre) > radius:
            return np.full((TILE, TILE, 3), 242, dtype=np.uint8)
        t = np.rot90(tiles[choice[i, j]], turns[i, j] % 4)
        return np.ascontiguousarray(t[:, ::-1] if turns[i, j] >= 4 else t)

    size = n_tiles * TILE
    arr = da.map_blocks(
        lambda block_id=None: block(block_id),
        chunks=((TILE,) * n_tiles, (TILE,) * n_tiles, (3,)),
        dtype=np.uint8,
        meta=np.empty((0, 0, 0), np.uint8),
    )
    return arr, size


def bench_slide(workdir: Path, n_cells: int) -> Slide:
    """The benchmark slide as OME-Zarr in ``workdir`` (built once), opened like a user's slide."""
    out = workdir / f"features_bench_{n_cells}.ome.zarr"
    if not out.exists():
        if (DATA / "camelyon-tiles" / "images").is_dir():
            arr, _ = _tile_mosaic(n_cells, seed=0)
            src = Slide(path=Path("mosaic"), name="mosaic", levels=[arr], mpp=0.5, backend="dask")
        else:
            from protorefine.synthetic import synthetic_slide

            side = int(np.ceil(np.sqrt(n_cells * 1.3))) * 224
            src, _, _ = synthetic_slide((side, side), seed=0)
        convert_to_ome_zarr(src, out)
    return open_slide(out)


def _rate(n: int, seconds: float) -> float:
    """Patches per second."""
    return n / seconds if seconds > 0 else float("inf")


def time_alone(encoder, patches: np.ndarray, batch_size: int, threads: int) -> float:
    """Patches/s of encoder.embed on preloaded patches with ``threads`` intra-op threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        encoder.embed(patches[:batch_size])  # warm-up
        t = time.perf_counter()
        for i in range(0, len(patches), batch_size):
            encoder.embed(patches[i : i + batch_size])
        return _rate(len(patches), time.perf_counter() - t)
    finally:
        torch.set_num_threads(before)


def time_whole(
    slide, grid, encoder, batch_size: int, loader: str, workers: int, threads: int | None = None
) -> float:
    """Patches/s of extract_features over the grid's tissue patches."""
    t = time.perf_counter()
    feats = extract_features(
        slide,
        grid,
        encoder,
        batch_size=batch_size,
        loader=loader,
        num_workers=workers,
        threads=threads,
    )
    return _rate(len(feats), time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print one table (and optionally JSON)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", type=int, default=2000, help="tissue patches wanted (about)")
    ap.add_argument("--encoders", default="efficientnet-lite0,colour-texture")
    ap.add_argument(
        "--loaders",
        default="thread:1,inline:0,process:1",
        help="loader:readers[@threads] (threads: the encoder's; default extract_features' choice)",
    )
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="alternating repeats; best counts (0: CPU time per patch only)",
    )
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/protorefine-bench"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    slide = bench_slide(args.workdir, args.patches)
    grid = make_grid(slide, patch_size=224)
    n = int(grid.tissue.sum())
    load = os.getloadavg()
    print(
        f"slide {slide.shape} from {slide.path.name}, {grid.rows}x{grid.cols} grid, {n} tissue "
        f"patches (built in {time.perf_counter() - t0:.1f} s); cpus={os.cpu_count()} "
        f"load={load[0]:.2f},{load[1]:.2f},{load[2]:.2f} torch={torch.__version__}",
        flush=True,
    )
    results = []
    for name in args.encoders.split(","):
        enc = get_encoder(name, device=args.device)
        c0 = time.process_time()
        patches = read_patches(slide, grid, grid.tissue_index, enc.input_size)
        read_cpu = (time.process_time() - c0) / len(patches) * 1000
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        c0 = time.process_time()
        for i in range(0, len(patches), args.batch_size):
            enc.embed(patches[i : i + args.batch_size])
        encode_cpu = (time.process_time() - c0) / len(patches) * 1000
        torch.set_num_threads(before)
        print(
            f"{name}: CPU time per patch (1 thread, load-independent): read+resize "
            f"{read_cpu:.2f} ms, encode {encode_cpu:.2f} ms",
            flush=True,
        )
        cores = os.cpu_count() or 1
        threads = sorted({1, cores})
        specs = args.loaders.split(",")
        alone: dict[int, list[float]] = {t: [] for t in threads}
        whole: dict[str, list[float]] = {s: [] for s in specs}
        # alternate the measurements so drifting load on a shared machine hits all alike
        for rep in range(args.repeats):
            for t in threads:
                alone[t].append(time_alone(enc, patches, args.batch_size, t))
            for spec in specs:
                loader, _, rest = spec.partition(":")
                w, _, th = rest.partition("@")
                whole[spec].append(
                    time_whole(
                        slide,
                        grid,
                        enc,
                        args.batch_size,
                        loader,
                        int(w or 1),
                        int(th) if th else None,
                    )
                )
            print(
                f"{name} @{enc.input_size} {enc.device} rep {rep + 1}: alone "
                + ", ".join(f"{v[-1]:.1f}/s ({k} thr)" for k, v in alone.items())
                + "; whole "
                + ", ".join(f"{v[-1]:.1f}/s ({k})" for k, v in whole.items()),
                flush=True,
            )
        if args.repeats < 1:  # CPU time per patch only
            results.append(
                {
                    "encoder": name,
                    "read_cpu_ms": round(read_cpu, 3),
                    "encode_cpu_ms": round(encode_cpu, 3),
                }
            )
            continue
        best_alone = max(max(v) for v in alone.values())
        row = {
            "encoder": name,
            "input_size": enc.input_size,
            "device": str(enc.device),
            "alone": {str(k): [round(x, 1) for x in v] for k, v in alone.items()},
            "whole": {k: [round(x, 1) for x in v] for k, v in whole.items()},
            "best_alone": round(best_alone, 1),
            "read_cpu_ms": round(read_cpu, 3),
            "encode_cpu_ms": round(encode_cpu, 3),
            "ratio_best": {k: round(max(v) / best_alone, 3) for k, v in whole.items()},
        }
        for spec in specs:
            print(
                f"  {name}: extract_features loader={spec:10s} best {max(whole[spec]):7.1f}/s  "
                f"ratio {max(whole[spec]) / best_alone:.2f} (encoder alone best {best_alone:.1f}/s)",
                flush=True,
            )
        results.append(row)
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()} cpus={os.cpu_count()}",
        "cpu": _cpu_name(),
        "load_before": [round(v, 2) for v in load],
        "load_after": [round(v, 2) for v in os.getloadavg()],
        "patches": n,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "results": results,
    }
    print(f"load after: {report['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _cpu_name() -> str:
    """The CPU model name (Linux), for the record."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
