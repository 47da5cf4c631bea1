"""Small helpers shared by the workflow widgets: input checks, pipeline, layer refresh."""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable, Iterator, Set
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtGui import QKeySequence, QShortcut
from qtpy.QtWidgets import (
    QAbstractButton,
    QFrame,
    QHeaderView,
    QScrollArea,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from protorefine.napari.colormaps import grid_image_colormap
from protorefine.napari.layer_names import GRID_LAYERS, IMAGE_GRID_LAYERS, REFINED_OUTLINE
from protorefine.napari.layers import (
    edge_width_for,
    pixel_maps,
    shapes_layer_data,
    stored_grid_values,
)
from protorefine.napari.state import ProtorefineState, get_state
from protorefine.napari.widgets._worker import TaskContext, notify

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

    from protorefine.annotations.model import AnnotationSet
    from protorefine.project import Project

#: Colour of the "refined outline" Shapes layer (the polygons that get exported).
OUTLINE_COLOUR = "#ff1a1a"


def add_shortcut(
    owner: QWidget, keys: str, control: QWidget, action: Callable[[], object] | None = None
) -> QShortcut:
    """``keys`` (e.g. "Shift+N") anywhere in napari's window does what ``control`` does
    (``action``, else a click on the button) while ``owner`` is shown and ``control``
    enabled; a button's tooltip names the key. Review a batch without the mouse."""
    shortcut = QShortcut(QKeySequence(keys), owner)
    shortcut.setContext(Qt.ShortcutContext.ApplicationShortcut)  # a floating dock too
    button = control if isinstance(control, QAbstractButton) else None
    run = action or (button.click if button is not None else None)
    if run is None:
        raise TypeError(f"add_shortcut({keys!r}): {type(control).__name__} needs an action")

    def fire() -> None:
        if control.isEnabled() and control.isVisible():
            run()

    shortcut.activated.connect(fire)
    if button is not None:
        tip = control.toolTip()
        control.setToolTip(f"{tip} ({keys})" if tip else keys)
    return shortcut


#: Modules the pipeline imports lazily. A first import holds the GIL for up to seconds
#: (torch's optimiser pulls in torch._dynamo and sympy), which would freeze the window
#: in the middle of a run, so the widgets import them once, up front, in the background.
WARM_MODULES = (
    "protorefine.project.pipeline",
    "protorefine.project.gallery",
    "protorefine.features",
    "protorefine.slides",
    "protorefine.annotations",
    "protorefine.evaluate",
    "protorefine.project.labels_export",
    "torch._dynamo",
    "torch.optim",
    "scipy.ndimage",
    "scipy.spatial",
    "skimage.io",
    "skimage.measure",
    "skimage.morphology",
    "skimage.transform",
    "zarr",
    "ome_zarr.writer",
)
WARMED = threading.Event()
_warm_lock = threading.Lock()
_warm_started = False


def warm_up() -> threading.Event:
    """Start importing :data:`WARM_MODULES` (and one tiny optimiser step) in a daemon thread, once."""
    global _warm_started
    with _warm_lock:
        if _warm_started:
            return WARMED
        _warm_started = True
    threading.Thread(target=_warm, name="protorefine-warm-up", daemon=True).start()
    return WARMED


class WorkflowWidget(QWidget):
    """Base of the workflow dock widgets: the viewer, its shared protorefine state, warm imports.

    Subclasses lay out their controls on ``self.body``, which scrolls when the dock is
    shorter than the controls (three workflow steps share one tabbed pane), so nothing
    is ever squeezed on top of something else.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.state: ProtorefineState = get_state(napari_viewer)
        self.body = QWidget()
        self.scroll_area = QScrollArea()
        self.scroll_area.setWidgetResizable(True)
        self.scroll_area.setFrameShape(QFrame.Shape.NoFrame)
        self.scroll_area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.scroll_area.setWidget(self.body)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll_area)
        warm_up()


def _warm() -> None:
    try:
        for name in WARM_MODULES:
            try:
                importlib.import_module(name)
            except ImportError:
                continue
        import torch

        weight = torch.zeros(2, requires_grad=True)
        optimiser = torch.optim.AdamW([weight], lr=1e-3)
        (weight * 2).sum().backward()
        optimiser.step()
    finally:
        WARMED.set()


def runnable_project(state: ProtorefineState) -> Project | None:
    """The open project when at least one slide has a coarse tumour outline (a run refines
    those and says which it leaves out) and no other process runs on it; else say what to
    do and return None."""
    project = state.project
    if project is None:
        notify("warning", "Open or create a project first ('Project and slides').")
        return None
    from protorefine.project.lock import busy_message

    busy = busy_message(project.folder)  # a CLI run on it: two runs would interleave
    if busy is not None:
        notify("warning", f"{busy}. Nothing was changed.")
        return None
    if not project.slides:
        notify("warning", "The project has no slides: add one in 'Project and slides'.")
        return None
    missing = [s.id for s in project.slides if not project.has_outline(s.id)]
    if len(missing) == len(project.slides):
        names = ", ".join(missing)
        notify(
            "warning",
            f"No coarse tumour outline on slide(s) {names}: draw one in 'Coarse annotation' first. Nothing was changed.",
        )
        return None
    if missing:
        notify(
            "info",
            f"No coarse outline yet on {', '.join(missing)}: this run refines the other "
            "slides and leaves those out until they get one.",
        )
    return project


def edited_outlines(project) -> set[str]:
    """Slides whose refined outline has hand edits valid for the current refinement."""
    if project is None or not project.stage_done("output"):
        return set()
    with project.reading():
        return {s.id for s in project.slides if project.outline_edited(s.id)}


def pipeline_for(project, config=None, *, scheduler: str = ""):
    """The library pipeline over ``project`` (with ``config`` when the widget changed a setting);
    with a ``scheduler`` address (the Project pane's), the one whose per-slide work runs on
    that dask cluster, connected when the run starts (in the run's thread).

    Patches are read by threads on a GPU too: forking worker processes out of a running
    GUI (Qt and Python threads holding locks) can hang them.
    """
    if scheduler.strip():
        from protorefine.project.cluster import ClusterPipeline

        return ClusterPipeline(project, scheduler.strip(), config, partial=True, loader="thread")
    from protorefine.project.pipeline import Pipeline

    return Pipeline(project, config, partial=True, loader="thread")


def relay_slide_tasks(pipeline, ctx: TaskContext) -> None:
    """Send a cluster run's slide-task states (:class:`~protorefine.project.cluster.SlideTask`)
    through ``ctx`` to the Qt thread, where :func:`slide_task_events` shows them."""
    from protorefine.project.cluster import ClusterPipeline

    if isinstance(pipeline, ClusterPipeline):
        pipeline.on_task = ctx.send


def slide_task_events(
    state: ProtorefineState, handler: Callable[[object], None] | None = None
) -> Callable[[object], None]:
    """A runner's ``on_event``: slide-task states go to ``state.slide_task`` (the Project
    pane's slide list), anything else to ``handler``."""
    from protorefine.project.cluster import SlideTask

    def on_event(obj: object) -> None:
        if isinstance(obj, SlideTask):
            state.slide_task.emit(obj)
        elif handler is not None:
            handler(obj)

    return on_event


@dataclass
class SlideResults:
    """Grid values of one slide's result layers, loaded in a worker thread (reading is slow)."""

    slide_id: str | None
    values: dict[str, np.ndarray] = field(default_factory=dict)
    outline: AnnotationSet | None = None
    #: The pixel stage's maps by layer name: (levels of values per cell, level-0 pixels per cell).
    pixel: dict[str, tuple[list[Any], float]] = field(default_factory=dict)
    #: Slides whose hand edits of the outline the run that made these results superseded.
    superseded_edits: list[str] = field(default_factory=list)


def load_results(
    project,
    slide_id: str | None,
    names: Iterable[str] = GRID_LAYERS,
    edited_before: Set[str] = frozenset(),
) -> SlideResults:
    """Read the stored grid values behind each grid layer of ``slide_id`` (call it in the worker).

    ``edited_before``: :func:`edited_outlines` before the run, to tell which edits it superseded.
    """
    out = SlideResults(slide_id)
    if project is None or slide_id is None:
        return out
    out.superseded_edits = sorted(set(edited_before) - edited_outlines(project))
    for name in names:
        values = stored_grid_values(project, slide_id, name)
        if values is not None:
            out.values[name] = values
    if project.has_results(slide_id):
        out.outline = project.accepted_outline(slide_id)
    out.pixel = pixel_maps(project, slide_id)
    return out


def show_results(
    state: ProtorefineState,
    results: SlideResults | None = None,
    show: Iterable[str] = (),
    *,
    emit: bool = True,
) -> Iterator[None]:
    """Show loaded results as the current slide's grid layers, one layer per ``yield``.

    Each result fills its layer's placeholder, or replaces an existing layer's data,
    in place; only a layer with neither is added (slow). The generator yields after
    each layer and :class:`TaskRunner` resumes it on the next event-loop turn, so
    no turn updates more than one layer. Then ``show`` layers are made visible and
    ``results_changed`` is emitted (unless ``emit`` is False: the caller emits it
    after its own steps). ``results`` come from :func:`load_results` in the worker;
    when missing (or the user switched slides meanwhile) each layer is reloaded
    from the project.
    """
    if state.project is None or state.slide_id is None:
        return
    if results is not None and results.superseded_edits:
        notify(
            "info",
            f"Hand edits of the outline of {', '.join(results.superseded_edits)} stay in "
            f"{state.project.folder / 'edited'}; the new outline replaces them on screen.",
        )
    if results is None or results.slide_id != state.slide_id:
        results = SlideResults(state.slide_id)
        for name in state.grid_layer_names:
            values = stored_grid_values(state.project, state.slide_id, name)
            if values is not None:
                yield from state.grid_layer_steps(name, values)
                yield
    else:
        for name, values in results.values.items():
            yield from state.grid_layer_steps(name, values)
            yield
        if results.outline is not None:
            yield from outline_steps(state, results.outline)
    style_result_layers(state)
    yield
    pixel = results.pixel if results is not None and results.slide_id == state.slide_id else None
    yield from state.pixel_layer_steps(pixel)
    for name in show:
        layer = state.layer(name)
        if layer is not None and not layer.visible:
            layer.visible = True
            yield
    if emit:
        state.results_changed.emit(state.slide_id)


def show_outline(state: ProtorefineState, annset: AnnotationSet | None) -> None:
    """Show the red "refined outline" Shapes layer (the polygons that get exported) at once."""
    for _ in outline_steps(state, annset):
        pass


#: Polygon vertices added to the outline layer per event-loop turn (napari triangulates them).
OUTLINE_VERTICES_PER_TURN = 1500


def outline_steps(state: ProtorefineState, annset: AnnotationSet | None) -> Iterator[None]:
    """Show the refined outline, yielding between chunks of polygons (one repaint each).

    An existing layer (or the slide's outline placeholder) at the same scale gets
    its shapes replaced in place: a new Shapes layer costs several hundred ms of
    the event loop. napari triangulates every added polygon, so the shapes go in
    chunks of about :data:`OUTLINE_VERTICES_PER_TURN` vertices.
    """
    state.outline_filling = True  # these changes are not the pathologist's edits
    try:
        yield from _outline_steps(state, annset)
    finally:
        state.outline_filling = False


def _outline_steps(state: ProtorefineState, annset: AnnotationSet | None) -> Iterator[None]:
    from napari.layers import Layer

    viewer = state.viewer
    old = state.layer(REFINED_OUTLINE)
    if annset is None or state.slide is None:
        if old is not None:
            viewer.layers.remove(old)
        return
    width = edge_width_for(state.slide.shape) * 1.5
    data, meta, kind = shapes_layer_data(
        annset, state.pixel_scale, name=REFINED_OUTLINE, mpp=state.slide.mpp, edge_width=width
    )
    if old is None:
        placeholder = state.placeholder(REFINED_OUTLINE)
        if placeholder is not None and np.allclose(placeholder.scale[-2:], meta["scale"]):
            old = state.take_placeholder(REFINED_OUTLINE)
            yield
    if old is not None and np.allclose(old.scale[-2:], meta["scale"]):
        if len(old.data):
            old.data = []
            yield
        types = meta["shape_type"]
        types = [types] * len(data) if isinstance(types, str) else list(types)
        for chunk in _chunks(data, OUTLINE_VERTICES_PER_TURN):
            old.add(
                [data[i] for i in chunk],
                shape_type=[types[i] for i in chunk],
                edge_width=width,
                edge_color=OUTLINE_COLOUR,
                face_color="transparent",
            )
            yield
        # added shapes take the default class: give each its own (holes are Exclusion shapes,
        # and a hand edit reads the outline back from these classes)
        old.features = meta["features"]
        old.feature_defaults = meta["feature_defaults"]
        return
    if old is not None:
        viewer.layers.remove(old)
    active = viewer.layers.selection.active  # adding selects the new layer: keep the user's
    layer = viewer.add_layer(Layer.create(data, meta, kind))
    layer.edge_color = OUTLINE_COLOUR
    if active is not None and active in viewer.layers:
        viewer.layers.selection.active = active


def _chunks(shapes: list[np.ndarray], budget: int) -> Iterator[list[int]]:
    """Indices of ``shapes`` in consecutive groups of at most ``budget`` vertices (or one shape)."""
    chunk: list[int] = []
    count = 0
    for i, shape in enumerate(shapes):
        if chunk and count + len(shape) > budget:
            yield chunk
            chunk, count = [], 0
        chunk.append(i)
        count += len(shape)
    if chunk:
        yield chunk


def style_result_layers(state: ProtorefineState) -> None:
    """Confidence and tumour probability in their own transparent ramps, so off-tissue and
    sure cells do not hide the slide."""
    for name in IMAGE_GRID_LAYERS:
        layer = state.layer(name)
        wanted = grid_image_colormap(name)
        if layer is not None and getattr(layer.colormap, "name", "") != wanted.name:
            layer.colormap = wanted
            layer.opacity = 1.0


def rewire(
    old: Layer | None, new: Layer | None, event: str, callback: Callable[..., object]
) -> Layer | None:
    """Move ``callback`` from layer ``old``'s ``event`` to layer ``new``'s (either may be
    None); returns ``new``."""
    if new is not old:
        if old is not None:
            getattr(old.events, event).disconnect(callback)
        if new is not None:
            getattr(new.events, event).connect(callback)
    return new


def table_headers(table: QTableView) -> tuple[QHeaderView, QHeaderView]:
    """The (horizontal, vertical) headers of ``table`` (Qt's stubs allow None; a table
    always has both)."""
    horizontal, vertical = table.horizontalHeader(), table.verticalHeader()
    assert horizontal is not None and vertical is not None
    return horizontal, vertical
