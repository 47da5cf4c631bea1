"""``protorefine convert``: slides to OME-Zarr pyramids."""

from __future__ import annotations

import argparse
from pathlib import Path

from protorefine.cli.progress import tqdm_progress
from protorefine.slides import convert_to_ome_zarr, open_slide


def convert_command(args: argparse.Namespace) -> int:
    """Convert each slide to ``OUT/<stem>.zarr`` and print where it went."""
    out = Path(args.out)
    for path in args.slides:
        slide = open_slide(path)
        progress, close = tqdm_progress(f"convert {slide.name}")
        try:
            target = convert_to_ome_zarr(
                slide, out / f"{slide.name}.zarr", tile=args.tile, progress=progress
            )
        finally:
            close()
        print(target)
    return 0
