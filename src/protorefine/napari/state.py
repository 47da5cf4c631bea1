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
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Layer
from psygnal import Signal
from qtpy.QtCore import QTimer

from protorefine.errors import ProtorefineError
from protorefine.napari import layers as L
from protorefine.napari.colormaps import grid_image_colormap
from protorefine.napari.layer_names import (
    COARSE,
    GRID_LAYERS,
    HIDDEN_UNTIL_ASKED,
    IMAGE_GRID_LAYERS,
    PIXEL_LAYERS,
    PLACEHOLDER_LAYERS,
    PLACEHOLDER_SUFFIX,
    REFINED_OUTLINE,
)

if TYPE_CHECKING:
    import napari
    from napari.layers import Image, Shapes

    from protorefine.annotations.model import AnnotationSet
    from protorefine.features.grid import PatchGrid
    from protorefine.project import Project
    from protorefine.slides.base import Slide

_STATES: weakref.WeakKeyDictionary[Any, ProtorefineState] = weakref.WeakKeyDictionary()


class ProtorefineState:
    """The open project, the slide on screen and its layers, shared by all dock widgets.

    Signals: ``project_changed(project | None)`` after a project is opened or created,
    ``slide_changed(slide_id | None)`` after the slide's layers are swapped in,
    ``results_changed(slide_id)`` after a pipeline stage wrote new results,
    ``outline_changed(slide_id)`` after the accepted outline was edited by hand or ticked as
    reviewed (the slide list shows both), ``coarse_changed(slide_id)`` after a coarse
    outline was saved (results no longer match it; the slide list says which slides have
    none yet), ``outline_edited(slide_id)`` after the accepted outline's shapes changed
    (a hand edit on screen, hand edits discarded, a part given back to the coarse
    outline's word; ``outline_changed`` follows), ``slide_requested(slide_id)`` when a
    pane asks for a slide as if it were clicked in the slide list (see
    :meth:`request_slide`), ``prototype_requested(global_id)`` when a pane asks the
    prototype gallery to select one and come forward (see :meth:`request_prototype`),
    ``slide_task(SlideTask)`` when a slide's task of a cluster run changes state.

    Placeholders: adding a napari layer costs 0.1-0.6 s of the event loop (vispy
    visual, overlays, layer controls), updating one's data ~0.05 s. So once a slide
    is shown, every layer of :data:`PLACEHOLDER_LAYERS` it has no results for is
    created empty and hidden, one per event-loop turn, and results later fill it in
    place (:meth:`set_grid_layer`, :meth:`take_placeholder`). Placeholders are
    named ``"<name> (no results yet)"``; :meth:`layer` and :meth:`grid_layers`
    return only layers that hold results.
    """

    project_changed = Signal(object)
    slide_changed = Signal(object)
    results_changed = Signal(object)
    outline_changed = Signal(object)
    coarse_changed = Signal(object)
    outline_edited = Signal(object)
    slide_requested = Signal(object)
    prototype_requested = Signal(int)
    slide_task = Signal(object)

    def __init__(self, viewer: napari.Viewer) -> None:
        self._viewer_ref = weakref.ref(viewer)
        self.project: Project | None = None
        self.slide_id: str | None = None
        self.slide: Slide | None = None
        self.image_layer: Image | None = None
        self.coarse_layer: Shapes | None = None
        self.grid_layer_names: tuple[str, ...] = GRID_LAYERS
        self._placeholders: dict[str, Layer] = {}
        self._pending: list[str] = []
        self._generation = 0
        self._visible: dict[str, bool] = {}  # the user's show/hide choice per result layer
        #: True while the program (not the pathologist) changes the refined outline's shapes.
        self.outline_filling = False
        #: Global prototype ids the prototype gallery holds (kept by the Prototypes pane).
        self.gallery_ids: frozenset[int] = frozenset()
        #: A dask scheduler the runs send their per-slide work to ("": this machine; set in
        #: the Project pane; ``protorefine.project.cluster``).
        self.scheduler = ""

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
        return L.pixel_scale(self.slide.mpp if self.slide is not None else None)

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

    def request_slide(self, slide_id: str) -> None:
        """Show ``slide_id`` as a click in the slide list would (the Project pane keeps each
        slide's view): ``slide_requested`` when a pane listens, else :meth:`show_slide`."""
        if len(self.slide_requested):
            self.slide_requested.emit(slide_id)
        else:
            self.show_slide(slide_id)

    def request_prototype(self, global_id: int) -> bool:
        """Ask the prototype gallery to select ``global_id`` and come forward; False when
        the gallery does not hold it (no prototypes computed yet, or no Prototypes pane)."""
        if global_id not in self.gallery_ids or not len(self.prototype_requested):
            return False
        self.prototype_requested.emit(global_id)
        return True

    def set_project(self, project: Project | None) -> None:
        """Make ``project`` the open one, clear the slide layers and emit ``project_changed``."""
        self.clear_slide_layers()
        self.project = project
        self.slide_id = None
        self.slide = None
        self.project_changed.emit(project)

    def show_slide(self, slide_id: str | None) -> None:
        """Swap the viewer's layers to ``slide_id`` (image, coarse Shapes, stored results).

        The layers of the slide on screen are reused: the image, the outline and every
        result layer get the new slide's data, scale and translate in place (a result
        layer the new slide has nothing for becomes its placeholder). Adding a layer
        costs 0.1-0.6 s of the event loop each; swapping data costs a repaint.
        """
        project = self.require_project()
        if slide_id is not None and slide_id not in {s.id for s in project.slides}:
            raise ProtorefineError(f"slide {slide_id!r} is not in the project {project.folder}")
        if slide_id is None:
            self.clear_slide_layers()
            self.slide_id = self.slide = None
            self.slide_changed.emit(None)
            return
        slide = project.open_slide(slide_id)
        coarse = project.coarse(slide_id)
        self._generation += 1  # placeholders still pending belong to the old slide
        self._pending = []
        self.slide_id, self.slide = slide_id, slide
        viewer = self.viewer
        units = L.world_units(slide.mpp)
        # a slide with mpp after one without (or back): give every layer its new units
        # first, else napari draws the swap half done and warns about mixed units
        results = [self.layer(name) for name in PLACEHOLDER_LAYERS]
        for layer in (self.coarse_layer, *results, *self._placeholders.values()):
            if (
                layer is not None
                and layer in viewer.layers
                and tuple(map(str, layer.units)) != units
            ):
                layer.units = units
        self._show_image(slide)
        if self.coarse_layer is not None and self.coarse_layer in viewer.layers:
            L.replace_shapes(self.coarse_layer, coarse, slide)
        else:
            layer = L.coarse_shapes_layer(coarse, slide, name=COARSE)
            self.coarse_layer = viewer.add_layer(layer)
        self._retarget_result_layers()
        self.show_pixel_probability()
        viewer.layers.selection.active = self.coarse_layer
        viewer.reset_view()
        self.slide_changed.emit(slide_id)
        self._schedule_placeholders()

    def _show_image(self, slide: Slide) -> None:
        """Show ``slide`` in the image layer: in place, or a new layer at the old one's position."""
        layers = self.viewer.layers
        old = self.image_layer if self.image_layer in layers else None
        if old is not None and L.retarget_image_layer(old, slide):
            return
        layer = L.image_layer(slide)
        if old is None:
            self.image_layer = self.viewer.add_layer(layer)
            return
        index = layers.index(old)
        layers.remove(old)
        layers.insert(index, layer)
        self.image_layer = layer

    def _retarget_result_layers(self) -> None:
        """Show the current slide's stored results in the result layers already on screen.

        A result layer the slide has results for gets them in place; one it has none
        for becomes the slide's placeholder (emptied, hidden, renamed); a stored
        result with no layer yet gets a new one (slow: the first slide shown only).
        The refined outline is emptied here and filled by the Refine widget.
        """
        assert self.project is not None and self.slide_id is not None and self.slide is not None
        grid = self._current_grid()
        for name in PLACEHOLDER_LAYERS:
            if name in PIXEL_LAYERS:  # their own cell grid: :meth:`show_pixel_probability`
                continue
            values = None
            if name in self.grid_layer_names and grid is not None:
                values = L.stored_grid_values(self.project, self.slide_id, name)
            layer = self.layer(name)
            if layer is not None and values is not None:
                L.retarget_grid_layer(layer, name, grid, self.pixel_scale, values)
                continue
            if layer is None and values is not None:
                self.set_grid_layer(name, values)  # fills the placeholder, or adds a layer
                continue
            if layer is not None:  # results of the old slide only: keep the user's visibility
                self._visible[name] = layer.visible
            else:
                layer = self._placeholders.get(name)
                if layer is None or layer not in self.viewer.layers:
                    self._placeholders.pop(name, None)
                    continue
            if name == REFINED_OUTLINE:
                self.outline_filling = True
                try:
                    L.replace_shapes(layer, None, self.slide)
                finally:
                    self.outline_filling = False
            else:
                L.retarget_grid_layer(layer, name, grid, self.pixel_scale)
            if layer.visible:
                layer.visible = False
            layer.name = name + PLACEHOLDER_SUFFIX
            self._placeholders[name] = layer

    def show_pixel_probability(self) -> None:
        """The current slide's pixel-stage maps (probability, pseudo-mask) in their hidden
        layers at once; the layers go when the slide has none."""
        for _ in self.pixel_layer_steps():
            pass

    def pixel_layer_steps(
        self, maps: dict[str, tuple[list[Any], float]] | None = None
    ) -> Iterator[None]:
        """:meth:`show_pixel_probability` one layer per event-loop turn (each change repaints),
        from ``maps`` read in a worker (by layer name), else read here.

        A map fills its layer, or the layer's placeholder, in place; a layer whose slide has
        no map becomes the placeholder again. Only a map whose pyramid-ness differs from its
        layer's (a single array cannot become a pyramid) costs a new layer.
        """
        if maps is None:
            maps = {}
            if self.project is not None and self.slide_id is not None:
                maps = L.pixel_maps(self.project, self.slide_id)
        for name in PIXEL_LAYERS:
            layer = self.layer(name)
            if name not in maps:
                if layer is not None:
                    self._visible[name] = layer.visible
                    layer.visible = False
                    L.retarget_pixel_layer(layer, [L.empty_pixel_map()], 1.0, self.pixel_scale)
                    layer.name = name + PLACEHOLDER_SUFFIX
                    self._placeholders[name] = layer
                    yield
                continue
            levels, cell0 = maps[name]
            target = layer if layer is not None else self._placeholders.get(name)
            if target is not None and target.multiscale != (len(levels) > 1):
                self._placeholders.pop(name, None)
                self.viewer.layers.remove(target)
                target = layer = None
                yield
            if target is None or target not in self.viewer.layers:
                self._placeholders.pop(name, None)
                self._add_below_outline(L.pixel_layer(name, levels, cell0, self.pixel_scale))
            else:
                L.retarget_pixel_layer(target, levels, cell0, self.pixel_scale)
                if layer is None:
                    self.take_placeholder(name)
            yield

    def set_grid_layer(self, name: str, values: np.ndarray, **kwargs: Any) -> Layer:
        """Show ``values`` (rows, cols) as the grid layer ``name`` over the current slide.

        Replaces the data of the existing layer or fills its placeholder in place
        (keeping the user's colour and visibility choices: a filled placeholder is
        shown unless the user hid that layer on the previous slide); only when
        neither exists is a new Labels layer (Image for "confidence") added, which
        is slow.
        """
        steps = self.grid_layer_steps(name, values, **kwargs)
        for _ in steps:
            pass
        layer = self.layer(name)
        assert layer is not None
        return layer

    def grid_layer_steps(self, name: str, values: np.ndarray, **kwargs: Any) -> Iterator[None]:
        """:meth:`set_grid_layer` one event-loop turn at a time: yields between data and reveal.

        Filling a hidden placeholder and then revealing it (new name, visible) are
        two separate repaints, each well under the 200 ms the window may stall.
        """
        slide_id = self.require_slide()
        project = self.require_project()
        grid = project.grid(slide_id)
        existing = self.layer(name)
        target = existing if existing is not None else self._placeholders.get(name)
        if target is None:
            layer = L.grid_layer(name, values, grid, self.pixel_scale, **kwargs)
            self._add_below_outline(layer)
            return
        L.retarget_grid_layer(target, name, grid, self.pixel_scale, values)
        if existing is None:
            yield
            if self.take_placeholder(name) is None:  # the slide changed meanwhile
                return

    def take_placeholder(self, name: str) -> Layer | None:
        """The placeholder of ``name``, now counted as holding results: renamed and shown.

        The caller fills it (data, shapes) in the same event-loop turn. None when
        ``name`` has no placeholder (not created yet, or results already shown).
        """
        layer = self._placeholders.pop(name, None)
        if layer is None or layer not in self.viewer.layers:
            return None
        layer.name = name
        layer.visible = self._visible.get(name, name not in HIDDEN_UNTIL_ASKED)
        # napari does not refresh hidden layers: the extent is still the placeholder's
        layer.refresh(thumbnail=False, data_displayed=False, highlight=False)
        return layer

    def placeholder(self, name: str) -> Layer | None:
        """The empty, hidden placeholder layer standing in for ``name``, or None."""
        return self._placeholders.get(name)

    def is_placeholder(self, layer: Layer) -> bool:
        """True when ``layer`` is a placeholder that holds no results."""
        return any(layer is p for p in self._placeholders.values())

    @property
    def placeholders_pending(self) -> bool:
        """True while placeholders of the current slide are still being created."""
        return bool(self._pending)

    def _schedule_placeholders(self) -> None:
        """Create the missing placeholders of the current slide, one per event-loop turn."""
        self._generation += 1
        self._pending = [n for n in PLACEHOLDER_LAYERS if self._needs_placeholder(n)]
        if self._pending:
            generation = self._generation
            QTimer.singleShot(0, lambda: self._create_next_placeholder(generation))

    def _needs_placeholder(self, name: str) -> bool:
        return (
            self.slide is not None and self.layer(name) is None and name not in self._placeholders
        )

    def _create_next_placeholder(self, generation: int) -> None:
        """Add one pending placeholder (a slide switch in between cancels the rest)."""
        if generation != self._generation:  # another slide was shown meanwhile
            return
        viewer = self._viewer_ref()
        if viewer is None or not _window_open(viewer):
            self._pending = []
            return
        while self._pending and not self._needs_placeholder(self._pending[0]):
            self._pending.pop(0)
        if not self._pending:
            return
        name = self._pending.pop(0)
        layer = self._placeholder_layer(name)
        active = viewer.layers.selection.active  # adding selects the new layer: keep the user's
        self._add_below_outline(layer)
        self._placeholders[name] = layer
        if active is not None and active in viewer.layers:
            viewer.layers.selection.active = active
        if self._pending:
            QTimer.singleShot(0, lambda: self._create_next_placeholder(generation))

    def _placeholder_layer(self, name: str) -> Layer:
        """An empty layer for ``name`` over the current slide (on the grid when it is known)."""
        assert self.slide is not None
        title = name + PLACEHOLDER_SUFFIX
        if name == REFINED_OUTLINE:
            data, meta, kind = L.shapes_layer_data(
                None, self.pixel_scale, name=title, mpp=self.slide.mpp
            )
            # visible but empty: draws nothing, and showing the outline later costs no shader build
            return Layer.create(data, meta, kind)
        if name in PIXEL_LAYERS:
            return L.pixel_layer(title, [L.empty_pixel_map()], 1.0, self.pixel_scale)
        grid = self._current_grid()
        style: dict[str, Any] = {}
        if name in IMAGE_GRID_LAYERS:  # styled up front: restyling a shown layer is slow
            style = {"colormap": grid_image_colormap(name), "opacity": 1.0}
        return L.placeholder_grid_layer(name, grid, self.pixel_scale, title=title, **style)

    def _current_grid(self) -> PatchGrid | None:
        """The current slide's patch grid, or None before features were computed."""
        project = self.project
        if project is None or self.slide_id is None or not project.stage_done("grid"):
            return None
        try:
            return project.grid(self.slide_id)
        except (ProtorefineError, KeyError, FileNotFoundError):
            return None

    def _add_below_outline(self, layer: Layer) -> Layer:
        """Add ``layer`` under the refined outline (which stays on top), else on top."""
        layers = self.viewer.layers
        index = len(layers)
        for top in (REFINED_OUTLINE, REFINED_OUTLINE + PLACEHOLDER_SUFFIX):
            if top in layers:
                index = min(index, layers.index(top))
        layers.insert(index, layer)
        return layer

    def layer(self, name: str) -> Layer | None:
        """The viewer layer called ``name`` holding results, or None (placeholders are not)."""
        viewer = self.viewer
        layer = viewer.layers[name] if name in viewer.layers else None
        return None if layer is None or self.is_placeholder(layer) else layer

    def grid_layers(self) -> dict[str, Layer]:
        """The grid layers holding results, by name (placeholders left out)."""
        return {n: layer for n in self.grid_layer_names if (layer := self.layer(n)) is not None}

    def coarse_annotations(self) -> AnnotationSet:
        """The coarse Shapes layer of the current slide as an AnnotationSet in level-0 pixels."""
        self.require_slide()
        if self.coarse_layer is None:
            raise ProtorefineError(f"slide {self.slide_id!r} has no coarse annotation layer")
        return L.layer_annotations(self.coarse_layer, self.pixel_scale)

    def clear_slide_layers(self) -> None:
        """Remove the layers this state added for the current slide, placeholders included."""
        self._generation += 1  # placeholders still pending belong to the old slide
        self._pending = []
        placeholders = list(self._placeholders.values())
        self._placeholders = {}
        self._visible = {}
        try:
            viewer = self.viewer
        except ProtorefineError:
            return
        gone = [self.image_layer, self.coarse_layer, *self.grid_layers().values(), *placeholders]
        # one batch: napari then cleans the scene graph (a full gc.collect, ~0.3 s) once, not per layer
        with viewer.layers.batched_update():
            for layer in gone:
                if layer is not None and layer in viewer.layers:
                    viewer.layers.remove(layer)
        self.image_layer = None
        self.coarse_layer = None


def _window_open(viewer: napari.Viewer) -> bool:
    """False once the viewer's window was closed (napari then has no Qt window to measure)."""
    window = getattr(viewer, "window", None)
    if window is None:
        return False
    try:
        window.geometry()
    except (AttributeError, RuntimeError):  # closed: the Qt window is gone or deleted
        return False
    return True


def get_state(viewer: napari.Viewer) -> ProtorefineState:
    """The protorefine state of ``viewer``, created on first use and shared by all widgets."""
    state = _STATES.get(viewer)
    if state is None:
        state = ProtorefineState(viewer)
        _STATES[viewer] = state
    return state
