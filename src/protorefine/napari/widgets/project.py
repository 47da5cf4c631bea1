"""Dock widget "Project and slides": create/open a project, add slides, switch between them.

The project (``protorefine.project.Project``) holds everything; this widget only
calls it and shows the result. What the user looked at (current slide, camera per
slide, which grid layers are visible) is saved in ``Project.ui_state`` and
restored when the project is opened again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHBoxLayout,
    QHeaderView,
    QInputDialog,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from protorefine.errors import ProtorefineError
from protorefine.measure import UNSURE, format_area, measure
from protorefine.napari.layers import META_PATH
from protorefine.napari.state import get_state
from protorefine.napari.widgets._common import add_shortcut, table_headers
from protorefine.napari.widgets._worker import LatestOnly

if TYPE_CHECKING:
    import napari

    from protorefine.project import Project
    from protorefine.project.cluster import SlideTask

SLIDE_FILTER = "Slides (*.svs *.tif *.tiff *.ome.tif *.ome.tiff *.png *.jpg *.jpeg);;All files (*)"
#: Text colour of a slide whose file is not where the project says.
MISSING_COLOUR = "#ef4444"
#: The slide list: the batch at a glance (size and levels: the name's tooltip and the line
#: under the list, so long slide names keep their room in a narrow pane).
COLUMNS = ("slide", "mpp", "tumour", "unsure", "reviewed", "cluster task")
MPP_COLUMN = COLUMNS.index("mpp")
#: Where each slide's task of a cluster run stands (shown while a scheduler is set).
TASK_COLUMN = COLUMNS.index("cluster task")
TUMOUR_COLUMN = COLUMNS.index("tumour")
UNSURE_COLUMN = COLUMNS.index("unsure")
REVIEWED_COLUMN = COLUMNS.index("reviewed")
#: The columns ``_slide_status`` fills in the background, in its tuple's order.
STATUS_COLUMNS = (TUMOUR_COLUMN, UNSURE_COLUMN, REVIEWED_COLUMN)
#: The tumour column of a slide without a coarse outline (a run leaves it out).
NO_OUTLINE = "no outline yet"
#: How often (ms) the pane looks whether another process runs on the open project.
BUSY_CHECK_MS = 3000
#: Keys that step through the slide list from anywhere in napari's window.
NEXT_SLIDE_KEYS = "PgDown"
PREVIOUS_SLIDE_KEYS = "PgUp"
#: The reviewed column's words for a slide's review state (None: never checked).
REVIEW_MARKS = {"reviewed": "✓", "changed": "changed"}
MPP_TIP = (
    "microns per pixel at full resolution, from the file or set by hand (set); "
    "double-click to set it"
)
#: Tooltips of the status columns.
STATUS_TIPS = {
    "tumour": (
        "area of the refined (accepted) tumour outline; 'no outline yet': draw a coarse "
        "one, the runs leave the slide out until then"
    ),
    "unsure": (
        "share of the tissue patches whose tumour probability is between "
        f"{UNSURE[0]} and {UNSURE[1]}; "
        "'Next slide to review' goes to the least sure slide first"
    ),
    "reviewed": "ticked as reviewed in 'Review and export' (changed: the outline changed since)",
    "cluster task": (
        "the slide's last task on the cluster: queued, on a worker, its seconds when done "
        "(cached: found done), failed or cancelled"
    ),
}
#: File patterns dropped on the viewer that should open with the protorefine reader
#: (napari asks which reader to use otherwise); a choice the user made is kept.
READER_PATTERNS = ("*.svs", "*.tif", "*.tiff", "*.zarr", "*.geojson", "*.xml")
#: Milliseconds of camera stillness before the view is saved into the project.
CAMERA_SAVE_DELAY_MS = 1500


class ProjectWidget(QWidget):
    """Create or open a project folder, add slides, list them and switch the slide on screen."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        # reading every slide's outline takes a while on big projects: never in the event loop
        self._status = LatestOnly(self._show_status, "status", self)
        self._tasks: dict[str, str] = {}  # each slide's last cluster task, as shown

        self.folder_label = QLabel("No project open")
        self.folder_label.setWordWrap(True)
        self.folder_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.new_button = QPushButton("New project…")
        self.open_button = QPushButton("Open project…")
        self.add_button = QPushButton("Add slides…")
        self.add_layers_button = QPushButton("Add open image layers")
        self.add_layers_button.setToolTip(
            "Add slides you opened or dropped on the viewer (protorefine reader) to the project"
        )
        self.remove_button = QPushButton("Remove slide")
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        header, rows = table_headers(self.table)
        rows.setVisible(False)
        self.table.setWordWrap(False)
        self.table.setMinimumHeight(120)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        for col in range(1, len(COLUMNS)):
            header.setSectionResizeMode(col, QHeaderView.ResizeMode.ResizeToContents)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.batch = QLabel("")
        self.batch.setWordWrap(True)
        self.busy = QLabel("")  # another process runs on the project (its lock)
        self.scheduler = QLineEdit()
        self.scheduler.setPlaceholderText("this machine (or tcp://host:8786, local:4)")
        self.scheduler.setToolTip(
            "Run each slide's reading and feature extraction on a dask cluster: a scheduler "
            "address (tcp://host:port), a scheduler file, or local:N for N worker processes "
            "here. Workers need the project and slides at the same paths (docs/cluster.md)."
        )
        self.busy.setWordWrap(True)
        self.busy.setVisible(False)

        row1 = QHBoxLayout()
        row1.addWidget(self.new_button)
        row1.addWidget(self.open_button)
        row2 = QHBoxLayout()
        row2.addWidget(self.add_button)
        row2.addWidget(self.add_layers_button)
        row2.addWidget(self.remove_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.folder_label)
        layout.addLayout(row1)
        layout.addLayout(row2)
        row3 = QHBoxLayout()
        row3.addWidget(QLabel("Cluster:"))
        row3.addWidget(self.scheduler)
        layout.addLayout(row3)
        layout.addWidget(self.table)
        layout.addWidget(self.status)
        layout.addWidget(self.batch)
        layout.addWidget(self.busy)
        for button in self.findChildren(QPushButton):
            button.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)

        self.new_button.clicked.connect(self._on_new)
        self.open_button.clicked.connect(self._on_open)
        self.add_button.clicked.connect(self._on_add)
        self.add_layers_button.clicked.connect(self.add_open_layers)
        self.remove_button.clicked.connect(self._on_remove)
        self.scheduler.editingFinished.connect(lambda: self.set_scheduler(self.scheduler.text()))
        self.table.itemSelectionChanged.connect(self._on_selection)
        self.table.cellDoubleClicked.connect(self._on_double_click)
        self.table.setToolTip(
            f"Click a slide to show it ({NEXT_SLIDE_KEYS} / {PREVIOUS_SLIDE_KEYS}: the next / "
            "previous one); double-click its mpp to set the pixel size"
        )
        add_shortcut(self, NEXT_SLIDE_KEYS, self.table, lambda: self.step_slide(1))
        add_shortcut(self, PREVIOUS_SLIDE_KEYS, self.table, lambda: self.step_slide(-1))

        self._camera_timer = QTimer(self)
        self._camera_timer.setSingleShot(True)
        self._camera_timer.setInterval(CAMERA_SAVE_DELAY_MS)
        self._camera_timer.timeout.connect(self.save_view)
        self.viewer.scene.camera.events.center.connect(self._camera_moved)
        self.viewer.scene.camera.events.zoom.connect(self._camera_moved)

        self._busy_timer = QTimer(self)
        self._busy_timer.setInterval(BUSY_CHECK_MS)
        self._busy_timer.timeout.connect(self.show_busy)
        self._busy_timer.start()

        self._filling = False
        prefer_protorefine_reader()
        self.state.project_changed.connect(self._on_project_changed)
        self.state.slide_changed.connect(self._on_slide_changed)
        self.state.results_changed.connect(self.update_status)
        self.state.outline_changed.connect(self.update_status)
        self.state.coarse_changed.connect(self.update_status)
        self.state.slide_requested.connect(self.select_slide)
        self.state.slide_task.connect(self.show_task)
        self.table.setColumnHidden(TASK_COLUMN, not self.state.scheduler)
        self._update_enabled()
        if self.state.project is not None:
            self._on_project_changed(self.state.project)

    # ---- actions (also the API tests and the demo drive) -------------------------------

    def set_scheduler(self, address: str) -> None:
        """Send the next runs' per-slide work to the dask scheduler at ``address`` ("": run
        on this machine); it is connected when a run starts, and a bad one is that run's
        one-line error."""
        self.state.scheduler = address.strip()
        if self.scheduler.text() != self.state.scheduler:
            self.scheduler.setText(self.state.scheduler)
        self.table.setColumnHidden(TASK_COLUMN, not self.state.scheduler)

    def show_task(self, task: SlideTask) -> None:
        """Show where a slide's task of a cluster run stands in its row (``state.slide_task``)."""
        self._tasks[task.slide_id] = text = task.describe()
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            cell = self.table.item(row, TASK_COLUMN)
            if item is not None and cell is not None and item.text() == task.slide_id:
                cell.setText(text)

    def create_project(self, folder: str | Path) -> Project | None:
        """Create a new project in ``folder`` and make it the open one."""
        from protorefine.project import Project

        project = _guard(lambda: Project.create(folder))
        if project is not None:
            self._set_project(project)
        return project

    def open_project(self, folder: str | Path) -> Project | None:
        """Open the project in ``folder``, restoring the slide and view saved in it."""
        from protorefine.project import Project

        project = _guard(lambda: Project.open(folder))
        if project is not None:
            self._set_project(project)
        return project

    def add_slides(self, paths: Sequence[str | Path]) -> list[str]:
        """Add slide files to the project; a file that is not a slide is reported and skipped."""
        project = self._project_or_error()
        if project is None:
            return []
        added: list[str] = []
        for path in paths:
            entry = _guard(lambda p=path: project.add_slide(p))
            if entry is not None:
                added.append(entry.id)
        if added:
            self.refresh()
            show_info(f"added {len(added)} slide(s): {', '.join(added)}")
            if self.state.slide_id is None:
                self.select_slide(added[0])
        return added

    def add_open_layers(self) -> list[str]:
        """Add the slides open as image layers (dropped on the viewer) to the project."""
        project = self._project_or_error()
        if project is None:
            return []
        ours = {id(self.state.image_layer)}
        layers = [
            lay for lay in self.viewer.layers if isinstance(lay, Image) and id(lay) not in ours
        ]
        paths = [p for lay in layers if (p := _layer_path(lay)) is not None]
        if not paths:
            show_warning(
                "no open image layer comes from a slide file: open or drop slides on the viewer first"
            )
            return []
        known = {str(Path(s.path).resolve()) for s in project.slides}
        added = self.add_slides([p for p in paths if str(Path(p).resolve()) not in known])
        for lay in layers:
            if _layer_path(lay) is not None and lay in self.viewer.layers:
                self.viewer.layers.remove(lay)
        if added:
            self.select_slide(added[0])
        return added

    def remove_slide(self, slide_id: str) -> None:
        """Remove ``slide_id`` from the project (its files on disk are kept)."""
        project = self._project_or_error()
        if project is None:
            return
        if self.state.slide_id == slide_id:
            self.state.show_slide(None)
        if _guard(lambda: project.remove_slide(slide_id), ok=True):
            self.refresh()

    def select_slide(self, slide_id: str | None) -> None:
        """Show ``slide_id``: swap the layers and remember it as the current slide.

        A slide whose file is not where the project says (moved, renamed, another
        computer) asks for its new place first.
        """
        project = self.state.project
        if project is None or slide_id == self.state.slide_id:
            self._select_row(slide_id)
            return
        if slide_id is not None and project.slide_missing(slide_id):
            self._select_row(self.state.slide_id)
            path, _ = QFileDialog.getOpenFileName(
                self, f"Where is the slide file of {slide_id}?", "", SLIDE_FILTER
            )
            if path:
                self.locate_slide(slide_id, path)
            return
        self.save_view()
        if _guard(lambda: self.state.show_slide(slide_id), ok=True):
            self._restore_view(slide_id)
            self.save_view()

    def step_slide(self, delta: int) -> str | None:
        """Show the slide ``delta`` rows below (above, when negative) the one on screen in
        the list; None at either end."""
        items = [self.table.item(r, 0) for r in range(self.table.rowCount())]
        ids = [item.text() for item in items if item is not None]
        here = ids.index(self.state.slide_id) if self.state.slide_id in ids else -1
        target = here + delta if here >= 0 else 0
        if not ids or not 0 <= target < len(ids) or target == here:
            return None
        self.select_slide(ids[target])
        return ids[target]

    def locate_slide(self, slide_id: str, path: str | Path) -> bool:
        """Point a slide whose file moved at ``path`` (the same slide: checked) and show it;
        its outlines and results are kept."""
        project = self._project_or_error()
        if project is None or not _guard(lambda: project.relocate_slide(slide_id, path), ok=True):
            return False
        # slides moved together: the other missing ones are looked for beside it, by file name
        folder, also = Path(path).parent, []
        for entry in project.slides:
            candidate = folder / Path(entry.path).name
            if project.slide_missing(entry.id) and candidate.exists():
                try:
                    project.relocate_slide(entry.id, candidate)
                except ProtorefineError:
                    continue  # same name, another slide: the user locates it by hand
                also.append(entry.id)
        self.refresh()
        extra = f"; found beside it: {', '.join(also)}" if also else ""
        show_info(f"slide {slide_id} found at {path}{extra}")
        self.select_slide(slide_id)
        return True

    def set_pixel_size(self, slide_id: str, mpp: float | None) -> bool:
        """Give ``slide_id`` its microns per pixel by hand (None: as its file says) and show it
        at that scale; stages from the patch grid on rerun, their features from the cache."""
        project = self._project_or_error()
        if project is None:
            return False
        had_results = project.stage_done("output")
        if not _guard(lambda: project.set_slide_mpp(slide_id, mpp), ok=True):
            return False
        self.refresh()
        if self.state.slide_id == slide_id:
            _guard(lambda: self.state.show_slide(slide_id), ok=True)
        entry = project.slide(slide_id)
        size = f"{entry.mpp:g} µm/px" if entry.mpp else "unknown"
        rerun = "; run 'Refine and train' again for its results (features are reused)"
        show_info(f"pixel size of {slide_id}: {size}{rerun if had_results else ''}")
        return True

    def refresh(self) -> None:
        """Refill the slide table from the project."""
        project = self.state.project
        self._filling = True
        try:
            self.table.setRowCount(0)
            if project is None:
                return
            for entry in project.slides:
                row = self.table.rowCount()
                self.table.insertRow(row)
                h, w = entry.shape[:2]
                mpp = f"{entry.mpp:.3f}" if entry.mpp else "unknown"
                mpp += " (set)" if entry.mpp_by_user else ""
                values = (entry.id, mpp, "", "", "", self._tasks.get(entry.id, ""))
                missing = project.slide_missing(entry.id)
                about = f"{entry.path}: {w} × {h} px, {entry.levels} level(s)"
                for col, text in enumerate(values):
                    item = QTableWidgetItem(text)
                    item.setToolTip(
                        f"file missing: {entry.path}; click to say where it is now"
                        if missing
                        else MPP_TIP
                        if col == MPP_COLUMN
                        else STATUS_TIPS.get(COLUMNS[col], about)
                    )
                    if missing:
                        item.setForeground(QColor(MISSING_COLOUR))
                    self.table.setItem(row, col, item)
            self._select_row(self.state.slide_id)
        finally:
            self._filling = False
            self._update_enabled()
        self.update_status()

    def update_status(self, *_args) -> None:
        """Find every slide's tumour area and review state in the background, then show them."""
        if self.state.project is not None:
            self._status.submit(_slide_status, self.state.project)

    def _show_status(self, found: dict[str, tuple[str, str, str]]) -> None:
        self.batch.setText(batch_text(found, self.table.rowCount()))
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            texts = found.get(item.text(), ("",) * 3) if item is not None else ("",) * 3
            for col, text in zip(STATUS_COLUMNS, texts, strict=True):
                cell = self.table.item(row, col)
                if cell is not None:
                    cell.setText(text)

    def show_busy(self) -> None:
        """One line under the list while another process (a ``protorefine refine``) runs on
        the open project; hidden otherwise."""
        from protorefine.project.lock import busy_message

        project = self.state.project
        text = busy_message(project.folder) if project is not None else None
        self.busy.setText(text or "")
        self.busy.setVisible(text is not None)

    def save_view(self) -> None:
        """Save the current slide, its camera and the visible grid layers into the project."""
        project, sid = self.state.project, self.state.slide_id
        if project is None:
            return
        ui = project.ui_state
        ui["current_slide"] = sid
        if sid is not None:
            cam = self.viewer.scene.camera
            ui.setdefault("camera", {})[sid] = {
                "center": [float(c) for c in cam.center[-2:]],
                "zoom": float(cam.zoom),
            }
            ui["visible"] = {
                name: bool(lay.visible) for name, lay in self.state.grid_layers().items()
            }
        _guard(project.save_ui_state, ok=True)

    # ---- internals ------------------------------------------------------------------

    def _set_project(self, project: Project) -> None:
        self.save_view()
        self.state.set_project(project)
        saved = project.ui_state.get("current_slide")
        missing = [s.id for s in project.slides if project.slide_missing(s.id)]
        ids = [s.id for s in project.slides if s.id not in missing]
        if missing:
            show_warning(
                f"slide file(s) not found: {', '.join(missing)} (red in the list); "
                "click one to say where it is now"
            )
        target = saved if saved in ids else (ids[0] if ids else None)
        if target is not None:
            self.select_slide(target)

    def _on_project_changed(self, project: Project | None) -> None:
        self.folder_label.setText(f"Project: {project.folder}" if project else "No project open")
        self._tasks.clear()  # another project's slides
        self.refresh()
        self.show_busy()

    def _on_slide_changed(self, slide_id: str | None) -> None:
        self._select_row(slide_id)
        visible = self.state.project.ui_state.get("visible", {}) if self.state.project else {}
        for name, lay in self.state.grid_layers().items():
            if name in visible:
                lay.visible = bool(visible[name])
        self._update_enabled()
        if slide_id is not None and self.state.slide is not None:
            s = self.state.slide
            self.viewer.scale_bar.visible = s.mpp is not None
            hint = "" if s.mpp else "; no pixel size: double-click its mpp to give it"
            self.status.setText(
                f"Showing {slide_id}: {s.shape[1]} × {s.shape[0]} px, {len(s.levels)} level(s)"
                + hint
            )
        else:
            self.status.setText("")

    def _restore_view(self, slide_id: str | None) -> None:
        project = self.state.project
        if project is None or slide_id is None:
            return
        cam = project.ui_state.get("camera", {}).get(slide_id)
        if cam:
            self.viewer.scene.camera.center = tuple(cam["center"])
            self.viewer.scene.camera.zoom = float(cam["zoom"])

    def _camera_moved(self, _event: Any = None) -> None:
        if self.state.project is not None and self.state.slide_id is not None:
            self._camera_timer.start()

    def _select_row(self, slide_id: str | None) -> None:
        was = self._filling
        self._filling = True
        try:
            self.table.clearSelection()
            for row in range(self.table.rowCount()):
                item = self.table.item(row, 0)
                if item is not None and item.text() == slide_id:
                    self.table.selectRow(row)
                    break
        finally:
            self._filling = was

    def _on_selection(self) -> None:
        if self._filling:
            return
        rows = {i.row() for i in self.table.selectedItems()}
        if rows:
            item = self.table.item(min(rows), 0)
            if item is not None:
                self.select_slide(item.text())

    def _on_double_click(self, row: int, col: int) -> None:
        item = self.table.item(row, 0)
        project = self.state.project
        if col != MPP_COLUMN or item is None or project is None:
            return
        entry = project.slide(item.text())
        value, ok = QInputDialog.getDouble(
            self,
            "Pixel size",
            f"Microns per pixel of {entry.id} at full resolution\n"
            "(40x scans about 0.25, 20x about 0.5; 0: as the file says)",
            entry.mpp or 0.0,
            0.0,
            100.0,
            4,
        )
        if ok:
            self.set_pixel_size(entry.id, value or None)

    def _update_enabled(self) -> None:
        has_project = self.state.project is not None
        for button in (self.add_button, self.add_layers_button):
            button.setEnabled(has_project)
        self.remove_button.setEnabled(has_project and self.state.slide_id is not None)

    def _project_or_error(self) -> Project | None:
        if self.state.project is None:
            show_error("no project is open: click 'New project…' or 'Open project…' first")
        return self.state.project

    def _on_new(self) -> None:
        folder = QFileDialog.getSaveFileName(self, "New project folder", "", "Project folder (*)")[
            0
        ]
        if folder:
            self.create_project(folder)

    def _on_open(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open project folder")
        if folder:
            self.open_project(folder)

    def _on_add(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(self, "Add slides", "", SLIDE_FILTER)
        if paths:
            self.add_slides(paths)

    def _on_remove(self) -> None:
        if self.state.slide_id is not None:
            self.remove_slide(self.state.slide_id)


def batch_text(found: dict[str, tuple[str, str, str]], slides: int) -> str:
    """Where the batch stands: refined slides reviewed, slides still without an outline."""
    if not slides:
        return ""
    refined = [v for v in found.values() if v[0] not in ("", NO_OUTLINE)]
    reviewed = sum(v[2] == REVIEW_MARKS["reviewed"] for v in refined)
    waiting = sum(v[0] == NO_OUTLINE for v in found.values())
    parts = [f"Reviewed {reviewed} of {len(refined)} refined slide(s)"] if refined else []
    if waiting:
        parts.append(f"{waiting} slide(s) with no outline yet")
    return "; ".join(parts)


def _slide_status(project: Project) -> dict[str, tuple[str, str, str]]:
    """Background thread: (tumour area, unsure share, review mark) of every refined slide;
    "no outline yet" for a slide without a coarse outline."""
    found: dict[str, tuple[str, str, str]] = {}
    with project.reading():
        try:
            shares = project.unsure_shares()
        except ProtorefineError:
            shares = {}
        for entry in project.slides:
            if not project.has_outline(entry.id):
                found[entry.id] = (NO_OUTLINE, "", "")
                continue
            if not project.has_results(entry.id):
                continue
            try:
                m = measure(project.accepted_outline(entry.id), entry.mpp)
                unsure = f"{shares[entry.id]:.0%}" if entry.id in shares else ""
                state = project.review_state(entry.id)
                review = REVIEW_MARKS.get(state, "") if state is not None else ""
                found[entry.id] = (format_area(m.area, m.unit), unsure, review)
            except ProtorefineError:  # e.g. a damaged outline file: the panes say what is wrong
                found[entry.id] = ("?", "", "")
    return found


def prefer_protorefine_reader() -> list[str]:
    """Make protorefine the reader for slide and annotation files the user has no choice for."""
    from napari.settings import get_settings

    plugins = get_settings().plugins
    current = dict(plugins.extension2reader)
    added = [p for p in READER_PATTERNS if p not in current]
    if added:
        current.update(dict.fromkeys(added, "protorefine"))
        plugins.extension2reader = current
    return added


def _layer_path(layer: Image) -> str | None:
    """The slide file behind an image layer (protorefine reader metadata, else napari's source)."""
    path = layer.metadata.get(META_PATH) or getattr(layer.source, "path", None)
    return str(path) if path else None


def _guard(func: Any, *, ok: bool = False) -> Any:
    """Run ``func``; a ProtorefineError becomes an error notification and returns None/False."""
    try:
        result = func()
    except ProtorefineError as exc:
        show_error(str(exc))
        return False if ok else None
    return True if ok else result
