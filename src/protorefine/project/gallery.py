"""Data of the prototype gallery: one card per global prototype (no Qt, no napari).

The Prototypes pane of the napari plugin shows these cards; gathering them reads the
project's stored prototypes and a few member patches from the slides, which is slow,
so the pane calls :func:`prototype_cards` in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from protorefine._types import Cancel
from protorefine.features.extract import read_patches
from protorefine.features.grid import PatchGrid
from protorefine.slides.base import Slide

if TYPE_CHECKING:
    from protorefine.project.store import Project

#: Example patches shown per prototype and their side in screen pixels.
EXAMPLES = 3
THUMB = 40


@dataclass
class PrototypeCard:
    """One gallery row: a global prototype's id, size, tumour score, mark and example patches."""

    global_id: int
    size: int
    score: float
    label: str | None
    thumbs: np.ndarray  # (THUMB, k * THUMB, 3) uint8 strip of example patches


def prototype_cards(
    project: Project,
    *,
    examples: int = EXAMPLES,
    thumb: int = THUMB,
    cancel: Cancel | None = None,
) -> list[PrototypeCard]:
    """Gallery rows for every global prototype, reading a few member patches from the slides."""
    scores = np.asarray(project.global_scores(), dtype=float)
    marks = project.marks()
    members: dict[int, list[tuple[str, int, int]]] = {}
    sizes = np.zeros(len(scores), dtype=np.int64)
    with project.reading():
        run = project.slides_in_run()
        globs = {e.id: np.asarray(project.result_grid(e.id, "global_proto")) for e in run}
        grids: dict[str, PatchGrid] = {e.id: project.grid(e.id) for e in run}
    for sid, glob in globs.items():
        ids, counts = np.unique(glob[glob >= 0], return_counts=True)
        sizes[ids] += counts
        rows, cols = np.nonzero(glob >= 0)
        for member, row, col in zip(glob[rows, cols], rows, cols, strict=True):
            members.setdefault(int(member), []).append((sid, int(row), int(col)))
    slides: dict[str, Slide] = {}
    cards = []
    for gid in range(len(scores)):
        if cancel is not None and cancel():
            break
        chosen = members.get(gid, [])
        if len(chosen) > examples:
            # evenly spread over the members (slide order, then raster order): shows variety
            idx = np.linspace(0, len(chosen) - 1, examples).round().astype(int)
            chosen = [chosen[int(i)] for i in idx]
        strip = np.full((thumb, examples * thumb, 3), 255, dtype=np.uint8)
        for k, (sid, r, c) in enumerate(chosen):
            if sid not in slides:
                slides[sid] = project.open_slide(sid)
            strip[:, k * thumb : (k + 1) * thumb] = _patch_thumb(
                slides[sid], grids[sid], r, c, thumb
            )
        cards.append(PrototypeCard(gid, int(sizes[gid]), float(scores[gid]), marks.get(gid), strip))
    return cards


def _patch_thumb(slide: Slide, grid: PatchGrid, r: int, c: int, size: int) -> np.ndarray:
    """What the encoder saw for grid cell (r, c), shrunk to ``size`` pixels."""
    return read_patches(slide, grid, [r * grid.cols + c], size)[0]
