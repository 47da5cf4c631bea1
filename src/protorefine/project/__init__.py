"""The project: a folder that holds slides, coarse outlines, corrections, stage outputs and
review state.

- ``store``: :class:`Project` (the folder, config, slides, coarse outlines, corrections,
  prototype marks, reading results);
- ``stages``: every stage's file names, fingerprints, when a stage is done, and the formats
  of projects written by earlier versions;
- ``review``: hand edits, the accepted outline, review ticks and order, measurements, why a
  part is in or out, exports and the measurements spreadsheet;
- ``labels_export``: refined outlines as OME-Zarr (NGFF) labels;
- ``pipeline``: the refinement stages run over a project.
"""

from protorefine.project.review import (
    MEASUREMENTS_CSV,
    changes_report,
    part_explainer,
    same_annotations,
    write_measurements_csv,
)
from protorefine.project.store import (
    MARKS,
    RESULT_KEYS,
    Project,
    SlideEntry,
    checked_mpp,
    slide_stem,
    write_npz,
)

__all__ = [
    "MEASUREMENTS_CSV",
    "MARKS",
    "RESULT_KEYS",
    "Project",
    "SlideEntry",
    "changes_report",
    "checked_mpp",
    "part_explainer",
    "same_annotations",
    "slide_stem",
    "write_measurements_csv",
    "write_npz",
]
