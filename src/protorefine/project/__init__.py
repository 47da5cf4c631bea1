"""The project: a folder that holds slides, coarse outlines, corrections, stage outputs and
review state (``store``), and the pipeline that runs the refinement stages over it."""

from protorefine.project.store import (
    MEASUREMENTS_CSV,
    PROTOTYPE_LABELS,
    RESULT_KEYS,
    Project,
    SlideEntry,
    checked_mpp,
    same_annotations,
    write_npz,
)

__all__ = [
    "MEASUREMENTS_CSV",
    "PROTOTYPE_LABELS",
    "RESULT_KEYS",
    "Project",
    "SlideEntry",
    "checked_mpp",
    "same_annotations",
    "write_npz",
]
