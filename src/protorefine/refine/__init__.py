"""Prototype-guided refinement: config, array-level core, project pipeline."""

from __future__ import annotations

from protorefine.refine.config import RefineConfig
from protorefine.refine.core import RefineResult, refine_patches
from protorefine.refine.postprocess import prob_to_mask

__all__ = ["RefineConfig", "RefineResult", "refine_patches", "prob_to_mask"]
