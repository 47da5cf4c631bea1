"""Score one project slide's coarse and refined outlines against a ground-truth annotation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from protorefine.errors import ProtorefineError


def score_slide(
    project, slide_id: str, truth: str | os.PathLike[str]
) -> dict[str, dict[str, float]]:
    """Dice, IoU, precision and recall within tissue of the coarse and (when run) refined outlines.

    ``truth`` is a GeoJSON, ASAP XML or mask file for the slide. Returns
    ``{"coarse": {...}, "refined": {...}}`` (a key is absent when that outline is).
    """
    from protorefine.annotations import rasterize, read_annotations, tumour_geometry
    from protorefine.metrics import all_metrics
    from protorefine.slides import tissue_mask

    truth = Path(truth)
    slide = project.open_slide(slide_id)
    shape = slide.shape
    truth_set = read_annotations(truth, slide_shape=shape)
    truth_geom = tumour_geometry(truth_set)
    if truth_geom.is_empty:
        raise ProtorefineError(f"{truth}: no tumour region to compare with")
    tissue, ds = tissue_mask(slide)
    tissue = np.asarray(tissue, dtype=bool)

    def raster(geom) -> np.ndarray:
        mask = np.asarray(rasterize(geom, shape, ds), dtype=bool)
        out = np.zeros(tissue.shape, bool)
        h, w = min(out.shape[0], mask.shape[0]), min(out.shape[1], mask.shape[1])
        out[:h, :w] = mask[:h, :w]
        return out

    truth_mask = raster(truth_geom)
    scores: dict[str, dict[str, float]] = {}
    coarse = project.coarse(slide_id)
    if coarse is not None:
        scores["coarse"] = all_metrics(raster(tumour_geometry(coarse)), truth_mask, tissue)
    if project.has_results(slide_id):
        refined = project.accepted_outline(slide_id)
        scores["refined"] = all_metrics(raster(tumour_geometry(refined)), truth_mask, tissue)
    return scores
