"""Review pane, ground truth: Dice of the coarse and the accepted outline against a truth
annotation or mask, scored again whenever the outline's shapes change."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtWidgets import QFileDialog, QGroupBox, QLabel, QPushButton, QVBoxLayout

from protorefine.evaluate import score_slide
from protorefine.napari.state import ProtorefineState
from protorefine.napari.widgets._worker import TaskContext, TaskRunner, notify

if TYPE_CHECKING:
    import napari

    from protorefine.project import Project

TRUTH_FILTER = "Annotations or masks (*.geojson *.json *.xml *.png *.tif *.tiff)"


class TruthPanel(QGroupBox):
    """Load a ground truth for the slide on screen and show Dice of coarse and refined."""

    def __init__(self, viewer: napari.viewer.Viewer, state: ProtorefineState) -> None:
        super().__init__("Ground truth")
        self.viewer = viewer
        self.state = state
        self.truth_path: Path | None = None
        self.scores: dict[str, float] = {}
        self.truth_button = QPushButton("Load ground truth…")
        self.truth_button.clicked.connect(self._on_load_truth)
        self.dice_label = QLabel("No ground truth loaded")
        self.dice_label.setWordWrap(True)
        # scoring only reads the project: its own runner, outside the one-pipeline-run lock
        self.score_runner = TaskRunner()
        self.score_runner.cancel_button.setVisible(False)
        tb = QVBoxLayout(self)
        tb.addWidget(self.truth_button)
        tb.addWidget(self.score_runner)
        tb.addWidget(self.dice_label)

        state.project_changed.connect(self._on_project)
        state.slide_changed.connect(self._on_slide)
        state.results_changed.connect(self._on_results)
        state.outline_edited.connect(self._rescore)  # the Dice line scores the outline as edited
        self._on_slide(state.slide_id)

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
        project, sid, truth = self.state.project, self.state.slide_id, self.truth_path
        if project is None or sid is None or truth is None:
            return False

        def task(ctx: TaskContext) -> dict[str, dict[str, float]]:
            return score_slide(project, sid, truth)

        return self.score_runner.start("Dice against ground truth", task, on_done=self._on_scores)

    def _rescore(self, _slide_id: str | None = None) -> None:
        """Score the outline again when a ground truth is loaded and no scoring is running."""
        if self.truth_path is not None and not self.score_runner.running:
            self.update_scores()

    def _on_scores(self, scores: dict[str, dict[str, float]]) -> None:
        self.scores = {k: v["dice"] for k, v in scores.items()}
        parts = [f"Dice coarse {self.scores['coarse']:.3f}"] if "coarse" in self.scores else []
        if "refined" in self.scores:
            parts.append(f"refined {self.scores['refined']:.3f}")
        name = self.truth_path.name if self.truth_path is not None else ""
        self.dice_label.setText(f"{name}: " + ", ".join(parts))

    def _forget(self) -> None:
        self.truth_path = None
        self.scores = {}
        self.dice_label.setText("No ground truth loaded")

    def _on_project(self, _project: Project | None) -> None:
        self._forget()

    def _on_slide(self, slide_id: str | None) -> None:
        self._forget()
        project = self.state.project
        if project is None or slide_id is None:
            return
        truth = project.ui_state.get("truth", {}).get(slide_id)
        if truth and Path(truth).exists():
            self.truth_path = Path(truth)
            self.dice_label.setText(f"Ground truth: {self.truth_path.name}")

    def _on_results(self, slide_id: str | None) -> None:
        project = self.state.project
        if project is not None and slide_id is not None and project.has_results(slide_id):
            self._rescore()
