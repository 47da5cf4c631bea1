"""Dock widget "Prototypes": compute local and global prototypes, browse them, relabel them.

Runs the pipeline up to the prototypes stage for every slide of the project in a
worker thread, shows the "local prototypes" and "global prototypes" grid layers
(a local prototype is a shade of its global family's colour), and a gallery with
example patches, size and tumour score per global prototype. Marking a prototype
tumour, normal or ignore updates the pseudo-labels layer at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import napari
import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QColor, QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDockWidget,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
)

from protorefine.errors import ProtorefineError
from protorefine.napari.colormaps import global_colormap, local_colormap, swatch_hex
from protorefine.napari.layer_names import (
    CONFIDENCE,
    GLOBAL_PROTOTYPES,
    LOCAL_PROTOTYPES,
    PSEUDO_LABELS,
)
from protorefine.napari.widgets._common import (
    SlideResults,
    WorkflowWidget,
    load_results,
    pipeline_for,
    relay_slide_tasks,
    runnable_project,
    show_results,
    slide_task_events,
    table_headers,
)
from protorefine.napari.widgets._grid import GridControls
from protorefine.napari.widgets._worker import TaskContext, TaskRunner, notify

if TYPE_CHECKING:
    from protorefine._types import Cancel
    from protorefine.project import Project
    from protorefine.project.gallery import PrototypeCard

#: Side of the example patches in the gallery, in screen pixels.
THUMB = 40

#: Gallery labels a prototype can take (None clears the mark).
MARKS = {"tumour": "Tumour", "normal": "Normal", "ignore": "Ignore"}


def gallery_cards(project: Project, cancel: Cancel | None = None) -> list[PrototypeCard]:
    """The gallery's cards (:func:`protorefine.project.gallery.prototype_cards`); call it in a
    worker. Imported here, not at the top: the gallery data pulls in torch, which
    :func:`~protorefine.napari.widgets._common.warm_up` imports in the background."""
    from protorefine.project.gallery import prototype_cards

    return prototype_cards(project, thumb=THUMB, cancel=cancel)


def _pixmap(rgb: np.ndarray) -> QPixmap:
    """A QPixmap of an (H, W, 3) uint8 array."""
    rgb = np.ascontiguousarray(rgb)
    h, w, _ = rgb.shape
    image = QImage(rgb.tobytes(), w, h, 3 * w, QImage.Format.Format_RGB888)
    return QPixmap.fromImage(image.copy())


class PrototypesWidget(WorkflowWidget):
    """Compute, show and relabel the prototypes of every slide in the project."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self.cards: list[PrototypeCard] = []
        self._styled: tuple | None = None
        self._build: str | None = None  # the prototypes build whose carried marks were said
        self._gallery_build: str | None = None  # the prototypes build the gallery shows

        intro = QLabel(
            "Patterns found in the tissue of every slide. Colours are shared by both layers; "
            "click a prototype to see its patches, then mark it if the tumour score is wrong."
        )
        intro.setWordWrap(True)
        self.encoder = QComboBox()
        self.encoder.setEditable(True)  # a TorchScript file, a timm spec or a '+' combination
        self.encoder.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.encoder.setToolTip(
            "Patch feature encoder: pick one, or type a TorchScript file, "
            "timm:<model>@<weights.pth>, or names joined by '+' "
            "(changing it recomputes the features)"
        )
        self.run_button = QPushButton("Compute prototypes")
        self.run_button.setToolTip(
            "Features, local and global prototypes and pseudo-labels for all slides"
        )
        self.run_button.clicked.connect(self.run)
        self.runner = TaskRunner(self.state)
        # the gallery only reads stored prototypes: outside the one-pipeline-run lock, so a
        # run can start while it loads (the bar shows only while it does)
        self.gallery_runner = TaskRunner()
        self.gallery_runner.hide()
        self.gallery_runner.finished.connect(self.gallery_runner.hide)

        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["id", "example patches", "patches", "tumour score"])
        header, rows = table_headers(self.table)
        rows.setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setStretchLastSection(True)
        rows.setDefaultSectionSize(THUMB + 6)
        self.table.setMinimumHeight(3 * (THUMB + 6) + 28)  # the pane fits a 1080p screen
        self.table.itemSelectionChanged.connect(self._on_selection)

        self.mark_buttons: dict[str | None, QPushButton] = {}
        marks = QHBoxLayout()
        for label, text in [*MARKS.items(), (None, "Clear mark")]:
            button = QPushButton(text)
            button.setToolTip(
                "Use the pathologist's label for this prototype's patches"
                if label
                else "Go back to the computed tumour score"
            )
            button.clicked.connect(lambda _=False, lab=label: self.mark_selected(lab))
            button.setEnabled(False)
            marks.addWidget(button)
            self.mark_buttons[label] = button
        self.show_all_button = QPushButton("Show all prototypes")
        self.show_all_button.clicked.connect(self.show_all)

        self.grid = GridControls()
        for signal in (
            self.grid.patch_size.valueChanged,
            self.grid.resolution.currentIndexChanged,
            self.grid.finer.toggled,
        ):
            signal.connect(self._show_grid)

        form = QFormLayout()
        form.addRow("Encoder", self.encoder)
        form.addRow("Patches", self.grid)
        lay = QVBoxLayout(self.body)
        lay.addWidget(intro)
        lay.addLayout(form)
        lay.addWidget(self.run_button)
        lay.addWidget(self.runner)
        lay.addWidget(self.gallery_runner)
        lay.addWidget(self.table, 1)
        lay.addLayout(marks)
        lay.addWidget(self.show_all_button)

        self._fill_encoders()
        self.state.project_changed.connect(self._on_project)
        self.state.slide_changed.connect(self._on_slide)
        self.state.results_changed.connect(self._on_results)
        self.state.prototype_requested.connect(self._on_prototype_requested)
        if self.state.project is not None:
            self._on_project(self.state.project)

    # ----- running -------------------------------------------------------------------------

    def run(self) -> bool:
        """Start features + prototypes for all slides; False (with a notification) if it cannot start."""
        project = runnable_project(self.state)
        if project is None:
            return False
        # imported here: protorefine.features pulls in torch (warm_up imports it in the background)
        from protorefine.features.encoders import parse_encoder_name

        encoder = self.encoder.currentText().strip() or project.config.encoder
        try:
            parse_encoder_name(encoder)
        except ProtorefineError as exc:
            notify("warning", str(exc))
            return False
        try:  # replace() validates: a bad combination is one line, not a failed run
            config = project.config.replace(encoder=encoder, **self.grid.changes())
        except ProtorefineError as exc:
            notify("warning", str(exc))
            return False
        pipeline = pipeline_for(project, config, scheduler=self.state.scheduler)

        slide_id = self.state.slide_id

        def task(ctx: TaskContext) -> tuple[list[PrototypeCard], SlideResults]:
            relay_slide_tasks(pipeline, ctx)
            pipeline.run(until="pseudo_labels", progress=ctx.progress, cancel=ctx.cancel)
            ctx.progress(0, 1, "reading example patches")
            cards = gallery_cards(project, ctx.cancel)
            return cards, load_results(project, slide_id)

        return self.runner.start(
            "Prototypes", task, on_done=self._on_cards, on_event=slide_task_events(self.state)
        )

    def mark_selected(self, label: str | None) -> bool:
        """Mark the selected prototype tumour / normal / ignore (None clears) and update pseudo-labels."""
        gid = self.selected_prototype()
        if gid is None:
            notify("info", "Click a prototype in the list first.")
            return False
        return self.mark(gid, label)

    def mark(self, global_id: int, label: str | None) -> bool:
        """Set the pathologist's label of one global prototype and refresh the pseudo-labels layer."""
        project = self.state.project
        if project is None:
            return False
        pipeline = pipeline_for(project)

        slide_id = self.state.slide_id

        def task(ctx: TaskContext) -> tuple[int, str | None, SlideResults]:
            project.set_mark(global_id, label)
            pipeline.update_pseudo_labels(progress=ctx.progress, cancel=ctx.cancel)
            return global_id, label, load_results(project, slide_id, (PSEUDO_LABELS, CONFIDENCE))

        return self.runner.start("Prototype label", task, on_done=self._on_marked)

    # ----- results -------------------------------------------------------------------------

    def _on_cards(self, result: tuple[list[PrototypeCard], SlideResults]) -> Iterator[None]:
        self.cards, results = result
        self._gallery_build = self.state.require_project().stage_info("prototypes").get("run")
        self._say_carried_marks()
        yield from show_results(self.state, results, show=(GLOBAL_PROTOTYPES,), emit=False)
        yield from self._style_steps()  # a new colormap costs a slow repaint: one per turn
        self._fill_table()
        yield
        self.state.results_changed.emit(self.state.slide_id)

    def _on_marked(self, result: tuple[int, str | None, SlideResults]) -> Iterator[None]:
        gid, label, results = result
        for card in self.cards:
            if card.global_id == gid:
                card.label = label
        yield from show_results(self.state, results, show=(PSEUDO_LABELS,))
        self._fill_table(keep=gid)

    def _fill_table(self, keep: int | None = None) -> None:
        self.state.gallery_ids = frozenset(card.global_id for card in self.cards)
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.cards))
        for row, card in enumerate(self.cards):
            name = QTableWidgetItem(f"{card.global_id}")
            name.setData(Qt.ItemDataRole.UserRole, card.global_id)
            name.setBackground(QColor(swatch_hex(card.global_id)))
            name.setForeground(QColor("black"))
            name.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            self.table.setItem(row, 0, name)
            thumbs = QLabel()
            thumbs.setPixmap(_pixmap(card.thumbs))
            self.table.setCellWidget(row, 1, thumbs)
            self.table.setItem(row, 2, QTableWidgetItem(f"{card.size}"))
            mark = f" → {MARKS[card.label]}" if card.label in MARKS else ""
            self.table.setItem(row, 3, QTableWidgetItem(f"{card.score:.2f}{mark}"))
        self.table.blockSignals(False)
        if keep is not None:
            for row, card in enumerate(self.cards):
                if card.global_id == keep:
                    self.table.selectRow(row)
        self._on_selection()

    def selected_prototype(self) -> int | None:
        """Global id of the prototype selected in the gallery, or None."""
        selection = self.table.selectionModel()
        rows = selection.selectedRows() if selection is not None else []
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 0)
        return None if item is None else int(item.data(Qt.ItemDataRole.UserRole))

    def select_prototype(self, global_id: int) -> bool:
        """Select ``global_id`` in the gallery (scrolled into view) and show only its patches;
        False when the gallery does not hold it (no prototypes computed yet)."""
        for row, card in enumerate(self.cards):
            if card.global_id == global_id:
                self.table.selectRow(row)
                self.table.scrollToItem(self.table.item(row, 0))
                return True
        return False

    def _on_prototype_requested(self, global_id: int) -> None:
        """Another pane asks for ``global_id``: select it and bring this pane forward."""
        if not self.select_prototype(global_id):
            return
        dock = self.parent()
        while dock is not None and not isinstance(dock, QDockWidget):
            dock = dock.parent()
        if isinstance(dock, QDockWidget):
            dock.show()
            dock.raise_()

    def _on_selection(self) -> None:
        gid = self.selected_prototype()
        for button in self.mark_buttons.values():
            button.setEnabled(gid is not None)
        if gid is not None:
            self.highlight(gid)

    def highlight(self, global_id: int) -> None:
        """Show only the patches of one global prototype on the global-prototypes layer."""
        layer = self.state.layer(GLOBAL_PROTOTYPES)
        if layer is None:
            return
        layer.visible = True
        layer.selected_label = global_id + 1
        layer.show_selected_label = True

    def show_all(self) -> None:
        """Show every prototype again (undo a highlight)."""
        layer = self.state.layer(GLOBAL_PROTOTYPES)
        if layer is not None:
            layer.show_selected_label = False

    def style_layers(self) -> None:
        """Colour the prototype layers: one hue per global prototype, shades for its local ones."""
        for _ in self._style_steps():
            pass

    def _style_steps(self) -> Iterator[None]:
        """Give each prototype layer its colormap, yielding after each one that changed."""
        glob = self.state.layer(GLOBAL_PROTOTYPES)
        loc = self.state.layer(LOCAL_PROTOTYPES)
        if glob is None:
            return
        key = (id(glob), id(loc), glob.data.tobytes(), None if loc is None else loc.data.tobytes())
        if key == self._styled:  # same layers, same ids: colours already right
            return
        self._styled = key
        gid = np.asarray(glob.data).astype(np.int64) - 1
        glob.colormap = global_colormap(gid)
        glob.opacity = 0.6
        if loc is not None and loc.data.shape == glob.data.shape:
            yield
            lid = np.asarray(loc.data).astype(np.int64) - 1
            loc.colormap = local_colormap(lid, gid)
            loc.opacity = 0.6
        yield

    # ----- state signals -------------------------------------------------------------------

    def _fill_encoders(self) -> None:
        from protorefine.features import list_encoders
        from protorefine.features.encoders import COMBINED_ENCODERS

        self.encoder.clear()
        self.encoder.addItems([*list_encoders(), *COMBINED_ENCODERS])
        project = self.state.project
        if project is not None:
            self.encoder.setCurrentText(project.config.encoder)  # typed names show as text

    def _on_project(self, project) -> None:
        self.cards = []
        self.state.gallery_ids = frozenset()
        self.table.setRowCount(0)
        if project is None:
            return
        self.encoder.setCurrentText(project.config.encoder)
        self._build = project.stage_info("prototypes").get("run")
        self.grid.sync(project)
        self._show_grid()
        self._load_gallery()

    def _load_gallery(self) -> None:
        """Fill the gallery from the stored prototypes when it shows another build (or none):
        after opening a project, or after prototypes were built by a Refine run."""
        project = self.state.project
        if project is None or self.gallery_runner.running or not project.stage_done("prototypes"):
            return
        build = project.stage_info("prototypes").get("run")
        if self.cards and build == self._gallery_build:
            return
        self.gallery_runner.show()
        self.gallery_runner.start(
            "Prototype gallery",
            lambda ctx: (build, gallery_cards(project, ctx.cancel)),
            on_done=self._on_gallery,
        )

    def _say_carried_marks(self) -> None:
        """After a rebuild, say where the pathologist's marks went (ids changed)."""
        info = self.state.require_project().stage_info("prototypes")
        if info.get("run") == self._build:
            return
        self._build = info.get("run")
        before, after = info.get("marks_before", 0), info.get("marks_carried", 0)
        if before:
            notify(
                "info",
                f"Prototypes were rebuilt: your marks of {before} prototype(s) now apply to "
                f"{after} new prototype(s) covering the same tissue (see the list).",
            )

    def _on_gallery(self, result: tuple[str | None, list[PrototypeCard]]) -> None:
        self._gallery_build, self.cards = result
        self._fill_table()

    def _on_slide(self, slide_id) -> None:
        self.style_layers()
        if self.state.project is not None:  # slides may have been added or removed
            self.grid.sync(self.state.project, keep=True)
        self._show_grid()

    def _show_grid(self, *_args) -> None:
        """Say what the chosen grid gives on the slide on screen."""
        self.grid.show_for(self.state.slide)

    def _on_results(self, slide_id) -> None:
        self.style_layers()
        self._load_gallery()
