"""The demo's napari window: the sample cohort's project open with every dock widget docked,
and the unattended run through the widgets that ``protorefine demo --screenshot`` saves."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import napari
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QDockWidget

from protorefine.demo import make_real_project, make_sample_cohort
from protorefine.napari.state import get_state
from protorefine.napari.widgets.unattended import run_unattended

#: The dock widgets of the manifest, in docking order.
WIDGETS = (
    "Project and slides",
    "Coarse annotation",
    "Prototypes",
    "Refine and train",
    "Review and export",
)


def open_demo_viewer(
    out: Path, *, show: bool = True, slides_dir: Path | None = None, sample: str = "synthetic"
):
    """A napari viewer with a sample's project open (the synthetic cohort, or the real H&E
    sample with ``sample="real"``) and all dock widgets docked."""
    if sample == "real":
        project, _ = make_real_project(out)
    else:
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
    screen = QApplication.primaryScreen()
    width, height = WINDOW_SIZE
    if screen is not None:
        avail = screen.availableGeometry()
        width, height = min(width, avail.width()), min(height, avail.height())
    viewer.window.resize(width, height)


#: Widgets docked as tabs of the widget before them (the pipeline steps share one pane).
TABIFIED = ("Refine and train", "Review and export")


def dock_widgets(viewer) -> dict[str, Any]:
    """Dock every protorefine widget that imports; returns {name: widget}.

    "Project and slides" and "Coarse annotation" get a pane each; the three
    pipeline steps share a third pane as tabs.
    """
    docked: dict[str, Any] = {}
    docks: dict[str, QDockWidget] = {}
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
        docks["Prototypes"].raise_()
        QTimer.singleShot(0, docks["Prototypes"].raise_)
    return docked


def screenshot_demo(out: Path, screenshot: Path, slides_dir: Path | None = None) -> int:
    """Run the whole flow through the widgets unattended and save a window screenshot."""
    viewer, state, _ = open_demo_viewer(out, show=True, slides_dir=slides_dir)
    try:
        run_unattended(viewer, state, screenshot)
    finally:
        viewer.close()
        napari.Viewer.close_all()
    print(f"screenshot: {screenshot}")
    return 0


def run_demo_window(out: Path, slides_dir: Path | None = None, sample: str = "synthetic") -> int:
    """Open the demo window on ``sample`` and run napari until it is closed."""
    open_demo_viewer(out, slides_dir=slides_dir, sample=sample)
    print(f"protorefine demo: project in {out / 'project'}")
    napari.run()
    return 0
