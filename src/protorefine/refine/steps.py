"""The refinement's steps after the features, each a function over typed data.

A :class:`Cohort` holds every run slide's tissue cells stacked (one row per cell); the
steps take it and return plain results: prototypes, pseudo-labels, the trained head and
its rounds, the refined probability per cell, and per slide the outline traced from it.
:class:`protorefine.project.pipeline.Pipeline` loads a step's inputs from the project,
calls the step and saves what it returns; the CLI, napari and the benchmarks all run it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from protorefine._types import Cancel, Progress
from protorefine.annotations import AnnotationSet, smooth_outline, vectorize
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.features.device import resolve_device
from protorefine.refine.classifier import ClassifierResult, PatchHead, predict, train_classifier
from protorefine.refine.config import RefineConfig
from protorefine.refine.postprocess import context_features, prob_to_fine_mask, prob_to_mask
from protorefine.refine.prototypes import (
    CosineSpace,
    LocalPrototypes,
    Prototypes,
    global_prototypes,
    local_prototypes,
    slide_generator,
    standardize_per_slide,
)
from protorefine.refine.pseudolabels import PseudoLabels, make_pseudo_labels


@dataclass
class Cohort:
    """Every run slide's tissue cells stacked, one row per cell.

    ``features (N, D)`` raw encoder output, ``slide_index (N,)`` position of the cell's
    slide in ``slide_ids``, ``rc (N, 2)`` its grid row and column, ``rows`` each slide's
    row range, ``blocks`` the widths of features from separate encoders (``Encoder.blocks``).
    ``coarse (N,)`` 1 inside the coarse outline, ``distance (N,)`` signed distance to it in
    cells and ``corrections (N,)`` (-1 none, 0 normal, 1 tumour) are set once known.
    """

    slide_ids: list[str]
    features: np.ndarray
    slide_index: np.ndarray
    rc: np.ndarray
    rows: dict[str, tuple[int, int]]
    blocks: tuple[int, ...] | None = None
    coarse: np.ndarray | None = None
    distance: np.ndarray | None = None
    corrections: np.ndarray | None = None

    def __post_init__(self) -> None:
        """Refuse arrays that do not fit together (one line naming the array)."""
        if self.features.ndim != 2:
            raise ProtorefineError(
                f"features: expected an (N, D) array, got shape {self.features.shape}"
            )
        n = self.features.shape[0]
        if self.slide_index.shape != (n,):
            raise ProtorefineError(
                f"slide_index: expected shape ({n},), got {self.slide_index.shape}"
            )
        if self.rc.shape != (n, 2):
            raise ProtorefineError(f"rc: expected shape ({n}, 2), got {self.rc.shape}")

    @classmethod
    def stack(
        cls,
        slides: Sequence[tuple[str, np.ndarray, np.ndarray]],
        blocks: Sequence[int] | None = None,
    ) -> Cohort:
        """A cohort from ``(slide id, features (n, D), rc (n, 2))`` per slide."""
        feats, sidx, rcs, rows = [], [], [], {}
        a = 0
        for i, (sid, f, rc) in enumerate(slides):
            feats.append(np.asarray(f, dtype=np.float32))
            sidx.append(np.full(len(f), i, dtype=np.int64))
            rcs.append(np.asarray(rc, dtype=np.int64).reshape(-1, 2))
            rows[sid] = (a, a + len(f))
            a += len(f)
        return cls(
            slide_ids=[s[0] for s in slides],
            features=np.concatenate(feats),
            slide_index=np.concatenate(sidx),
            rc=np.concatenate(rcs),
            rows=rows,
            blocks=tuple(int(b) for b in blocks) if blocks else None,
        )

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def slide_rows(self, slide_id: str) -> slice:
        """The rows of one slide's cells."""
        a, b = self.rows[slide_id]
        return slice(a, b)

    def refine_features(self, config: RefineConfig) -> np.ndarray:
        """The features as the refinement sees them (z-scored per slide with ``slide_norm``)."""
        if config.slide_norm:
            return standardize_per_slide(self.features, self.slide_index)
        return self.features

    def cosine_space(self, config: RefineConfig) -> CosineSpace:
        """The space of prototype cosines, fitted on the cohort's cells."""
        x = torch.from_numpy(self.refine_features(config))
        return CosineSpace.fit(x, config.feature_norm, self.blocks)

    def cosine_features(self, config: RefineConfig, device: torch.device) -> torch.Tensor:
        """Unit rows for prototype cosines, each encoder's block weighed equally."""
        x = torch.from_numpy(self.refine_features(config))
        return CosineSpace.fit(x, config.feature_norm, self.blocks).embed(x.to(device))

    def classifier_input(self, config: RefineConfig, device: torch.device) -> torch.Tensor:
        """What the head sees: the cell's features, plus its grid neighbourhood with ``context``."""
        feats = self.refine_features(config)
        ctx = context_features(feats, self.slide_index, self.rc, config.context)
        return torch.from_numpy(ctx).to(device)

    def require_coarse(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``coarse`` and ``distance``, or a one-line error when they cannot be refined from
        (not set, wrong shape, one class only, too few cells, features not finite)."""
        n = len(self)
        if self.coarse is None:
            raise ProtorefineError("coarse labels: not set for this cohort")
        if self.coarse.shape != (n,):
            raise ProtorefineError(f"coarse: expected shape ({n},), got {self.coarse.shape}")
        if n < 4:
            raise ProtorefineError(f"features: {n} tissue patches is too few to refine")
        inside = np.asarray(self.coarse) >= 0.5
        if not inside.any():
            raise ProtorefineError("coarse labels: no patch lies inside the tumour outline")
        if inside.all():
            raise ProtorefineError("coarse labels: the tumour outline covers all tissue patches")
        if not np.isfinite(self.features).all():
            raise ProtorefineError("features: contain NaN or infinite values")
        return self.coarse, self.distance


def slide_prototypes_step(
    features: np.ndarray,
    coarse: np.ndarray,
    distance: np.ndarray | None,
    space: CosineSpace,
    config: RefineConfig,
    index: int,
) -> LocalPrototypes:
    """Local prototypes of one slide (slide ``index`` of the cohort) from its raw cell
    ``features``, in the cohort's cosine ``space``: the per-slide part of the prototypes
    step, which a cluster's worker runs with nothing but its own slide."""
    x = np.asarray(features, dtype=np.float32)
    if config.slide_norm:
        x = standardize_per_slide(x, np.zeros(len(x), dtype=np.int64))
    device = resolve_device(config.device)
    return local_prototypes(
        space.embed(torch.from_numpy(x).to(device)),
        coarse,
        distance,
        config=config,
        generator=slide_generator(config.seed, index),
    )


def prototypes_step(
    cohort: Cohort,
    config: RefineConfig,
    *,
    local: Sequence[LocalPrototypes] | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> Prototypes:
    """Local prototypes per slide (inside and outside the coarse outline) and global ones
    clustered from them, with each global prototype's tumour score. ``local``: every
    slide's local prototypes when they were computed elsewhere (a cluster's workers)."""
    coarse, distance = cohort.require_coarse()
    device = resolve_device(config.device)
    if local is None:
        space = cohort.cosine_space(config)
        local = []
        for i, sid in enumerate(cohort.slide_ids):
            if cancel is not None and cancel():
                raise CancelledError("prototypes stage cancelled")
            rows = cohort.slide_rows(sid)
            local.append(
                slide_prototypes_step(
                    cohort.features[rows],
                    coarse[rows],
                    None if distance is None else distance[rows],
                    space,
                    config,
                    i,
                )
            )
            if progress is not None:
                n = len(cohort.slide_ids)
                progress(i + 1, n + 1, f"local prototypes of slide {i + 1}/{n}")
    protos = global_prototypes(
        local,
        config=config,
        generator=torch.Generator().manual_seed(int(config.seed)),
        device=device,
    )
    if progress is not None:
        n, g = len(local) + 1, len(protos.global_centers)
        progress(n, n, f"{len(protos.local_centers)} local, {g} global prototypes")
    return protos


def pseudo_labels_step(
    cohort: Cohort,
    prototypes: Prototypes,
    config: RefineConfig,
    *,
    marks: dict[int, str] | None = None,
) -> PseudoLabels:
    """Pseudo-label and confidence per cell from the prototypes, the coarse outline, the
    pathologist's marks of global prototypes and painted corrections."""
    coarse, distance = cohort.require_coarse()
    device = resolve_device(config.device)
    return make_pseudo_labels(
        cohort.cosine_features(config, device),
        coarse,
        cohort.slide_index,
        cohort.rc,
        prototypes,
        distance=distance,
        corrections=cohort.corrections,
        marks=marks,
        config=config,
    )


def classifier_step(
    cohort: Cohort,
    pseudo: PseudoLabels,
    config: RefineConfig,
    *,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    on_round: Callable[[dict], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> ClassifierResult:
    """The cell classifier trained on the pseudo-labels with dynamic sampling, re-finetuned
    for ``config.rounds`` rounds with updated labels."""
    device = resolve_device(config.device)
    return train_classifier(
        cohort.classifier_input(config, device),
        pseudo.pseudo,
        pseudo.confidence,
        pseudo.proto_score,
        corrections=cohort.corrections,
        config=config,
        progress=progress,
        cancel=cancel,
        on_round=on_round,
        on_epoch=on_epoch,
        blocks=cohort.blocks,
    )


def final_probability(
    clf_prob: np.ndarray,
    pseudo_score: np.ndarray,
    corrections: np.ndarray | None,
    config: RefineConfig,
    coarse: np.ndarray | None = None,
) -> np.ndarray:
    """Refined tumour probability per cell from the head's output.

    Blends in the pseudo-label score (``final_blend``); outside the coarse outline a
    cell stays below the output threshold unless the head is sure
    (``p >= outside_threshold``); corrections win over everything.
    """
    b = float(config.final_blend)
    prob = ((1.0 - b) * np.asarray(clf_prob) + b * np.asarray(pseudo_score)).astype(np.float32)
    if coarse is not None and config.outside_threshold < 1.0:
        unsure_out = (np.asarray(coarse) < 0.5) & (prob < config.outside_threshold)
        prob[unsure_out] = np.minimum(prob[unsure_out], 0.5 * config.threshold)
    if corrections is not None:
        corr = np.asarray(corrections)
        prob[corr >= 0] = corr[corr >= 0].astype(np.float32)
    return prob


def probability_step(
    cohort: Cohort, model: PatchHead, pseudo_score: np.ndarray, config: RefineConfig
) -> np.ndarray:
    """The refined tumour probability of every cell: the trained head's prediction blended
    with the pseudo-label score, held down outside the outline, corrections applied."""
    device = resolve_device(config.device)
    prob = predict(model, cohort.classifier_input(config, device))
    return final_probability(prob, pseudo_score, cohort.corrections, config, cohort.coarse)


@dataclass
class SlideOutline:
    """One slide's output: the refined cells on its grid and the outline traced below them."""

    refined: np.ndarray  # (rows, cols) bool
    outline: AnnotationSet


def outline_step(
    prob_grid: np.ndarray,
    tissue: np.ndarray,
    config: RefineConfig,
    *,
    cell: float,
    shape: tuple[int, int],
    classification: str,
    colour: np.ndarray | None = None,
) -> SlideOutline:
    """A slide's refined cells and its outline polygons (level-0 pixels, clipped to the slide).

    ``prob_grid`` (rows, cols) refined probability, ``tissue`` the grid's tissue cells,
    ``cell`` level-0 pixels per grid cell, ``shape`` the slide's level-0 (H, W);
    ``colour`` the fine cells' stain statistics (``stain_clusters.cell_features``) when
    colour prototypes are on. The outline is traced ``config.output_upsample`` times
    finer than the grid and rounded (``outline_smoothing``).
    """
    refined = prob_to_mask(prob_grid, tissue=tissue, config=config)
    f = max(1, int(config.output_upsample))
    fine = prob_to_fine_mask(prob_grid, tissue=tissue, config=config, factor=f, colour=colour)
    step = cell / f
    annset = vectorize(fine, step, classification=classification)
    h, w = shape
    frame = box(0, 0, w, h)
    for ann in annset.annotations:
        smooth = smooth_outline(ann.geometry, step, config.outline_smoothing)
        ann.geometry = _polygonal(smooth.intersection(frame))
    annset.annotations = [a for a in annset.annotations if not a.geometry.is_empty]
    return SlideOutline(refined=refined, outline=annset)


def _polygonal(geom: BaseGeometry) -> Polygon | MultiPolygon:
    """Keep only the polygon parts of a clipped geometry."""
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon)]
    return MultiPolygon(parts) if parts else Polygon()
