"""Prototype-guided refinement on arrays: the config and the steps the pipeline runs."""

from __future__ import annotations

from protorefine.refine.config import RefineConfig
from protorefine.refine.postprocess import prob_to_mask
from protorefine.refine.steps import (
    Cohort,
    SlideOutline,
    classifier_step,
    final_probability,
    outline_step,
    probability_step,
    prototypes_step,
    pseudo_labels_step,
)

__all__ = [
    "Cohort",
    "RefineConfig",
    "SlideOutline",
    "classifier_step",
    "final_probability",
    "outline_step",
    "probability_step",
    "prob_to_mask",
    "prototypes_step",
    "pseudo_labels_step",
]
