"""Drive the dock widgets without a person: the demo's ``--screenshot`` and the GUI benchmark.

:func:`run_unattended` runs prototypes → refine → one painted correction → retrain
through the widgets and saves a screenshot of the window; :func:`wait_for` and
:func:`process_events` keep the Qt event loop running while a worker or napari
finishes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from qtpy.QtCore import QCoreApplication, QEventLoop, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget
from skimage.io import imsave

from protorefine._atomic import atomic_path
from protorefine.annotations import fit_mask, rasterize, read_annotations
from protorefine.errors import ProtorefineError
from protorefine.napari.layer_names import (
    CONFIDENCE,
    CORRECTIONS,
    GLOBAL_PROTOTYPES,
    LOCAL_PROTOTYPES,
    PROBABILITY,
    PSEUDO_LABELS,
    REFINED,
    REFINED_OUTLINE,
)
from protorefine.napari.layers import NORMAL_LABEL, TUMOUR_LABEL
from protorefine.napari.state import ProtorefineState
from protorefine.napari.widgets._worker import TaskRunner
from protorefine.napari.widgets.prototypes import PrototypesWidget
from protorefine.napari.widgets.refine import RefineWidget
from protorefine.napari.widgets.review import ReviewWidget

W = TypeVar("W", bound=QWidget)


def wait_for(runner: TaskRunner, timeout: float = 600.0) -> str:
    """Run the Qt event loop until ``runner`` is idle; return its outcome ("done", "cancelled", "error")."""
    if runner.running:
        loop = QEventLoop()
        runner.finished.connect(loop.quit)
        timer = QTimer()
        timer.setSingleShot(True)
        timer.timeout.connect(loop.quit)
        timer.start(int(timeout * 1000))
        loop.exec()
        timer.stop()
        runner.finished.disconnect(loop.quit)
        if runner.running:
            runner.cancel()
            raise ProtorefineError(
                f"unattended run: '{runner.status.text()}' took more than {timeout:.0f} s"
            )
    return runner.last_outcome


def process_events(seconds: float) -> None:
    """Keep the window live for ``seconds`` (lets napari draw before a screenshot)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QCoreApplication.processEvents()
        time.sleep(0.01)


@dataclass
class Panes:
    """The workflow dock widgets the unattended flow drives."""

    prototypes: PrototypesWidget
    refine: RefineWidget
    review: ReviewWidget


def docked_widgets(viewer) -> list[QWidget]:
    """The Qt widgets docked in ``viewer``'s window (napari's public ``dock_widgets``)."""
    found = []
    for widget in viewer.window.dock_widgets.values():
        native = getattr(widget, "native", widget)  # a magicgui widget wraps its Qt widget
        if isinstance(native, QWidget):
            found.append(native)
    return found


def find_widgets(viewer) -> Panes:
    """The docked Prototypes, Refine and Review widgets of ``viewer``, docking any that are missing."""
    docked = docked_widgets(viewer)

    def find(cls: type[W], title: str) -> W:
        for widget in docked:
            if isinstance(widget, cls):
                return widget
        widget = cls(viewer)
        viewer.window.add_dock_widget(widget, name=title, area="right")
        return widget

    return Panes(
        find(PrototypesWidget, "Prototypes"),
        find(RefineWidget, "Refine and train"),
        find(ReviewWidget, "Review and export"),
    )


def demo_correction(review: ReviewWidget, max_cells: int = 24) -> int:
    """Paint a pathologist-like correction on the current slide; return how many cells were painted.

    With the slide's ground truth known (the demo cohort), the cells where the
    refined outline disagrees with it get the true label; otherwise the refined
    tumour cells the classifier was least sure of are painted normal.
    """
    state = review.state
    project, sid = state.require_project(), state.require_slide()
    refined = np.asarray(project.result_grid(sid, "refined")).astype(bool)
    prob = np.asarray(project.result_grid(sid, "prob"), dtype=float)
    grid = project.grid(sid)
    tissue = grid.tissue.reshape(grid.rows, grid.cols)
    truth_file = project.ui_state.get("truth", {}).get(sid)
    if truth_file and Path(truth_file).exists():
        truth = rasterize(read_annotations(truth_file), grid.shape, grid.downsample)
        truth = fit_mask(truth, refined.shape)
        rr, cc = np.nonzero(tissue & (truth != refined))
        labels = np.where(truth[rr, cc], TUMOUR_LABEL, NORMAL_LABEL)
    else:
        rr, cc = np.nonzero(tissue & refined)
        order = np.argsort(prob[rr, cc])
        rr, cc = rr[order], cc[order]
        labels = np.full(len(rr), NORMAL_LABEL)
    rr, cc, labels = rr[:max_cells], cc[:max_cells], labels[:max_cells]
    painted = 0
    for value in (TUMOUR_LABEL, NORMAL_LABEL):
        pick = labels == value
        if pick.any():
            painted += review.corrections.paint_cells(rr[pick], cc[pick], value)
    return painted


def run_unattended(
    viewer, state: ProtorefineState, screenshot_path, *, timeout: float = 600.0
) -> Path:
    """Prototypes → refine → one painted correction → retrain through the widgets, then a screenshot.

    Waits for each worker with the Qt event loop running, shows the prototype and
    refined layers, and saves a screenshot of the whole window to ``screenshot_path``.
    Raises ProtorefineError when a step fails.
    """
    panes = find_widgets(viewer)
    protos, refine, review = panes.prototypes, panes.refine, panes.review
    corrections, truth = review.corrections, review.truth
    steps = (
        ("prototypes", protos.run, protos.runner),
        ("refine and train", refine.run, refine.runner),
    )
    for runner in (protos.runner, refine.runner, corrections.runner):
        wait_for(runner, timeout)  # e.g. the gallery of a reopened project loading
    for name, start, runner in steps:
        if not start():
            raise ProtorefineError(f"unattended run: the {name} step could not start")
        outcome = wait_for(runner, timeout)
        if outcome != "done":
            raise ProtorefineError(f"unattended run: {name} step {outcome}: {runner.last_message}")
    painted = demo_correction(review)
    if not corrections.retrain():
        raise ProtorefineError("unattended run: retraining could not start")
    if wait_for(corrections.runner, timeout) != "done":
        raise ProtorefineError(
            f"unattended run: retraining failed: {corrections.runner.last_message}"
        )
    if truth.truth_path is not None:
        wait_for(truth.score_runner, timeout)
    show_final_layers(state)
    protos.table.clearSelection()
    protos.show_all()
    count = corrections.count_label
    count.setText(count.text() + f" (unattended: {painted} painted)")
    frame_window(viewer)
    viewer.reset_view()
    process_events(1.0)
    image = viewer.screenshot(canvas_only=False, flash=False)
    with atomic_path(screenshot_path) as tmp:
        imsave(tmp, np.asarray(image)[..., :3], check_contrast=False)
    return Path(screenshot_path)


def frame_window(viewer, size: tuple[int, int] = (1600, 1000), dock_width: int = 460) -> None:
    """Give the canvas room for a screenshot: a larger window and right-hand docks of one width."""
    _, _, width, height = viewer.window.geometry()
    viewer.window.resize(max(width, size[0]), max(height, size[1]))
    docks: list[QDockWidget] = []
    for widget in docked_widgets(viewer):
        dock = widget.parent()  # napari's dock around the widget
        if isinstance(dock, QDockWidget) and dock.isVisible():
            docks.append(dock)
    main = docks[0].parent() if docks else None
    if isinstance(main, QMainWindow):
        right = [
            d for d in docks if main.dockWidgetArea(d) == Qt.DockWidgetArea.RightDockWidgetArea
        ]
        if right:
            main.resizeDocks(right, [dock_width] * len(right), Qt.Orientation.Horizontal)
    process_events(0.3)


def show_final_layers(state: ProtorefineState) -> None:
    """Show global prototypes with the refined patches and outline over them; hide the rest."""
    visible = {GLOBAL_PROTOTYPES: True, REFINED: True, REFINED_OUTLINE: True}
    for name in (LOCAL_PROTOTYPES, PSEUDO_LABELS, CONFIDENCE, PROBABILITY, CORRECTIONS):
        visible[name] = False
    for name, on in visible.items():
        layer = state.layer(name)
        if layer is not None:
            layer.visible = on
    glob, refined = state.layer(GLOBAL_PROTOTYPES), state.layer(REFINED)
    if glob is not None:
        glob.opacity = 0.55
        state.viewer.layers.selection.active = glob
    if refined is not None:
        refined.opacity = 0.3
