"""Review pane, the accepted outline: its size and regions, the changes the refinement made
to the coarse outline (each can be given back), and the pathologist's hand edits.

The panels here change the outline through the project and announce it on the shared
state: ``outline_edited`` after its shapes changed, then ``outline_changed``; every
panel that shows something about the outline listens to those.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import shapely
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget
from shapely.geometry.base import BaseGeometry

from protorefine.errors import ProtorefineError
from protorefine.measure import Change, Measurements, format_area, format_length, outline_changes
from protorefine.napari.layer_names import REFINED_OUTLINE
from protorefine.napari.layers import FINISHED_ACTIONS, layer_annotations
from protorefine.napari.state import ProtorefineState
from protorefine.napari.widgets._common import rewire, show_outline
from protorefine.napari.widgets._worker import LatestOnly, notify

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer, Shapes

    from protorefine.annotations.model import AnnotationSet
    from protorefine.project import Project

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

#: One line of the Review pane's list: text, level-0 bounds to go to, why it is so, its main
#: global prototype, and for a change its (kind, WKB of the part).
RegionItem = tuple[
    str, tuple[float, float, float, float] | None, str, int | None, tuple[str, bytes] | None
]


def show_new_outline(state: ProtorefineState, sid: str, annset: AnnotationSet) -> None:
    """Show ``sid``'s accepted outline after the project changed it (not a hand edit on
    screen) and announce it: the layer, its measurements, the Dice line and the slide list
    follow."""
    show_outline(state, annset)
    state.outline_edited.emit(sid)
    state.outline_changed.emit(sid)


class RegionsPanel(QWidget):
    """The tumour's size, its regions and the largest changes against the coarse outline:
    click one to go there, see what it is made of, or give a change back."""

    def __init__(self, viewer: napari.viewer.Viewer, state: ProtorefineState) -> None:
        super().__init__()
        self.viewer = viewer
        self.state = state
        # measuring a whole-slide outline takes up to a second: never in the event loop
        self._measurer = LatestOnly(lambda found: self._show_measured(*found), "measure", self)
        self._change: tuple[str, bytes] | None = None

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

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        for widget in (
            self.tumour_label,
            self.region_list,
            self.region_info,
            self.prototype_button,
            self.undo_change_button,
        ):
            lay.addWidget(widget)

        state.slide_changed.connect(self._on_slide)
        state.results_changed.connect(self._on_outline)
        state.outline_changed.connect(self._on_outline)
        self._on_slide(state.slide_id)

    def _on_slide(self, slide_id: str | None) -> None:
        if self.state.project is not None and slide_id is not None:
            self.measure()

    def _on_outline(self, _slide_id: str | None) -> None:
        self.measure()

    def measure(self) -> None:
        """Measure the accepted outline of the slide on screen in the background."""
        project, sid = self.state.project, self.state.slide_id
        if project is None or sid is None:
            self._measurer.drop_pending()
            self._show_measured("", [])
            return
        self.tumour_label.setText("Measuring the outline…")
        self._measurer.submit(_measure, project, sid, project.has_results(sid))

    def _show_measured(self, text: str, items: list[RegionItem]) -> None:
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

    def _on_region_clicked(self, item: QListWidgetItem) -> None:
        bounds = item.data(BOUNDS_ROLE)
        if bounds:
            self.go_to(cast("tuple[float, float, float, float]", tuple(bounds)))
        why = item.data(WHY_ROLE)
        self.region_info.setText(f"{item.text()}: {why}" if why else "")
        prototype = item.data(PROTOTYPE_ROLE)
        self.prototype_button.setVisible(prototype is not None)
        if prototype is not None:
            self.prototype_button.setText(f"Show prototype {prototype} in the gallery")
            self.prototype_button.setProperty("prototype", int(prototype))
        change = item.data(CHANGE_ROLE)
        self._change = (str(change[0]), bytes(change[1])) if change else None
        self.undo_change_button.setVisible(self._change is not None)
        if self._change is not None:
            self.undo_change_button.setText(UNDO_WORDS[self._change[0]])

    def undo_change(self) -> bool:
        """Undo the change last clicked in the list (``Project.revert_to_coarse``): the
        outline on screen, its measurements, review tick and exports follow."""
        project, sid = self.state.project, self.state.slide_id
        if project is None or sid is None or self._change is None:
            return False
        kind, wkb = self._change
        try:
            annset = project.revert_to_coarse(sid, shapely.from_wkb(wkb))
        except ProtorefineError as exc:
            notify("warning", str(exc))
            return False
        show_new_outline(self.state, sid, annset)
        done = "put back into" if kind == "removed" else "taken out of"
        notify("info", f"Part {done} the outline of {sid} ('Discard hand edits' undoes it)")
        return True

    def show_prototype(self, global_id: int | None = None) -> bool:
        """Bring the Prototypes pane forward with ``global_id`` (default: the main prototype
        of the part last clicked in the list) selected, to check or mark it."""
        if global_id is None:
            global_id = self.prototype_button.property("prototype")
        if global_id is None or not self.state.request_prototype(int(global_id)):
            notify("warning", "The Prototypes pane has no gallery yet: compute prototypes there.")
            return False
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


class HandEditsPanel(QWidget):
    """Keeps the pathologist's edits of the red outline in the project; says so, and
    discards them on request."""

    def __init__(self, viewer: napari.viewer.Viewer, state: ProtorefineState) -> None:
        super().__init__()
        self.viewer = viewer
        self.state = state
        self._outline_layer: Layer | None = None
        self.edit_label = QLabel("")
        self.edit_label.setWordWrap(True)
        self.discard_button = QPushButton("Discard hand edits of the outline")
        self.discard_button.setToolTip("Back to the refined outline as the classifier drew it")
        self.discard_button.clicked.connect(self.discard_outline_edits)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.edit_label)
        lay.addWidget(self.discard_button)

        state.slide_changed.connect(self._on_slide)
        state.results_changed.connect(self._watch_outline)
        state.outline_changed.connect(self._watch_outline)
        self._on_slide(state.slide_id)

    def _on_slide(self, slide_id: str | None) -> None:
        if self.state.project is not None and slide_id is not None:
            self._watch_outline()

    def _watch_outline(self, _slide_id: str | None = None) -> None:
        """Listen to the pathologist's edits of the refined outline layer on screen."""
        self._outline_layer = rewire(
            self._outline_layer, self.state.layer(REFINED_OUTLINE), "data", self._on_outline_edit
        )
        self._say_outline()

    def _say_outline(self) -> None:
        """Say whether the outline was edited by hand."""
        project, sid = self.state.project, self.state.slide_id
        edited = bool(
            project is not None
            and sid is not None
            and project.has_results(sid)
            and project.outline_edited(sid)
        )
        self.edit_label.setText(
            "Outline edited by hand: the edits are kept in the project and exported."
            if edited
            else "Edit the red outline with napari's shape tools to fix it by hand."
        )
        self.discard_button.setEnabled(edited)

    def _on_outline_edit(self, event: Any = None) -> None:
        """A finished edit of the refined outline: keep it in the project (undone: drop it)."""
        state = self.state
        action = getattr(event, "action", "changed")
        if state.outline_filling or action not in FINISHED_ACTIONS or self._outline_layer is None:
            return
        project, sid = state.project, state.slide_id
        if project is None or sid is None or not project.has_results(sid):
            return
        edited = layer_annotations(cast("Shapes", self._outline_layer), state.pixel_scale)
        refined = project.refined_annotations(sid).union()
        same = edited.union().symmetric_difference(refined).area <= 1e-6 * max(refined.area, 1.0)
        project.set_outline_edit(sid, None if same else edited)
        state.outline_edited.emit(sid)  # the Dice line scores the outline as edited
        state.outline_changed.emit(sid)

    def discard_outline_edits(self) -> None:
        """Drop the hand edits of the current slide's outline and show the refined one again."""
        project, sid = self.state.project, self.state.slide_id
        if project is None or sid is None or not project.outline_edited(sid):
            return
        project.set_outline_edit(sid, None)
        show_new_outline(self.state, sid, project.refined_annotations(sid))
        notify("info", f"Hand edits of the outline of {sid} discarded")


def tumour_text(m: dict[str, Measurements]) -> str:
    """The Review pane's line about the tumour's size, refined beside coarse."""
    if "refined" in m:
        text = f"Tumour: {m['refined'].summary()}"
        if "coarse" in m:
            text += f" (coarse outline: {format_area(m['coarse'].area, m['coarse'].unit)})"
        return text
    return f"Coarse outline: {m['coarse'].summary()}" if "coarse" in m else ""


def _measure(project: Project, sid: str, done: bool) -> tuple[str, list[RegionItem]]:
    """Background thread: the Review pane's size line and region list of ``sid``'s outline."""
    # imported here: the project modules pull in torch (warm_up imports them in the background)
    from protorefine.project.review import part_explainer

    try:
        figures = project.measurements(sid)
        items: list[RegionItem] = []
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

    items: list[RegionItem] = [
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
