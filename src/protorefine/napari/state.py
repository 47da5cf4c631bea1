"""Shared per-viewer state of the dock widgets: open project, current slide, its layers.

Every protorefine dock widget of one viewer gets the same :class:`ProtorefineState`
through :func:`get_state`; widgets listen to its signals instead of to each other.

World unit: micrometres when the slide's mpp is known, else level-0 pixels (see
:func:`protorefine.napari.layers.pixel_scale`). Every layer of the current slide
keeps its data in its own pixels (image levels, level-0 pixels for Shapes, patch
grid cells for grid layers) and gets a ``scale``/``translate`` that puts it over
the tissue in that world unit.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from protorefine.errors import ProtorefineError

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Layer, Shapes

    from protorefine.annotations.model import AnnotationSet
    from protorefine.project import Project
    from protorefine.slides.base import Slide

#: Names of the patch-grid layers the widgets show over the current slide.
LOCAL_PROTOTYPES = "local prototypes"
GLOBAL_PROTOTYPES = "global prototypes"
PSEUDO_LABELS = "pseudo-labels"
REFINED = "refined"
CONFIDENCE = "confidence"
CORRECTIONS = "corrections"
GRID_LAYERS = (LOCAL_PROTOTYPES, GLOBAL_PROTOTYPES, PSEUDO_LABELS, REFINED, CONFIDENCE, CORRECTIONS)

#: Name of the coarse-annotation Shapes layer of the current slide.
COARSE = "coarse"

_STATES: weakref.WeakKeyDictionary[Any, ProtorefineState] = weakref.WeakKeyDictionary()


class ProtorefineState:
    """The open project, the slide on screen and its layers, shared by all dock widgets.

    Signals: ``project_changed(project | None)`` after a project is opened or created,
    ``slide_changed(slide_id | None)`` after the slide's layers are swapped in,
    ``results_changed(slide_id)`` after a pipeline stage wrote new results.
    """

    project_changed = Signal(object)
    slide_changed = Signal(object)
    results_changed = Signal(object)

    def __init__(self, viewer: napari.Viewer) -> None:
        self._viewer_ref = weakref.ref(viewer)
        self.project: Project | None = None
        self.slide_id: str | None = None
        self.slide: Slide | None = None
        self.image_layer: Image | None = None
        self.coarse_layer: Shapes | None = None
        self.grid_layer_names: tuple[str, ...] = GRID_LAYERS

    @property
    def viewer(self) -> napari.Viewer:
        """The viewer this state belongs to."""
        viewer = self._viewer_ref()
        if viewer is None:
            raise ProtorefineError("the napari viewer of this protorefine state was closed")
        return viewer

    @property
    def pixel_scale(self) -> float:
        """World units per level-0 pixel of the current slide (mpp, or 1 when unknown)."""
        from protorefine.napari.layers import pixel_scale

        return pixel_scale(self.slide.mpp if self.slide is not None else None)

    def require_project(self) -> Project:
        """The open project, or a ProtorefineError telling the user to open one."""
        if self.project is None:
            raise ProtorefineError("no project is open: create or open one in 'Project and slides'")
        return self.project

    def require_slide(self) -> str:
        """The current slide id, or a ProtorefineError telling the user to pick one."""
        self.require_project()
        if self.slide_id is None:
            raise ProtorefineError("no slide is selected: add or pick one in 'Project and slides'")
        return self.slide_id

    def set_project(self, project: Project | None) -> None:
        """Make ``project`` the open one, clear the slide layers and emit ``project_changed``."""
        self.clear_slide_layers()
        self.project = project
        self.slide_id = None
        self.slide = None
        self.project_changed.emit(project)

    def show_slide(self, slide_id: str | None) -> None:
        """Swap the viewer's layers to ``slide_id`` (image, coarse Shapes, stored results)."""
        from protorefine.napari import layers as L

        project = self.require_project()
        if slide_id is not None and slide_id not in {s.id for s in project.slides}:
            raise ProtorefineError(f"slide {slide_id!r} is not in the project {project.folder}")
        self.clear_slide_layers()
        self.slide_id = slide_id
        self.slide = None
        if slide_id is None:
            self.slide_changed.emit(None)
            return
        slide = project.open_slide(slide_id)
        self.slide = slide
        viewer = self.viewer
        self.image_layer = viewer.add_layer(L.image_layer(slide))
        coarse = project.coarse(slide_id)
        self.coarse_layer = viewer.add_layer(L.coarse_shapes_layer(coarse, slide, name=COARSE))
        self.add_result_layers()
        viewer.layers.selection.active = self.coarse_layer
        viewer.reset_view()
        self.slide_changed.emit(slide_id)

    def add_result_layers(self) -> None:
        """Add (or refresh) the grid layers the project has results for on the current slide."""
        from protorefine.napari import layers as L

        if self.project is None or self.slide_id is None or self.slide is None:
            return
        for name in self.grid_layer_names:
            values = L.stored_grid_values(self.project, self.slide_id, name)
            if values is not None:
                self.set_grid_layer(name, values)

    def set_grid_layer(self, name: str, values: np.ndarray, **kwargs: Any) -> Layer:
        """Show ``values`` (rows, cols) as the grid layer ``name`` over the current slide.

        Updates the layer's data in place when it exists (keeping the user's colour
        and visibility choices), else adds a Labels layer (Image for "confidence").
        """
        from protorefine.napari import layers as L

        self.require_slide()
        project = self.require_project()
        existing = self.layer(name)
        if existing is not None and existing.data.shape == values.shape:
            existing.data = L.to_label_values(name, values)
            return existing
        if existing is not None:
            self.viewer.layers.remove(existing)
        grid = project.grid(self.slide_id)
        layer = L.grid_layer(name, values, grid, self.pixel_scale, **kwargs)
        return self.viewer.add_layer(layer)

    def layer(self, name: str) -> Layer | None:
        """The viewer layer called ``name``, or None."""
        viewer = self.viewer
        return viewer.layers[name] if name in viewer.layers else None

    def grid_layers(self) -> dict[str, Layer]:
        """The grid layers currently shown, by name."""
        return {n: layer for n in self.grid_layer_names if (layer := self.layer(n)) is not None}

    def coarse_annotations(self) -> AnnotationSet:
        """The coarse Shapes layer of the current slide as an AnnotationSet in level-0 pixels."""
        from protorefine.napari import layers as L

        self.require_slide()
        if self.coarse_layer is None:
            raise ProtorefineError(f"slide {self.slide_id!r} has no coarse annotation layer")
        return L.layer_annotations(self.coarse_layer, self.pixel_scale)

    def clear_slide_layers(self) -> None:
        """Remove the layers this state added for the current slide."""
        try:
            viewer = self.viewer
        except ProtorefineError:
            return
        for layer in [self.image_layer, self.coarse_layer, *self.grid_layers().values()]:
            if layer is not None and layer in viewer.layers:
                viewer.layers.remove(layer)
        self.image_layer = None
        self.coarse_layer = None


def get_state(viewer: napari.Viewer) -> ProtorefineState:
    """The protorefine state of ``viewer``, created on first use and shared by all widgets."""
    state = _STATES.get(viewer)
    if state is None:
        state = ProtorefineState(viewer)
        _STATES[viewer] = state
    return state
