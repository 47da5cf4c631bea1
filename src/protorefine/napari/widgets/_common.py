"""Small helpers shared by the workflow widgets: input checks, pipeline, layer refresh."""

from __future__ import annotations

from collections.abc import Iterable

from protorefine.napari.state import ProtorefineState
from protorefine.napari.widgets._worker import notify


def check_coarse(state: ProtorefineState) -> bool:
    """True when every slide has a coarse tumour outline; else say which lack one and return False."""
    project = state.project
    if project is None:
        notify("warning", "Open or create a project first ('Project and slides').")
        return False
    if not project.slides:
        notify("warning", "The project has no slides: add one in 'Project and slides'.")
        return False
    missing = [s.id for s in project.slides if not _has_outline(project.coarse(s.id))]
    if missing:
        names = ", ".join(missing)
        notify(
            "warning",
            f"No coarse tumour outline on slide(s) {names}: draw one in 'Coarse annotation' first. Nothing was changed.",
        )
        return False
    return True


def _has_outline(annset) -> bool:
    """True when an annotation set holds at least one non-empty region."""
    return annset is not None and any(not a.geometry.is_empty for a in annset)


def pipeline_for(project, config=None):
    """The library pipeline over ``project`` (with ``config`` when the widget changed a setting)."""
    from protorefine.refine.pipeline import Pipeline

    return Pipeline(project, config)


def refresh_results(state: ProtorefineState, show: Iterable[str] = ()) -> None:
    """Reload the current slide's grid layers from the project, make ``show`` visible, tell the widgets."""
    if state.project is None or state.slide_id is None:
        return
    state.add_result_layers()
    for name in show:
        layer = state.layer(name)
        if layer is not None:
            layer.visible = True
    state.results_changed.emit(state.slide_id)
