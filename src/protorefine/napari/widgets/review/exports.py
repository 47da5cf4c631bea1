"""Review pane, exports: the accepted outline as QuPath GeoJSON or ASAP XML, every slide's
outline to a folder, and NGFF labels inside (or beside) the slide's OME-Zarr."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtWidgets import QFileDialog, QPushButton, QVBoxLayout, QWidget

from protorefine.errors import ProtorefineError
from protorefine.napari.state import ProtorefineState
from protorefine.napari.widgets._worker import TaskContext, TaskRunner, notify
from protorefine.slides.omezarr import is_ome_zarr

if TYPE_CHECKING:
    import napari

    from protorefine.project import Project

GEOJSON_FILTER = "QuPath GeoJSON (*.geojson *.json)"
ASAP_FILTER = "ASAP XML (*.xml)"
ZARR_FILTER = "OME-Zarr (*.zarr)"
#: Name of the NGFF labels image the refined outline is written to inside the slide's zarr.
NGFF_LABELS_NAME = "refined"


class ExportPanel(QWidget):
    """The three exports of the accepted outline; their own runner, beside the pipeline's."""

    def __init__(self, viewer: napari.viewer.Viewer, state: ProtorefineState) -> None:
        super().__init__()
        self.viewer = viewer
        self.state = state
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
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.geojson_button)
        lay.addWidget(self.all_button)
        lay.addWidget(self.ngff_button)
        lay.addWidget(self.export_runner)

    def _refined_or_say(self) -> tuple[Project, str] | None:
        """The project and current slide when it has a refined outline; otherwise say what
        is missing and return None."""
        project, sid = self.state.project, self.state.slide_id
        if project is None or sid is None:
            notify("warning", "Pick a slide in 'Project and slides' first.")
            return None
        if not project.has_results(sid):
            notify("warning", _no_outline_yet(project, sid))
            return None
        return project, sid

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
        found = self._refined_or_say()
        if found is None:
            return None
        project, sid = found
        try:
            project.export_outline(sid, path)
        except ProtorefineError as exc:
            notify("error", str(exc))
            return None
        except OSError as exc:
            notify("error", f"{path}: could not write ({exc.strerror or exc})")
            return None
        notify("info", f"Refined outline of {sid} written to {path}")
        return Path(path)

    def _on_export_all(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for every slide's refined outline")
        if folder:
            self.export_all(folder)

    def export_all(self, folder: str | Path) -> bool:
        """Start writing every slide's accepted outline to ``folder/<slide>.geojson`` with
        ``tumour_measurements.csv`` (in a worker, with progress and Cancel: a big project
        takes a while); the paths land in ``exported``."""
        found = self._refined_or_say()
        if found is None:
            return False
        project, _ = found

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
        # imported here: the project modules pull in torch (warm_up imports them in the background)
        from protorefine.project.labels_export import export_refined_labels

        found = self._refined_or_say()
        if found is None:
            return False
        project, sid = found
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


def _no_outline_yet(project: Project, sid: str) -> str:
    """Why ``sid`` has no refined outline, and what to do."""
    if project.stage_done("output") and not project.has_outline(sid):
        return (
            f"{sid} has no coarse outline, so the last run left it out: draw one in "
            "'Coarse annotation', then run 'Refine and train' again."
        )
    return "There is no refined outline yet: run 'Refine and train' first."
