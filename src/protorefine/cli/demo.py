"""``protorefine demo``: a sample cohort in a fresh project, opened in napari (or headless).

With a display it opens napari with the five dock widgets and the first slide.
Without one (or with ``--headless``) it says so in one line, refines the sample (the
real H&E one unless ``--sample synthetic``) with the pipeline at default settings and
writes the before/after picture and ``result.json``. ``--screenshot PNG`` runs the whole
flow through the widgets unattended and saves a screenshot of the window.
Qt and napari are imported (through :mod:`protorefine.napari.demo`) only when a
window is wanted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from protorefine.cli.refine import StageBars
from protorefine.demo import cache_dir, headless_demo
from protorefine.errors import ProtorefineError


def has_display() -> bool:
    """True when a window can be shown (always on macOS/Windows; DISPLAY/WAYLAND on Linux)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def demo_command(args: argparse.Namespace) -> int:
    """Entry point of ``protorefine demo`` (see module docstring)."""
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="protorefine-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    slides_dir = None if args.out else cache_dir()
    if args.screenshot:
        if not has_display():
            return _rerun_under_xvfb(args)
        from protorefine.napari.demo import screenshot_demo  # Qt and napari: only for a window

        return screenshot_demo(out, Path(args.screenshot), slides_dir)
    sample = getattr(args, "sample", None)
    if args.headless or not has_display():
        reason = "--headless" if args.headless else "no display (DISPLAY/WAYLAND_DISPLAY unset)"
        sample = sample or "real"
        print(
            f"protorefine demo: {reason}: refining the {sample} sample and writing a "
            "before/after picture instead of opening napari"
        )
        bars = StageBars()
        try:
            return headless_demo(out, slides_dir, sample, progress=bars)
        finally:
            bars.close()
    from protorefine.napari.demo import run_demo_window  # Qt and napari: only for a window

    return run_demo_window(out, slides_dir, sample or "synthetic")


def _rerun_under_xvfb(args: argparse.Namespace) -> int:
    """Run ``demo --screenshot`` again inside ``xvfb-run`` when there is no display."""
    xvfb = shutil.which("xvfb-run")
    if xvfb is None:
        raise ProtorefineError(
            "--screenshot needs a display: none is set and xvfb-run is not installed"
        )
    print("protorefine demo: no display; running the screenshot flow under xvfb-run")
    cmd = [
        xvfb,
        "-a",
        "-s",
        "-screen 0 1920x1200x24",
        sys.executable,
        "-m",
        "protorefine.cli",
        "demo",
        "--screenshot",
        str(args.screenshot),
    ]
    if args.out:
        cmd += ["--out", str(args.out)]
    return subprocess.call(cmd)
