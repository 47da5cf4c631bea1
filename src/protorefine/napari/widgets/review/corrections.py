"""Review pane, corrections: paint the patches the refinement got wrong, retrain with them.

Corrections live on the "corrections" Labels layer of the patch grid (tumour /
normal / none), are saved into the project on every stroke, and become hard
labels when the classifier is retrained.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

import numpy as np
from qtpy.QtWidgets import QGridLayout, QGroupBox, QLabel, QPushButton, QVBoxLayout, QWidget

from protorefine.errors import ProtorefineError
from protorefine.napari.layer_names import CORRECTIONS, REFINED
from protorefine.napari.layers import NORMAL_LABEL, TUMOUR_LABEL, corrections_from_labels
from protorefine.napari.state import ProtorefineState
from protorefine.napari.widgets._common import (
    SlideResults,
    add_shortcut,
    edited_outlines,
    load_results,
    pipeline_for,
    runnable_project,
    show_results,
)
from protorefine.napari.widgets._worker import TaskContext, TaskRunner, notify

if TYPE_CHECKING:
    import napari
    from napari.layers import Labels

#: Keyboard shortcuts of the brushes (anywhere in napari's window; none clashes with napari's own).
PAINT_TUMOUR_KEYS = "Shift+T"
PAINT_NORMAL_KEYS = "Shift+B"


class CorrectionsPanel(QWidget):
    """Brushes for the corrections layer, the count of corrected patches, and Retrain."""

    def __init__(self, viewer: napari.viewer.Viewer, state: ProtorefineState) -> None:
        super().__init__()
        self.viewer = viewer
        self.state = state
        self._painted_layer: Labels | None = None

        paint_box = QGroupBox("Corrections")
        grid = QGridLayout(paint_box)
        self.tumour_button = QPushButton("Paint tumour")
        self.tumour_button.setToolTip("Brush: these patches are tumour")
        self.normal_button = QPushButton("Paint normal")
        self.normal_button.setToolTip("Brush: these patches are not tumour")
        self.erase_button = QPushButton("Erase")
        self.erase_button.setToolTip("Brush: remove corrections")
        self.clear_button = QPushButton("Clear all")
        self.clear_button.setToolTip("Remove every correction on this slide")
        self.tumour_button.clicked.connect(lambda: self.start_painting(TUMOUR_LABEL))
        self.normal_button.clicked.connect(lambda: self.start_painting(NORMAL_LABEL))
        self.erase_button.clicked.connect(lambda: self.start_painting(0))
        self.clear_button.clicked.connect(self.clear_corrections)
        grid.addWidget(self.tumour_button, 0, 0)
        grid.addWidget(self.normal_button, 0, 1)
        grid.addWidget(self.erase_button, 1, 0)
        grid.addWidget(self.clear_button, 1, 1)
        self.count_label = QLabel("No corrections")
        grid.addWidget(self.count_label, 2, 0, 1, 2)

        self.retrain_button = QPushButton("Retrain with corrections")
        self.retrain_button.setToolTip(
            "Pseudo-labels and classifier again, corrections as hard labels"
        )
        self.retrain_button.clicked.connect(self.retrain)
        self.runner = TaskRunner(self.state)
        add_shortcut(self, PAINT_TUMOUR_KEYS, self.tumour_button)
        add_shortcut(self, PAINT_NORMAL_KEYS, self.normal_button)

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(paint_box)
        lay.addWidget(self.retrain_button)
        lay.addWidget(self.runner)

        state.slide_changed.connect(self._on_slide)
        state.results_changed.connect(self._on_results)
        self._on_slide(state.slide_id)

    def corrections_layer(self, create: bool = True) -> Labels | None:
        """The current slide's "corrections" Labels layer, made empty on the patch grid if missing."""
        layer = cast("Labels | None", self.state.layer(CORRECTIONS))
        if layer is None and create:
            project, sid = self.state.project, self.state.slide_id
            if project is None or sid is None:
                notify("warning", "Pick a slide in 'Project and slides' first.")
                return None
            if not project.stage_done("grid"):
                notify(
                    "warning",
                    "Compute prototypes first: corrections are painted on the patch grid.",
                )
                return None
            grid = project.grid(sid)
            layer = cast(
                "Labels",
                self.state.set_grid_layer(
                    CORRECTIONS, np.full((grid.rows, grid.cols), -1, np.int8)
                ),
            )
            layer.opacity = 0.8
        if layer is not None and layer is not self._painted_layer:
            layer.events.paint.connect(self._on_paint)
            self._painted_layer = layer
        return layer

    def start_painting(self, label: int) -> None:
        """Select the corrections layer in paint mode with ``label`` (0 erases)."""
        layer = self.corrections_layer()
        if layer is None:
            return
        layer.visible = True
        self.viewer.layers.selection.active = layer
        layer.selected_label = label
        layer.mode = "paint" if label else "erase"
        if label:
            layer.show_selected_label = False
        if layer.brush_size > 10:
            layer.brush_size = 2

    def paint_cells(self, rows: np.ndarray, cols: np.ndarray, label: int) -> int:
        """Paint grid cells as a brush would (undoable, saved); return how many cells changed."""
        layer = self.corrections_layer()
        if layer is None:
            return 0
        rows, cols = np.asarray(rows, int), np.asarray(cols, int)
        changed = int(np.count_nonzero(layer.data[rows, cols] != label))
        layer.data_setitem((rows, cols), label)
        self.save_corrections()
        return changed

    def clear_corrections(self) -> None:
        """Remove every correction on the current slide (saved at once)."""
        layer = self.corrections_layer(create=False)
        if layer is None:
            return
        layer.data = np.zeros_like(layer.data)
        self.save_corrections()

    def _on_paint(self, _event: object = None) -> None:
        self.save_corrections()

    def save_corrections(self) -> bool:
        """Write the corrections layer of the current slide into the project."""
        layer = self.corrections_layer(create=False)
        project, sid = self.state.project, self.state.slide_id
        if layer is None or project is None or sid is None:
            return False
        values = corrections_from_labels(np.asarray(layer.data))
        try:
            project.set_corrections(sid, values)
        except ProtorefineError as exc:
            notify("error", str(exc))
            return False
        self._show_count(values)
        return True

    def _show_count(self, values: np.ndarray | None) -> None:
        """Say how many patches carry a correction (values: -1 none, 0 normal, 1 tumour)."""
        n_t = 0 if values is None else int((values == 1).sum())
        n_n = 0 if values is None else int((values == 0).sum())
        self.count_label.setText(
            f"{n_t} tumour and {n_n} normal patch(es) corrected" if n_t + n_n else "No corrections"
        )

    def retrain(self) -> bool:
        """Save the corrections and rerun pseudo-labels, classifier and output in a worker thread."""
        project = runnable_project(self.state)
        if project is None:
            return False
        edited = edited_outlines(project)  # before new corrections make the outline stale
        self.save_corrections()
        pipeline = pipeline_for(project, scheduler=self.state.scheduler)

        slide_id = self.state.slide_id

        def task(ctx: TaskContext) -> SlideResults:
            pipeline.invalidate("pseudo_labels")
            pipeline.run(progress=ctx.progress, cancel=ctx.cancel)
            return load_results(project, slide_id, edited_before=edited)

        return self.runner.start("Retrain with corrections", task, on_done=self._on_retrained)

    def _on_retrained(self, results: SlideResults) -> Iterator[None]:
        yield from show_results(self.state, results, show=(REFINED,))

    def _on_slide(self, slide_id: str | None) -> None:
        self._painted_layer = None
        project = self.state.project
        if project is None or slide_id is None:
            self.count_label.setText("No corrections")
            return
        self.corrections_layer(create=False)  # listen to strokes on the restored layer
        self._show_count(project.corrections(slide_id))

    def _on_results(self, _slide_id: str | None) -> None:
        self.corrections_layer(create=False)
