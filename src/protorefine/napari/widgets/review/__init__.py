"""Dock widget "Review and export": paint corrections, retrain, check and export the outline,
compare with ground truth.

:class:`ReviewWidget` only lays out its panels; each panel is its own small widget that
talks to the others through the signals of the shared
:class:`~protorefine.napari.state.ProtorefineState`:

- :class:`~.corrections.CorrectionsPanel`: paint patches, retrain with them;
- :class:`~.outline.RegionsPanel`: the tumour's size, its regions and the changes against
  the coarse outline (go there, see the prototype, give a change back);
- :class:`~.ticks.ReviewTicksPanel`: where the model is unsure, the "reviewed" tick, the
  next slide to review;
- :class:`~.outline.HandEditsPanel`: hand edits of the red outline, kept or discarded;
- :class:`~.exports.ExportPanel`: GeoJSON / ASAP XML, every slide, NGFF labels;
- :class:`~.truth.TruthPanel`: Dice against a ground truth.

The unattended flow that drives these widgets lives in
:mod:`protorefine.napari.widgets.unattended`.
"""

from __future__ import annotations

import napari
import numpy as np
from qtpy.QtWidgets import QGroupBox, QLabel, QVBoxLayout

from protorefine.napari.widgets._common import WorkflowWidget
from protorefine.napari.widgets._worker import TaskRunner
from protorefine.napari.widgets.review.corrections import CorrectionsPanel
from protorefine.napari.widgets.review.exports import ExportPanel
from protorefine.napari.widgets.review.outline import (
    HandEditsPanel,
    RegionsPanel,
    region_items,
    tumour_text,
)
from protorefine.napari.widgets.review.ticks import ReviewTicksPanel
from protorefine.napari.widgets.review.truth import TruthPanel

__all__ = ["ReviewWidget", "region_items", "tumour_text"]


class ReviewWidget(WorkflowWidget):
    """Correct the refined outline by painting patches, retrain, export, and score against truth."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        viewer, state = self.viewer, self.state
        intro = QLabel(
            "Paint patches the refinement got wrong, then retrain: painted patches are "
            "hard labels. Export the accepted outline for QuPath."
        )
        intro.setWordWrap(True)
        self.corrections = CorrectionsPanel(viewer, state)
        self.regions = RegionsPanel(viewer, state)
        self.ticks = ReviewTicksPanel(viewer, state)
        self.edits = HandEditsPanel(viewer, state)
        self.exports = ExportPanel(viewer, state)
        self.truth = TruthPanel(viewer, state)

        export_box = QGroupBox("Accept and export")
        ex = QVBoxLayout(export_box)
        for panel in (self.regions, self.ticks, self.edits, self.exports):
            ex.addWidget(panel)
        lay = QVBoxLayout(self.body)
        lay.addWidget(intro)
        lay.addWidget(self.corrections)
        lay.addWidget(export_box)
        lay.addWidget(self.truth)
        lay.addStretch(1)

    # the calls scripts drive (the unattended demo, the GUI benchmark)

    @property
    def runner(self) -> TaskRunner:
        """The runner of retraining (the pane's one pipeline run)."""
        return self.corrections.runner

    def retrain(self) -> bool:
        """Retrain with the corrections (:meth:`CorrectionsPanel.retrain`)."""
        return self.corrections.retrain()

    def paint_cells(self, rows: np.ndarray, cols: np.ndarray, label: int) -> int:
        """Paint grid cells as a brush would (:meth:`CorrectionsPanel.paint_cells`)."""
        return self.corrections.paint_cells(rows, cols, label)
