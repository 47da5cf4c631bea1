"""Review pane, the review loop: where the model is unsure, the "reviewed" tick, the next
slide to review; each with a keyboard shortcut, to review a batch without the mouse."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtWidgets import QCheckBox, QPushButton, QVBoxLayout, QWidget

from protorefine.errors import ProtorefineError
from protorefine.measure import UNSURE
from protorefine.napari.layer_names import PROBABILITY
from protorefine.napari.state import ProtorefineState
from protorefine.napari.widgets._common import add_shortcut, rewire
from protorefine.napari.widgets._worker import notify

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

#: Keyboard shortcuts of the review loop (anywhere in napari's window; none clashes with napari's own).
NEXT_KEYS = "Shift+N"
REVIEWED_KEYS = "Shift+R"
UNSURE_KEYS = "Shift+U"


class ReviewTicksPanel(QWidget):
    """Show where the model is unsure, tick the outline as reviewed, go to the next slide."""

    def __init__(self, viewer: napari.viewer.Viewer, state: ProtorefineState) -> None:
        super().__init__()
        self.viewer = viewer
        self.state = state
        self._probability_layer: Layer | None = None  # whose eye the box follows
        self.unsure_box = QCheckBox("Show where the model is unsure")
        self.unsure_box.setToolTip(
            "The 'tumour probability' layer: bright yellow where the probability is near 0.5 "
            f"(between {UNSURE[0]} and {UNSURE[1]}), faint blue leaning normal, faint red "
            "leaning tumour, clear where the model is sure; hover for the value"
        )
        self.unsure_box.toggled.connect(self._on_unsure_toggled)
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
        add_shortcut(self, NEXT_KEYS, self.next_button)
        add_shortcut(self, REVIEWED_KEYS, self.reviewed_box)
        add_shortcut(self, UNSURE_KEYS, self.unsure_box)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.unsure_box)
        lay.addWidget(self.reviewed_box)
        lay.addWidget(self.next_button)

        state.slide_changed.connect(self._on_slide)
        state.results_changed.connect(self.refresh)
        state.outline_changed.connect(self.refresh)
        self._on_slide(state.slide_id)

    def _on_slide(self, slide_id: str | None) -> None:
        if self.state.project is not None and slide_id is not None:
            self.refresh()

    def refresh(self, _slide_id: str | None = None) -> None:
        """The tick and the unsure box as the slide on screen has them."""
        project, sid = self.state.project, self.state.slide_id
        done, review = False, None
        if project is not None and sid is not None and project.has_results(sid):
            done, review = True, project.review_state(sid)
        self.reviewed_box.blockSignals(True)
        self.reviewed_box.setChecked(review == "reviewed")
        self.reviewed_box.blockSignals(False)
        self.reviewed_box.setEnabled(done)
        probability = self.state.layer(PROBABILITY) if done else None
        self._probability_layer = rewire(
            self._probability_layer, probability, "visible", self._follow_probability_eye
        )
        self._follow_probability_eye()
        self.unsure_box.setEnabled(probability is not None)
        self.reviewed_box.setText(
            "Reviewed before, but the outline changed since: tick again once checked"
            if review == "changed"
            else "Reviewed: I checked this outline"
        )

    def _follow_probability_eye(self, _event: object = None) -> None:
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
        self.state.outline_changed.emit(sid)

    def next_to_review(self) -> str | None:
        """Show the slide not yet ticked as reviewed (as its outline is now) on which the
        model is least sure (``Project.review_order``); None (and say so) when every
        other slide is ticked."""
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
        self.state.request_slide(todo[0])  # as a click in the slide list: keeps each slide's view
        return todo[0]
