"""Dock widget "Review and export": paint corrections, retrain, export, compare with ground truth.

Corrections live on the "corrections" Labels layer of the patch grid (tumour /
normal / none), are saved into the project on every stroke, and become hard
labels when the classifier is retrained. The accepted refined outline goes out as
QuPath GeoJSON and as NGFF labels inside the slide's OME-Zarr. When a
ground-truth annotation is loaded, Dice of the coarse and refined outlines is
shown. The unattended flow that drives these widgets lives in
:mod:`protorefine.napari.widgets.unattended`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QDockWidget,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
)
from shapely.geometry.base import BaseGeometry

from protorefine.errors import ProtorefineError
from protorefine.measure import (
    UNSURE,
    Change,
    Measurements,
    format_area,
    format_length,
    outline_changes,
    part_explainer,
)
from protorefine.napari.layers import (
    FINISHED_ACTIONS,
    NORMAL_LABEL,
    TUMOUR_LABEL,
    corrections_from_labels,
)
from protorefine.napari.state import (
    CORRECTIONS,
    PROBABILITY,
    REFINED,
)
from protorefine.napari.widgets._common import (
    REFINED_OUTLINE,
    SlideResults,
    WorkflowWidget,
    add_shortcut,
    check_coarse,
    edited_outlines,
    load_results,
    pipeline_for,
    show_outline,
    show_results,
)
from protorefine.napari.widgets._worker import LatestOnly, TaskContext, TaskRunner, notify
from protorefine.slides.omezarr import is_ome_zarr

if TYPE_CHECKING:
    from napari.layers import Layer

GEOJSON_FILTER = "QuPath GeoJSON (*.geojson *.json)"
ASAP_FILTER = "ASAP XML (*.xml)"
ZARR_FILTER = "OME-Zarr (*.zarr)"
TRUTH_FILTER = "Annotations or masks (*.geojson *.json *.xml *.png *.tif *.tiff)"
#: Regions listed one by one in the Review pane (the rest are summed up in one line).
MAX_LISTED_REGIONS = 20
#: Rows of that list shown at once (it scrolls for more).
REGION_ROWS_SHOWN = 8
#: Item data roles: the level-0 bounds to go to, and what the part is made of.
BOUNDS_ROLE = Qt.ItemDataRole.UserRole
WHY_ROLE = Qt.ItemDataRole.UserRole + 1
PROTOTYPE_ROLE = Qt.ItemDataRole.UserRole + 2
#: A change's (kind, WKB of its part), for undoing it.
CHANGE_ROLE = Qt.ItemDataRole.UserRole + 3
#: The undo button's words per kind of change.
UNDO_WORDS = {
    "removed": "Put this part back into the outline",
    "added": "Take this part out of the outline",
}
#: Keyboard shortcuts of the review loop (anywhere in napari's window; none clashes with napari's own).
NEXT_KEYS = "Shift+N"
REVIEWED_KEYS = "Shift+R"
UNSURE_KEYS = "Shift+U"
PAINT_TUMOUR_KEYS = "Shift+T"
PAINT_NORMAL_KEYS = "Shift+B"
#: Name of the NGFF labels image the refined outline is written to inside the slide's zarr.
NGFF_LABELS_NAME = "refined"


class ReviewWidget(WorkflowWidget):
    """Correct the refined outline by painting patches, retrain, export, and score against truth."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self.truth_path: Path | None = None
        self.scores: dict[str, float] = {}
        self._painted_layer = None
        # measuring a whole-slide outline takes up to a second: never in the event loop
        self._measurer = LatestOnly(lambda found: self._show_measured(*found), "measure", self)

        intro = QLabel(
            "Paint patches the refinement got wrong, then retrain: painted patches are "
            "hard labels. Export the accepted outline for QuPath."
        )
        intro.setWordWrap(True)

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

        export_box = QGroupBox("Accept and export")
        ex = QVBoxLayout(export_box)
        self.geojson_button = QPushButton("Export refined outline (GeoJSON / ASAP XML)…")
        self.geojson_button.clicked.connect(self._on_export_geojson)
        self.all_button = QPushButton("Export every slide's outline (GeoJSON) to a folder…")
        self.all_button.setToolTip(
            "<slide>.geojson for each slide of the project, for QuPath, and "
            "tumour_measurements.csv (one row per slide)"
        )
        self.all_button.clicked.connect(self._on_export_all)
        self.ngff_button = QPushButton("Export refined labels (OME-Zarr)…")
        self.ngff_button.setToolTip(
            "NGFF labels over the slide: inside an OME-Zarr slide, else in an OME-Zarr copy of it"
        )
        self.ngff_button.clicked.connect(self._on_export_ngff)
        # exporting only reads the project: its own runner, outside the one-pipeline-run lock
        self.export_runner = TaskRunner()
        self.labels_path: Path | None = None
        self.exported: list[Path] = []
        self.tumour_label = QLabel("")
        self.tumour_label.setWordWrap(True)
        self.tumour_label.setToolTip(
            "Separate tumour regions, their total area and the largest one's greatest "
            "dimension (also written into the exported GeoJSON as QuPath measurements)"
        )
        self.region_list = QListWidget()
        self.region_list.setToolTip(
            "Tumour regions, and where the refinement changed the coarse outline most: "
            "click one to go there"
        )
        self.region_list.itemClicked.connect(self._on_region_clicked)
        self.region_info = QLabel("")
        self.region_info.setWordWrap(True)
        self.prototype_button = QPushButton("")
        self.prototype_button.setToolTip(
            "Check it in the gallery, and mark it if its score is wrong"
        )
        self.prototype_button.clicked.connect(lambda: self.show_prototype())
        self.prototype_button.hide()
        self.undo_change_button = QPushButton("")
        self.undo_change_button.setToolTip(
            "Disagree with the refinement here: the coarse outline's word comes back for "
            "this part (kept as a hand edit: 'Discard hand edits' undoes it)"
        )
        self.undo_change_button.clicked.connect(lambda: self.undo_change())
        self.undo_change_button.hide()
        self._change: tuple[str, bytes] | None = None
        self.unsure_box = QCheckBox("Show where the model is unsure")
        self.unsure_box.setToolTip(
            "The 'tumour probability' layer: bright yellow where the probability is near 0.5 "
            f"(between {UNSURE[0]} and {UNSURE[1]}), faint blue leaning normal, faint red "
            "leaning tumour, clear where the model is sure; hover for the value"
        )
        self.unsure_box.toggled.connect(self._on_unsure_toggled)
        self._probability_layer = None  # whose eye the box follows
        self.reviewed_box = QCheckBox("Reviewed: I checked this outline")
        self.reviewed_box.setToolTip(
            "Tick when the outline is right; the slide list shows it, and the tick goes stale "
            "if the outline changes later (a rerun, a hand edit)"
        )
        self.reviewed_box.toggled.connect(self._on_reviewed)
        self.next_button = QPushButton("Next slide to review ▶")
        self.next_button.setToolTip(
            "The slide whose outline is not ticked yet on which the model is least sure"
        )
        self.next_button.clicked.connect(self.next_to_review)
        self.edit_label = QLabel("")
        self.edit_label.setWordWrap(True)
        self.discard_button = QPushButton("Discard hand edits of the outline")
        self.discard_button.setToolTip("Back to the refined outline as the classifier drew it")
        self.discard_button.clicked.connect(self.discard_outline_edits)
        self._outline_layer = None
        add_shortcut(self, NEXT_KEYS, self.next_button)
        add_shortcut(self, REVIEWED_KEYS, self.reviewed_box)
        add_shortcut(self, UNSURE_KEYS, self.unsure_box)
        add_shortcut(self, PAINT_TUMOUR_KEYS, self.tumour_button)
        add_shortcut(self, PAINT_NORMAL_KEYS, self.normal_button)
        ex.addWidget(self.tumour_label)
        ex.addWidget(self.region_list)
        ex.addWidget(self.region_info)
        ex.addWidget(self.prototype_button)
        ex.addWidget(self.undo_change_button)
        ex.addWidget(self.unsure_box)
        ex.addWidget(self.reviewed_box)
        ex.addWidget(self.next_button)
        ex.addWidget(self.edit_label)
        ex.addWidget(self.discard_button)
        ex.addWidget(self.geojson_button)
        ex.addWidget(self.all_button)
        ex.addWidget(self.ngff_button)
        ex.addWidget(self.export_runner)

        truth_box = QGroupBox("Ground truth")
        tb = QVBoxLayout(truth_box)
        self.truth_button = QPushButton("Load ground truth…")
        self.truth_button.clicked.connect(self._on_load_truth)
        self.dice_label = QLabel("No ground truth loaded")
        self.dice_label.setWordWrap(True)
        # scoring only reads the project: its own runner, outside the one-pipeline-run lock
        self.score_runner = TaskRunner()
        self.score_runner.cancel_button.setVisible(False)
        tb.addWidget(self.truth_button)
        tb.addWidget(self.score_runner)
        tb.addWidget(self.dice_label)

        lay = QVBoxLayout(self.body)
        lay.addWidget(intro)
        lay.addWidget(paint_box)
        lay.addWidget(self.retrain_button)
        lay.addWidget(self.runner)
        lay.addWidget(export_box)
        lay.addWidget(truth_box)
        lay.addStretch(1)

        self.state.project_changed.connect(self._on_project)
        self.state.slide_changed.connect(self._on_slide)
        self.state.results_changed.connect(self._on_results)
        self._on_slide(self.state.slide_id)

    # ----- corrections ---------------------------------------------------------------------

    def corrections_layer(self, create: bool = True):
        """The current slide's "corrections" Labels layer, made empty on the patch grid if missing."""
        layer = self.state.layer(CORRECTIONS)
        if layer is None and create:
            project = self.state.project
            if project is None or self.state.slide_id is None:
                notify("warning", "Pick a slide in 'Project and slides' first.")
                return None
            if not project.stage_done("grid"):
                notify(
                    "warning",
                    "Compute prototypes first: corrections are painted on the patch grid.",
                )
                return None
            grid = project.grid(self.state.slide_id)
            layer = self.state.set_grid_layer(
                CORRECTIONS, np.full((grid.rows, grid.cols), -1, np.int8)
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

    def _on_paint(self, _event=None) -> None:
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
        project = self.state.project
        if project is None:
            notify("warning", "Open or create a project first ('Project and slides').")
            return False
        if not check_coarse(self.state):
            return False
        edited = edited_outlines(project)  # before new corrections make the outline stale
        self.save_corrections()
        pipeline = pipeline_for(project)

        slide_id = self.state.slide_id

        def task(ctx: TaskContext) -> SlideResults:
            pipeline.invalidate("pseudo_labels")
            pipeline.run(progress=ctx.progress, cancel=ctx.cancel)
            return load_results(project, slide_id, edited_before=edited)

        return self.runner.start("Retrain with corrections", task, on_done=self._on_retrained)

    def _on_retrained(self, results: SlideResults) -> Iterator[None]:
        yield from show_results(self.state, results, show=(REFINED,))

    # ----- export --------------------------------------------------------------------------

    def _refined_or_say(self) -> bool:
        """True when the current slide has a refined outline; otherwise say what is missing."""
        project, sid = self.state.project, self.state.slide_id
        if project is None or sid is None:
            notify("warning", "Pick a slide in 'Project and slides' first.")
            return False
        if not project.has_results(sid):
            notify("warning", _no_outline_yet(project, sid))
            return False
        return True

    def _on_export_geojson(self) -> None:
        sid = self.state.slide_id or "refined"
        path, chosen = QFileDialog.getSaveFileName(
            self, "Export refined outline", f"{sid}.geojson", f"{GEOJSON_FILTER};;{ASAP_FILTER}"
        )
        if path:
            if not Path(path).suffix:  # a bare name: the format picked in the dialog
                path += ".xml" if chosen == ASAP_FILTER else ".geojson"
            self.export_geojson(path)

    def export_geojson(self, path: str | Path) -> Path | None:
        """Write the current slide's accepted outline to ``path``: QuPath GeoJSON, or ASAP XML
        for a ``.xml`` name."""
        if not self._refined_or_say():
            return None
        try:
            self.state.project.export_outline(self.state.slide_id, path)
        except ProtorefineError as exc:
            notify("error", str(exc))
            return None
        except OSError as exc:
            notify("error", f"{path}: could not write ({exc.strerror or exc})")
            return None
        notify("info", f"Refined outline of {self.state.slide_id} written to {path}")
        return Path(path)

    def _on_export_all(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for every slide's refined outline")
        if folder:
            self.export_all(folder)

    def export_all(self, folder: str | Path) -> bool:
        """Start writing every slide's accepted outline to ``folder/<slide>.geojson`` with
        ``tumour_measurements.csv`` (in a worker, with progress and Cancel: a big project
        takes a while); the paths land in ``exported``."""
        if not self._refined_or_say():
            return False
        project = self.state.project

        def task(ctx: TaskContext) -> list[Path]:
            return project.export_refined(folder, progress=ctx.progress, cancel=ctx.cancel)

        def done(written: list[Path]) -> None:
            self.exported = written
            notify("info", f"{len(written)} refined outline(s) written to {folder}")

        return self.export_runner.start("Export every slide", task, on_done=done)

    def _on_export_ngff(self) -> None:
        project, sid = self.state.project, self.state.slide_id
        if project is None or sid is None or is_ome_zarr(project.slide(sid).path):
            self.export_ngff()
            return
        default = project.folder / "exports" / f"{sid}.ome.zarr"
        path, _ = QFileDialog.getSaveFileName(
            self, "OME-Zarr copy of the slide, with the refined labels", str(default), ZARR_FILTER
        )
        if path:
            self.export_ngff(path)

    def export_ngff(self, target: str | Path | None = None) -> bool:
        """Start writing the refined outline as NGFF labels: into the current slide's OME-Zarr,
        or for another slide format into an OME-Zarr copy of it at ``target`` (converted in a
        worker, with progress and Cancel). The folder lands in ``labels_path``."""
        from protorefine.labels_export import export_refined_labels

        if not self._refined_or_say():
            return False
        project, sid = self.state.project, self.state.slide_id
        if target is None and not is_ome_zarr(project.slide(sid).path):
            notify(
                "warning",
                f"{sid} is not an OME-Zarr slide: choose a folder for an OME-Zarr copy with the labels.",
            )
            return False
        if target is not None:
            Path(target).parent.mkdir(parents=True, exist_ok=True)

        def task(ctx: TaskContext) -> Path:
            return export_refined_labels(
                project,
                sid,
                target,
                name=NGFF_LABELS_NAME,
                progress=ctx.progress,
                cancel=ctx.cancel,
            )

        return self.export_runner.start("Export labels", task, on_done=self._on_labels_written)

    def _on_labels_written(self, out: Path) -> None:
        self.labels_path = out
        notify("info", f"Refined labels written to {out}")

    # ----- hand edits of the refined outline ------------------------------------------------

    def _watch_outline(self) -> None:
        """Listen to the pathologist's edits of the refined outline layer on screen."""
        self._outline_layer = _rewire(
            self._outline_layer, self.state.layer(REFINED_OUTLINE), "data", self._on_outline_edit
        )
        self._say_outline()

    def _on_outline_edit(self, event=None) -> None:
        """A finished edit of the refined outline: keep it in the project (undone: drop it)."""
        from protorefine.napari.layers import layer_annotations

        state = self.state
        action = getattr(event, "action", "changed")
        if state.outline_filling or action not in FINISHED_ACTIONS or self._outline_layer is None:
            return
        project, sid = state.project, state.slide_id
        if project is None or sid is None or not project.has_results(sid):
            return
        edited = layer_annotations(self._outline_layer, state.pixel_scale)
        refined = project.refined_annotations(sid).union()
        same = edited.union().symmetric_difference(refined).area <= 1e-6 * max(refined.area, 1.0)
        project.set_outline_edit(sid, None if same else edited)
        self._say_outline()
        self._rescore()  # the Dice line scores the outline as edited
        state.outline_changed.emit(sid)

    def discard_outline_edits(self) -> None:
        """Drop the hand edits of the current slide's outline and show the refined one again."""
        project, sid = self.state.project, self.state.slide_id
        if project is None or sid is None or not project.outline_edited(sid):
            return
        project.set_outline_edit(sid, None)
        self._show_new_outline(sid, project.refined_annotations(sid))
        notify("info", f"Hand edits of the outline of {sid} discarded")

    def _show_new_outline(self, sid: str, annset) -> None:
        """Show ``sid``'s accepted outline after the project's changed it (not a hand edit on
        screen): the layer, its measurements, the Dice line and the slide list follow."""
        show_outline(self.state, annset)
        self._watch_outline()
        self._rescore()
        self.state.outline_changed.emit(sid)

    def _say_outline(self) -> None:
        """Say whether the outline was edited by hand, and measure it."""
        project, sid = self.state.project, self.state.slide_id
        done = bool(project and sid and project.has_results(sid))
        edited = done and project.outline_edited(sid)
        self.edit_label.setText(
            "Outline edited by hand: the edits are kept in the project and exported."
            if edited
            else "Edit the red outline with napari's shape tools to fix it by hand."
        )
        self.discard_button.setEnabled(edited)
        review = project.review_state(sid) if done else None
        self.reviewed_box.blockSignals(True)
        self.reviewed_box.setChecked(review == "reviewed")
        self.reviewed_box.blockSignals(False)
        self.reviewed_box.setEnabled(done)
        probability = self.state.layer(PROBABILITY) if done else None
        self._probability_layer = _rewire(
            self._probability_layer, probability, "visible", self._follow_probability_eye
        )
        self._follow_probability_eye()
        self.unsure_box.setEnabled(probability is not None)
        self.reviewed_box.setText(
            "Reviewed before, but the outline changed since: tick again once checked"
            if review == "changed"
            else "Reviewed: I checked this outline"
        )
        if project is None or sid is None:
            self._measurer.drop_pending()
            self._show_measured("", [])
            return
        self.tumour_label.setText("Measuring the outline…")
        self._measurer.submit(_measure, project, sid, done)

    def _show_measured(self, text: str, items: list) -> None:
        self.tumour_label.setText(text)
        self.region_list.clear()
        self.region_info.setText("")
        self.prototype_button.hide()
        self.undo_change_button.hide()
        self._change = None
        for line, bounds, why, prototype, change in items:
            item = QListWidgetItem(line)
            item.setData(BOUNDS_ROLE, bounds)
            item.setData(WHY_ROLE, why)
            item.setData(PROTOTYPE_ROLE, prototype)
            item.setData(CHANGE_ROLE, change)
            item.setToolTip(why)
            self.region_list.addItem(item)
        n = self.region_list.count()
        if n:  # as tall as its rows, up to a few: the dock has more below
            rows = min(n, REGION_ROWS_SHOWN) * max(self.region_list.sizeHintForRow(0), 1)
            self.region_list.setFixedHeight(rows + 2 * self.region_list.frameWidth() + 2)
        self.region_list.setVisible(n > 0)
        self.region_info.setVisible(n > 0)

    def _follow_probability_eye(self, _event=None) -> None:
        """Keep the box ticked exactly while the tumour probability layer is shown."""
        layer = self._probability_layer
        self.unsure_box.blockSignals(True)
        self.unsure_box.setChecked(bool(layer is not None and layer.visible))
        self.unsure_box.blockSignals(False)

    def _on_unsure_toggled(self, checked: bool) -> None:
        """Show or hide the tumour probability layer (where the model is unsure)."""
        layer = self.state.layer(PROBABILITY)
        if layer is not None:
            layer.visible = checked
            if checked:
                self.viewer.layers.selection.active = layer  # hovering says its value

    def _on_reviewed(self, checked: bool) -> None:
        """The pathologist ticks (or unticks) the outline on screen as reviewed."""
        project, sid = self.state.project, self.state.slide_id
        if project is None or sid is None:
            return
        try:
            project.set_reviewed(sid, checked)
        except ProtorefineError as exc:
            notify("warning", str(exc))
        self._say_outline()
        self.state.outline_changed.emit(sid)

    def next_to_review(self) -> str | None:
        """Show the slide not yet ticked as reviewed (as its outline is now) on which the
        model is least sure (``Project.review_order``); None (and say so) when every
        other slide is ticked."""
        from protorefine.napari.widgets.project import ProjectWidget

        project, sid = self.state.project, self.state.slide_id
        if project is None:
            notify("warning", "Open a project in 'Project and slides' first.")
            return None
        try:
            todo = [target for target in project.review_order() if target != sid]
        except ProtorefineError as exc:
            notify("warning", str(exc))
            return None
        if not todo:
            notify("info", "Every other slide's outline is ticked as reviewed.")
            return None
        panes = self.viewer.window._qt_window.findChildren(ProjectWidget)
        if panes:  # as a click in the slide list: keeps each slide's view
            panes[0].select_slide(todo[0])
        else:
            self.state.show_slide(todo[0])
        return todo[0]

    def _on_region_clicked(self, item: QListWidgetItem) -> None:
        bounds = item.data(BOUNDS_ROLE)
        if bounds:
            self.go_to(tuple(bounds))
        why = item.data(WHY_ROLE)
        self.region_info.setText(f"{item.text()}: {why}" if why else "")
        prototype = item.data(PROTOTYPE_ROLE)
        self.prototype_button.setVisible(prototype is not None)
        if prototype is not None:
            self.prototype_button.setText(f"Show prototype {prototype} in the gallery")
            self.prototype_button.setProperty("prototype", int(prototype))
        change = item.data(CHANGE_ROLE)
        self._change = tuple(change) if change else None
        self.undo_change_button.setVisible(self._change is not None)
        if self._change is not None:
            self.undo_change_button.setText(UNDO_WORDS[self._change[0]])

    def undo_change(self) -> bool:
        """Undo the change last clicked in the list (``Project.revert_to_coarse``): the
        outline on screen, its measurements, review tick and exports follow."""
        import shapely

        project, sid = self.state.project, self.state.slide_id
        if project is None or sid is None or self._change is None:
            return False
        kind, wkb = self._change
        try:
            annset = project.revert_to_coarse(sid, shapely.from_wkb(wkb))
        except ProtorefineError as exc:
            notify("warning", str(exc))
            return False
        self._show_new_outline(sid, annset)
        done = "put back into" if kind == "removed" else "taken out of"
        notify("info", f"Part {done} the outline of {sid} ('Discard hand edits' undoes it)")
        return True

    def show_prototype(self, global_id: int | None = None) -> bool:
        """Bring the Prototypes pane forward with ``global_id`` (default: the main prototype
        of the part last clicked in the list) selected, to check or mark it."""
        from protorefine.napari.widgets.prototypes import PrototypesWidget

        if global_id is None:
            global_id = self.prototype_button.property("prototype")
        found = self.viewer.window._qt_window.findChildren(PrototypesWidget)
        if global_id is None or not found or not found[0].select_prototype(int(global_id)):
            notify("warning", "The Prototypes pane has no gallery yet: compute prototypes there.")
            return False
        dock = found[0].parent()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
        if dock is not None:
            dock.show()
            dock.raise_()
        return True

    def go_to(self, bounds: tuple[float, float, float, float], margin: float = 0.5) -> None:
        """Centre the view on level-0 ``bounds`` (min x, min y, max x, max y), zoomed to show
        them with ``margin`` of their size around."""
        s = self.state.pixel_scale
        x0, y0, x1, y1 = bounds
        camera = self.viewer.scene.camera
        camera.center = ((y0 + y1) / 2 * s, (x0 + x1) / 2 * s)
        height, width = self.viewer.canvas.size
        span_y = max(y1 - y0, 1.0) * s * (1 + 2 * margin)
        span_x = max(x1 - x0, 1.0) * s * (1 + 2 * margin)
        camera.zoom = min(height / span_y, width / span_x)

    # ----- ground truth --------------------------------------------------------------------

    def _on_load_truth(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load ground truth", "", TRUTH_FILTER)
        if path:
            self.load_truth(path)

    def load_truth(self, path: str | Path) -> bool:
        """Use ``path`` as the current slide's ground truth and compute Dice of coarse and refined."""
        if self.state.project is None or self.state.slide_id is None:
            notify("warning", "Pick a slide in 'Project and slides' first.")
            return False
        self.truth_path = Path(path)
        return self.update_scores()

    def update_scores(self) -> bool:
        """Recompute Dice of the coarse and refined outlines against the loaded ground truth."""
        from protorefine.evaluate import score_slide

        project, sid, truth = self.state.project, self.state.slide_id, self.truth_path
        if project is None or sid is None or truth is None:
            return False

        def task(ctx: TaskContext) -> dict[str, dict[str, float]]:
            return score_slide(project, sid, truth)

        return self.score_runner.start("Dice against ground truth", task, on_done=self._on_scores)

    def _rescore(self) -> None:
        """Score the outline again when a ground truth is loaded and no scoring is running."""
        if self.truth_path is not None and not self.score_runner.running:
            self.update_scores()

    def _on_scores(self, scores: dict[str, dict[str, float]]) -> None:
        self.scores = {k: v["dice"] for k, v in scores.items()}
        parts = [f"Dice coarse {self.scores['coarse']:.3f}"] if "coarse" in self.scores else []
        if "refined" in self.scores:
            parts.append(f"refined {self.scores['refined']:.3f}")
        self.dice_label.setText(f"{self.truth_path.name}: " + ", ".join(parts))

    # ----- state signals -------------------------------------------------------------------

    def _on_project(self, _project) -> None:
        self.truth_path = None
        self.scores = {}
        self.dice_label.setText("No ground truth loaded")

    def _on_slide(self, slide_id) -> None:
        self._painted_layer = None
        self.truth_path = None
        self.scores = {}
        self.dice_label.setText("No ground truth loaded")
        project = self.state.project
        if project is None or slide_id is None:
            self.count_label.setText("No corrections")
            return
        truth = project.ui_state.get("truth", {}).get(slide_id)
        if truth and Path(truth).exists():
            self.truth_path = Path(truth)
            self.dice_label.setText(f"Ground truth: {self.truth_path.name}")
        self.corrections_layer(create=False)  # listen to strokes on the restored layer
        self._show_count(project.corrections(slide_id))
        self._watch_outline()

    def _on_results(self, _slide_id) -> None:
        self.corrections_layer(create=False)
        self._watch_outline()
        project = self.state.project
        if project is not None and project.has_results(_slide_id):
            self._rescore()


def _rewire(old: Layer | None, new: Layer | None, event: str, callback: Callable) -> Layer | None:
    """Move ``callback`` from layer ``old``'s ``event`` to layer ``new``'s (either may be
    None); returns ``new``."""
    if new is not old:
        if old is not None:
            getattr(old.events, event).disconnect(callback)
        if new is not None:
            getattr(new.events, event).connect(callback)
    return new


def _no_outline_yet(project, sid: str) -> str:
    """Why ``sid`` has no refined outline, and what to do."""
    if project.stage_done("output") and not project.has_outline(sid):
        return (
            f"{sid} has no coarse outline, so the last run left it out: draw one in "
            "'Coarse annotation', then run 'Refine and train' again."
        )
    return "There is no refined outline yet: run 'Refine and train' first."


def tumour_text(m: dict[str, Measurements]) -> str:
    """The Review pane's line about the tumour's size, refined beside coarse."""
    if "refined" in m:
        text = f"Tumour: {m['refined'].summary()}"
        if "coarse" in m:
            text += f" (coarse outline: {format_area(m['coarse'].area, m['coarse'].unit)})"
        return text
    return f"Coarse outline: {m['coarse'].summary()}" if "coarse" in m else ""


def _measure(project, sid: str, done: bool) -> tuple[str, list]:
    """Background thread: the Review pane's size line and region list of ``sid``'s outline."""
    try:
        figures = project.measurements(sid)
        items = []
        text = tumour_text(figures)
        if done and "refined" in figures:
            coarse = project.coarse(sid)
            refined = project.accepted_outline(sid)
            mpp = project.slide(sid).mpp
            changes = outline_changes(coarse, refined, mpp) if coarse is not None else []
            items = region_items(figures["refined"], changes, part_explainer(project, sid))
            unsure = project.unsure_shares().get(sid)
            if unsure is not None:
                text += f"; the model is unsure on {unsure:.0%} of the tissue"
    except ProtorefineError as exc:  # e.g. a damaged outline file: said in the pane
        return f"Could not measure the outline ({exc})", []
    return text, items


#: One line of the Review pane's list: text, level-0 bounds to go to, why it is so, its main
#: global prototype, and for a change its (kind, WKB of the part).
RegionItem = tuple[
    str, tuple[float, float, float, float] | None, str, int | None, tuple[str, bytes] | None
]


def region_items(
    refined: Measurements,
    changes: list[Change],
    explain: Callable[[BaseGeometry], tuple[str, int | None]] | None = None,
) -> list[RegionItem]:
    """The Review pane's list: tumour regions (largest first), then the largest changes
    against the coarse outline (with their kind and part, to undo them), each with the
    level-0 bounds to go to and, with ``explain``, what it is made of and its main global
    prototype."""
    u = refined.unit

    def why(geom: BaseGeometry | None) -> tuple[str, int | None]:
        return explain(geom) if explain is not None and geom is not None else ("", None)

    items = [
        (
            f"Region {i}: {format_area(r.area, u)}, {format_length(r.diameter, u)} across",
            r.bounds,
            *why(r.geometry),
            None,
        )
        for i, r in enumerate(refined.regions[:MAX_LISTED_REGIONS], 1)
    ]
    rest = refined.regions[MAX_LISTED_REGIONS:]
    if rest:
        total = format_area(sum(r.area for r in rest), u)
        items.append((f"… {len(rest)} smaller regions, {total} in all", None, "", None, None))
    for ch in changes:
        where = "taken out of" if ch.kind == "removed" else "added outside"
        text = f"{format_area(ch.area, u)} {where} the coarse outline"
        undo = (ch.kind, ch.geometry.wkb) if ch.geometry is not None else None
        items.append((text, ch.bounds, *why(ch.geometry), undo))
    return items
