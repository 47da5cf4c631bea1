"""Dock widget "Coarse annotation": draw, import and export the slide's rough tumour outline.

The current slide's coarse outline is one Shapes layer ("coarse", built by
:class:`~protorefine.napari.state.ProtorefineState`). Every finished edit is saved
into the project at once (``Project.set_coarse``), so a crash loses nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QFileDialog,
    QGridLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from protorefine.annotations import (
    read_annotations,
    tumour_class_name,
    write_asap_xml,
    write_geojson,
)
from protorefine.annotations.asap import with_groups_of
from protorefine.annotations.masks import MASK_SUFFIXES
from protorefine.annotations.model import EXCLUDE, AnnotationSet
from protorefine.errors import ProtorefineError
from protorefine.napari.layers import CLASS_EDGE_COLORS, FINISHED_ACTIONS, replace_shapes
from protorefine.napari.state import get_state

if TYPE_CHECKING:
    import napari
    from napari.layers import Shapes

    from protorefine.annotations.model import AnnotationSet

ANNOTATION_FILTER = (
    "Annotations and masks (*.geojson *.json *.xml *.png *.tif *.tiff *.jpg *.jpeg);;"
    "GeoJSON (*.geojson *.json);;ASAP XML (*.xml);;Masks (*.png *.tif *.tiff *.jpg *.jpeg)"
)
#: An imported annotation is refused when less than this share of its area lies on the slide.
MIN_INSIDE_FRACTION = 0.5


class CoarseWidget(QWidget):
    """Tools for the coarse outline of the current slide, with import, export and autosave."""

    def __init__(self, napari_viewer: napari.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state = get_state(napari_viewer)
        self._layer: Shapes | None = None
        self.last_saved: float | None = None

        self.slide_label = QLabel("No slide")
        self.slide_label.setWordWrap(True)
        self.polygon_button = QPushButton("Polygon")
        self.polygon_button.setToolTip("Click vertices; double-click to close the outline (P)")
        self.lasso_button = QPushButton("Lasso")
        self.lasso_button.setToolTip("Press and drag to draw a free-hand outline")
        self.edit_button = QPushButton("Select / edit")
        self.edit_button.setToolTip("Select outlines to move, delete or edit their vertices")
        self.pan_button = QPushButton("Pan / zoom")
        self.exclude_button = QPushButton("Exclude (lasso)")
        self.exclude_button.setToolTip(
            "Draw around tissue inside the outline that is not tumour (a follicle, a vessel, "
            "fat): it becomes a hole, saved as class Exclusion (ASAP: _2)"
        )
        self.import_button = QPushButton("Import…")
        self.import_button.setToolTip(
            "Replace the outline with a GeoJSON or ASAP XML file, or a mask image at any "
            "downsample of the slide"
        )
        self.export_geojson_button = QPushButton("Export GeoJSON…")
        self.export_xml_button = QPushButton("Export ASAP XML…")
        self.delete_button = QPushButton("Delete selected")
        self.status = QLabel("")
        self.status.setWordWrap(True)

        grid = QGridLayout()
        grid.addWidget(self.polygon_button, 0, 0)
        grid.addWidget(self.lasso_button, 0, 1)
        grid.addWidget(self.edit_button, 1, 0)
        grid.addWidget(self.pan_button, 1, 1)
        grid.addWidget(self.exclude_button, 2, 0)
        grid.addWidget(self.delete_button, 2, 1)
        grid.addWidget(self.import_button, 3, 0, 1, 2)
        grid.addWidget(self.export_geojson_button, 4, 0)
        grid.addWidget(self.export_xml_button, 4, 1)
        layout = QVBoxLayout(self)
        layout.addWidget(self.slide_label)
        layout.addLayout(grid)
        layout.addWidget(self.status)
        layout.addStretch(1)
        for button in self.findChildren(QPushButton):
            button.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
            button.setMinimumHeight(max(26, button.sizeHint().height()))

        self.polygon_button.clicked.connect(lambda: self.set_mode("add_polygon"))
        self.lasso_button.clicked.connect(lambda: self.set_mode("add_polygon_lasso"))
        self.exclude_button.clicked.connect(
            lambda: self.set_mode("add_polygon_lasso", classification=EXCLUDE)
        )
        self.edit_button.clicked.connect(lambda: self.set_mode("select"))
        self.pan_button.clicked.connect(lambda: self.set_mode("pan_zoom"))
        self.delete_button.clicked.connect(self._on_delete)
        self.import_button.clicked.connect(self._on_import)
        self.export_geojson_button.clicked.connect(lambda: self._on_export("geojson"))
        self.export_xml_button.clicked.connect(lambda: self._on_export("xml"))

        self.state.slide_changed.connect(self._on_slide_changed)
        self._on_slide_changed(self.state.slide_id)

    # ---- actions -------------------------------------------------------------------

    @property
    def layer(self) -> Shapes | None:
        """The coarse Shapes layer of the current slide (None when no slide is shown)."""
        return self._layer

    def set_mode(self, mode: str, *, classification: str | None = None) -> None:
        """Put the coarse layer in ``mode`` (add_polygon, add_polygon_lasso, select, pan_zoom);
        shapes drawn from now on get ``classification`` (default: the outline's tumour class)."""

        if self._layer is None:
            show_warning("no slide is shown: pick one in 'Project and slides' first")
            return
        self.viewer.layers.selection.active = self._layer
        layer = self._layer
        if mode.startswith("add_"):
            if classification is None:
                project, sid = self.state.project, self.state.slide_id
                coarse = project.coarse(sid) if project is not None and sid is not None else None
                classification = tumour_class_name(coarse)
            layer.feature_defaults = {"classification": classification}
            layer.current_edge_color = CLASS_EDGE_COLORS.get(classification, "#ffd400")
        layer.mode = mode

    def save(self, groups_from: AnnotationSet | None = None) -> bool:
        """Save the layer's outlines into the project now; returns True when saved. The
        ASAP groups of ``groups_from`` (else of the outline saved before) are kept, so an
        ASAP export keeps a CAMELYON16 file's ``_0`` / ``_2``."""
        if self._layer is None or self.state.project is None or self.state.slide_id is None:
            return False
        try:
            project, sid = self.state.project, self.state.slide_id
            annset = self.state.coarse_annotations()
            annset = with_groups_of(annset, groups_from or project.coarse(sid))
            project.set_coarse(sid, annset)
            self.state.coarse_changed.emit(self.state.slide_id)
        except ProtorefineError as exc:
            show_error(f"coarse outline not saved: {exc}")
            self.status.setText(f"Not saved: {exc}")
            return False
        self.last_saved = time.time()
        n = len(annset)
        self.slide_label.setText(f"Slide {self.state.slide_id}: {len(self._layer.data)} shape(s)")
        self.status.setText(
            f"{n} outline(s), saved {time.strftime('%H:%M:%S', time.localtime(self.last_saved))}"
        )
        return True

    def import_file(self, path: str | Path) -> bool:
        """Replace the outline with a GeoJSON / ASAP XML file's polygons or a mask's; False if refused.

        A mask image (non-zero = tumour) may be at any downsample of the slide: it is
        placed by its size, and one whose aspect ratio does not match the slide is refused.
        """

        if self._layer is None or self.state.slide is None:
            show_error("no slide is shown: pick one in 'Project and slides' before importing")
            return False
        path = Path(path)
        slide = self.state.slide
        try:
            if path.suffix.lower() not in MASK_SUFFIXES:  # a mask is placed by its size
                _check_fits(read_annotations(path), slide.shape, path, self.state.slide_id)
            annset = read_annotations(path, slide_shape=slide.shape)
        except ProtorefineError as exc:
            show_error(str(exc))
            return False
        if not len(annset):
            show_error(f"{path.name}: has no polygons; the outline is unchanged")
            return False
        for warning in annset.warnings:
            show_warning(warning if path.name in warning else f"{path.name}: {warning}")
        replace_shapes(self._layer, annset, slide)
        if self.save(groups_from=annset):
            show_info(f"imported {len(annset)} outline(s) from {path.name}")
        return True

    def export_file(self, path: str | Path, fmt: str | None = None) -> Path | None:
        """Write the outline as GeoJSON (default) or ASAP XML (``fmt="xml"`` or a .xml path)."""

        if self._layer is None:
            show_error("no slide is shown: nothing to export")
            return None
        path = Path(path)
        fmt = fmt or ("xml" if path.suffix.lower() == ".xml" else "geojson")
        try:
            annset = self.state.coarse_annotations()
            if not len(annset):
                raise ProtorefineError(f"{path.name}: the coarse outline is empty; draw one first")
            if fmt == "xml" and self.state.project is not None and self.state.slide_id:
                # in the groups of the file the outline came from (CAMELYON16's _0 / _2)
                annset = with_groups_of(annset, self.state.project.coarse(self.state.slide_id))
            (write_asap_xml if fmt == "xml" else write_geojson)(annset, path)
        except ProtorefineError as exc:
            show_error(str(exc))
            return None
        show_info(f"saved {len(annset)} outline(s) to {path}")
        return path

    # ---- internals ------------------------------------------------------------------

    def _on_slide_changed(self, slide_id: str | None) -> None:
        if self._layer is not None:
            self._layer.events.data.disconnect(self._on_data)
        self._layer = self.state.coarse_layer if slide_id is not None else None
        if self._layer is not None:
            self._layer.events.data.connect(self._on_data)
            n = len(self._layer.data)
            self.slide_label.setText(f"Slide {slide_id}: {n} shape(s)")
            self.status.setText(
                "Draw with Polygon or Lasso, holes with Exclude; every edit is saved."
            )
        else:
            self.slide_label.setText("No slide: pick one in 'Project and slides'")
            self.status.setText("")
        for button in (
            self.polygon_button,
            self.lasso_button,
            self.edit_button,
            self.pan_button,
            self.delete_button,
            self.import_button,
            self.export_geojson_button,
            self.export_xml_button,
        ):
            button.setEnabled(self._layer is not None)

    def _on_data(self, event: Any) -> None:
        if getattr(event, "action", "changed") not in FINISHED_ACTIONS:
            return
        self.save()
        if self._layer is not None:
            self.slide_label.setText(
                f"Slide {self.state.slide_id}: {len(self._layer.data)} shape(s)"
            )

    def _on_delete(self) -> None:
        if self._layer is not None and self._layer.selected_data:
            self._layer.remove_selected()
        elif self._layer is not None:
            show_warning("select outlines first (Select / edit), then delete them")

    def _on_import(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import coarse outline", "", ANNOTATION_FILTER)
        if path:
            self.import_file(path)

    def _on_export(self, fmt: str) -> None:
        filt = "ASAP XML (*.xml)" if fmt == "xml" else "GeoJSON (*.geojson)"
        default = f"{self.state.slide_id or 'coarse'}.{'xml' if fmt == 'xml' else 'geojson'}"
        path, _ = QFileDialog.getSaveFileName(self, "Export coarse outline", default, filt)
        if path:
            self.export_file(path, fmt)


def _check_fits(
    raw: AnnotationSet, shape: tuple[int, int], path: Path, slide_id: str | None
) -> None:
    """Refuse an annotation that lies mostly outside the slide (made for another slide)."""
    from shapely.geometry import box

    geom = raw.union()
    if geom.is_empty or geom.area <= 0:
        return
    h, w = shape
    inside = geom.intersection(box(0, 0, w, h)).area / geom.area
    if inside < MIN_INSIDE_FRACTION:
        x0, y0, x1, y1 = (round(v) for v in geom.bounds)
        raise ProtorefineError(
            f"{path.name}: outlines span x {x0}..{x1}, y {y0}..{y1} but slide {slide_id!r} is "
            f"{w} × {h} px; it looks made for another slide, so nothing was imported"
        )
