"""``protorefine demo``: a sample cohort in a fresh project, opened in napari (or headless).

With a display it opens napari with the five dock widgets and the first slide.
Without one (or with ``--headless``) it says so in one line, converts the sample
slide to OME-Zarr and writes an overlay PNG. ``--screenshot PNG`` runs the whole
flow through the widgets unattended and saves a screenshot of the window.
Nothing here imports Qt or napari at module level: the GUI parts import
``protorefine.napari`` only when a window is wanted.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protorefine._atomic import atomic_path
from protorefine.errors import ProtorefineError
from protorefine.slides.base import compute

#: The dock widgets of the manifest, in docking order.
WIDGETS = (
    "Project and slides",
    "Coarse annotation",
    "Prototypes",
    "Refine and train",
    "Review and export",
)
#: Patch size of the demo project, in level-0 pixels: the synthetic tumour borders are
#: smooth at this scale, so refinement visibly improves the coarse outline (224 px
#: patches on 3072 px slides are too coarse a grid to beat it; see docs/method.md).
DEMO_PATCH_SIZE = 64
#: Sizes (height, width) of the demo cohort's synthetic slides, in level-0 pixels.
COHORT_SHAPES: tuple[tuple[int, int], ...] = ((3072, 3072), (2560, 3072), (3072, 2560))


@dataclass
class SampleCohort:
    """A demo project and where its sample files lie."""

    project_folder: Path
    slide_paths: list[Path]
    truth_paths: list[Path]


def has_display() -> bool:
    """True when a window can be shown (always on macOS/Windows; DISPLAY/WAYLAND on Linux)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def cache_dir() -> Path:
    """Where converted demo slides are kept between runs (``$XDG_CACHE_HOME/protorefine``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "protorefine" / "demo-slides"


def make_sample_cohort(
    folder: str | os.PathLike[str],
    shapes: tuple[tuple[int, int], ...] = COHORT_SHAPES,
    *,
    slides_dir: str | os.PathLike[str] | None = None,
    strength: float = 1.0,
    progress=None,
):
    """Write synthetic slides (OME-Zarr), their true outlines, and a project with coarse outlines.

    Returns ``(project, cohort)``. Slides go to ``slides_dir/<id>.zarr`` (default
    ``folder/slides``) and are reused when already there, ground truth to
    ``folder/truth/<id>.geojson``, the project to ``folder/project`` (reopened
    when it exists).
    """
    from protorefine.annotations import vectorize, write_geojson
    from protorefine.project import Project
    from protorefine.slides import convert_to_ome_zarr
    from protorefine.synthetic import simulate_coarse, synthetic_slide

    folder = Path(folder)
    slides_dir = Path(slides_dir) if slides_dir is not None else folder / "slides"
    project_folder = folder / "project"
    if project_folder.exists():
        project = Project.open(project_folder)
        truth = project.ui_state.get("truth", {})
        return project, SampleCohort(
            project_folder,
            [Path(s.path) for s in project.slides],
            [Path(truth[s.id]) for s in project.slides if s.id in truth],
        )
    slide_paths: list[Path] = []
    truth_paths: list[Path] = []
    coarse_sets = []
    for i, shape in enumerate(shapes):
        name = f"synthetic_{i + 1:02d}"
        slide, truth, truth_ds = synthetic_slide(shape, seed=i)
        slide.name = name
        path = slides_dir / f"{name}.zarr"
        if not _usable(path, shape):
            path = convert_to_ome_zarr(slide, path, progress=progress)
        slide_paths.append(Path(path))
        truth_path = folder / "truth" / f"{name}.geojson"
        truth_path.parent.mkdir(parents=True, exist_ok=True)
        write_geojson(vectorize(truth, truth_ds), truth_path)
        truth_paths.append(truth_path)
        coarse_sets.append(simulate_coarse(truth, truth_ds, strength=strength, seed=i))
    from protorefine.refine.config import RefineConfig

    project = Project.create(project_folder, RefineConfig(patch_size=DEMO_PATCH_SIZE))
    truth_by_id = {}
    for path, coarse, truth_path in zip(slide_paths, coarse_sets, truth_paths, strict=True):
        entry = project.add_slide(path)
        project.set_coarse(entry.id, coarse)
        truth_by_id[entry.id] = str(truth_path)
    project.ui_state["truth"] = truth_by_id
    project.ui_state["current_slide"] = project.slides[0].id
    project.save_ui_state()
    return project, SampleCohort(project_folder, slide_paths, truth_paths)


def _usable(path: Path, shape: tuple[int, int]) -> bool:
    """True when ``path`` is an OME-Zarr slide of ``shape`` left by an earlier run."""
    from protorefine.slides import open_slide

    if not path.is_dir():
        return False
    try:
        return open_slide(path).shape == tuple(shape)
    except ProtorefineError:
        return False


def overlay_png(
    project, slide_id: str, path: str | os.PathLike[str], *, max_size: int = 1024
) -> Path:
    """Write a PNG of the slide thumbnail with its coarse outline (yellow) and refined outline (red)."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    from protorefine.annotations import rasterize

    slide = project.open_slide(slide_id)
    h0, w0 = slide.shape
    level = len(slide.levels) - 1
    for i, lvl in enumerate(slide.levels):
        if max(lvl.shape[:2]) <= max_size:
            level = i
            break
    thumb = compute(slide.levels[level][..., :3], "threads").astype(np.uint8)
    if max(thumb.shape[:2]) > max_size:
        f = max_size / max(thumb.shape[:2])
        size = (round(thumb.shape[0] * f), round(thumb.shape[1] * f))
        thumb = (resize(thumb, size, anti_aliasing=True, preserve_range=True)).astype(np.uint8)
    ds = w0 / thumb.shape[1]
    out = thumb.copy()
    outlines = [(project.coarse(slide_id), (255, 212, 0))]
    if project.has_results(slide_id):
        outlines.append((project.refined_annotations(slide_id), (230, 30, 30)))
    width = max(1, round(max(thumb.shape[:2]) / 400))
    for annset, colour in outlines:
        if annset is None or not len(annset):
            continue
        mask = rasterize(annset, (h0, w0), ds)
        mask = mask[: out.shape[0], : out.shape[1]]
        edge = find_boundaries(mask, mode="inner")
        if width > 1:
            from scipy.ndimage import binary_dilation

            edge = binary_dilation(edge, iterations=width - 1)
        pad = np.zeros(out.shape[:2], bool)
        pad[: edge.shape[0], : edge.shape[1]] = edge
        out[pad] = colour
    with atomic_path(path) as tmp:
        imsave(tmp, out, check_contrast=False)
    return Path(path)


def headless_demo(out: Path, slides_dir: Path | None = None) -> int:
    """Build the sample cohort (slides converted to OME-Zarr) and write an overlay PNG."""
    project, cohort = make_sample_cohort(out, COHORT_SHAPES[:1], slides_dir=slides_dir)
    sid = project.slides[0].id
    png = overlay_png(project, sid, out / f"{sid}_overlay.png")
    print(f"OME-Zarr: {cohort.slide_paths[0]}")
    print(f"overlay:  {png}")
    return 0


def open_demo_viewer(out: Path, *, show: bool = True, slides_dir: Path | None = None):
    """A napari viewer with the sample cohort's project open and all dock widgets docked."""
    import napari

    from protorefine.napari.state import get_state

    project, _ = make_sample_cohort(out, slides_dir=slides_dir)
    viewer = napari.Viewer(title="protorefine demo", show=show)
    _fit_window(viewer)
    docked = dock_widgets(viewer)
    state = get_state(viewer)
    state.set_project(project)
    state.show_slide(project.ui_state.get("current_slide") or project.slides[0].id)
    return viewer, state, docked


#: Preferred demo window size (width, height); capped by the screen.
WINDOW_SIZE = (1680, 1050)


def _fit_window(viewer) -> None:
    """Size the window so the canvas keeps most of the width beside the docked widgets."""
    from qtpy.QtWidgets import QApplication

    screen = QApplication.primaryScreen()
    width, height = WINDOW_SIZE
    if screen is not None:
        avail = screen.availableGeometry()
        width, height = min(width, avail.width()), min(height, avail.height())
    viewer.window.resize(width, height)


#: Widgets docked as tabs of the widget before them (the pipeline steps share one pane).
TABIFIED = ("Refine and train", "Review and export")


def dock_widgets(viewer) -> dict:
    """Dock every protorefine widget that imports; returns {name: widget}.

    "Project and slides" and "Coarse annotation" get a pane each; the three
    pipeline steps share a third pane as tabs.
    """
    docked = {}
    docks = {}
    for name in WIDGETS:
        try:
            docks[name], widget = viewer.window.add_plugin_dock_widget(
                "protorefine", name, tabify=name in TABIFIED and bool(docked)
            )
        except (ImportError, AttributeError, KeyError) as exc:
            print(f"protorefine: widget {name!r} is not available: {exc}", file=sys.stderr)
            continue
        docked[name] = widget
    if "Prototypes" in docks:  # the first pipeline step is the visible tab
        from qtpy.QtCore import QTimer

        docks["Prototypes"].raise_()
        QTimer.singleShot(0, docks["Prototypes"].raise_)
    return docked


def screenshot_demo(out: Path, screenshot: Path, slides_dir: Path | None = None) -> int:
    """Run the whole flow through the widgets unattended and save a window screenshot."""
    import napari

    from protorefine.napari.widgets.unattended import run_unattended

    viewer, state, _ = open_demo_viewer(out, show=True, slides_dir=slides_dir)
    try:
        run_unattended(viewer, state, screenshot)
    finally:
        viewer.close()
        napari.Viewer.close_all()
    print(f"screenshot: {screenshot}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """Entry point of ``protorefine demo`` (see module docstring)."""
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="protorefine-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    slides_dir = None if args.out else cache_dir()
    if args.screenshot:
        if not has_display():
            return _rerun_under_xvfb(args)
        return screenshot_demo(out, Path(args.screenshot), slides_dir)
    if args.headless or not has_display():
        reason = "--headless" if args.headless else "no display (DISPLAY/WAYLAND_DISPLAY unset)"
        print(
            f"protorefine demo: {reason}: converting the sample slide and writing an overlay PNG instead of opening napari"
        )
        return headless_demo(out, slides_dir)
    import napari

    open_demo_viewer(out, slides_dir=slides_dir)
    print(f"protorefine demo: project in {out / 'project'}")
    napari.run()
    return 0


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
