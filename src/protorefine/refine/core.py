"""Prototype-guided refinement on arrays: features + coarse labels in, refined probability out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from protorefine._types import Cancel, Progress
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.refine.classifier import train_classifier
from protorefine.refine.config import RefineConfig
from protorefine.refine.postprocess import context_features, masks_per_slide
from protorefine.refine.prototypes import (
    Prototypes,
    build_prototypes,
    embed_for_cosine,
    standardize_per_slide,
)
from protorefine.refine.pseudolabels import PseudoLabels, make_pseudo_labels


def compute_device(name: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; other names are taken as given."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ProtorefineError(f"device {name!r}: CUDA is not available on this machine")
    return torch.device(name)


@dataclass
class RefineResult:
    """Everything the refinement produced, per patch and per prototype.

    ``local_proto (N,)`` slide-unique local prototype id, ``global_proto (N,)``,
    ``global_scores (K,)`` tumour score per global prototype, ``pseudo (N,)`` final
    pseudo-labels, ``confidence (N,)``, ``prob (N,)`` classifier tumour probability,
    ``refined (N,)`` bool after smoothing/threshold/cleaning on each slide's grid,
    ``history`` one dict (round, loss, agreement, changed) per round.
    """

    local_proto: np.ndarray
    global_proto: np.ndarray
    global_scores: np.ndarray
    pseudo: np.ndarray
    confidence: np.ndarray
    prob: np.ndarray
    refined: np.ndarray
    history: list[dict] = field(default_factory=list)
    prototypes: Prototypes | None = None
    initial: PseudoLabels | None = None


def check_inputs(
    features: np.ndarray, coarse: np.ndarray, slide_index: np.ndarray, rc: np.ndarray
) -> None:
    """Raise ProtorefineError when the arrays do not fit together or hold one class only."""
    n = features.shape[0] if features.ndim == 2 else -1
    if n < 0:
        raise ProtorefineError(f"features: expected an (N, D) array, got shape {features.shape}")
    for name, arr in (("coarse", coarse), ("slide_index", slide_index)):
        if arr.shape != (n,):
            raise ProtorefineError(f"{name}: expected shape ({n},), got {arr.shape}")
    if rc.shape != (n, 2):
        raise ProtorefineError(f"rc: expected shape ({n}, 2), got {rc.shape}")
    if n < 4:
        raise ProtorefineError(f"features: {n} tissue patches is too few to refine")
    inside = np.asarray(coarse) >= 0.5
    if not inside.any():
        raise ProtorefineError("coarse labels: no patch lies inside the tumour outline")
    if inside.all():
        raise ProtorefineError("coarse labels: the tumour outline covers all tissue patches")
    if not np.isfinite(features).all():
        raise ProtorefineError("features: contain NaN or infinite values")


def final_probability(
    clf_prob: np.ndarray,
    pseudo_score: np.ndarray,
    corrections: np.ndarray | None,
    config: RefineConfig,
    coarse: np.ndarray | None = None,
) -> np.ndarray:
    """Refined tumour probability per patch from the head's output.

    Blends in the pseudo-label score (``final_blend``); outside the coarse outline a
    patch stays below the output threshold unless the head is sure
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


def refine_patches(
    features: np.ndarray,
    coarse: np.ndarray,
    slide_index: np.ndarray,
    rc: np.ndarray,
    *,
    distance: np.ndarray | None = None,
    corrections: np.ndarray | None = None,
    prototype_labels: dict[int, str] | None = None,
    config: RefineConfig | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    on_round: Callable[[dict], None] | None = None,
    blocks: Sequence[int] | None = None,
) -> RefineResult:
    """Refine coarse patch labels: prototypes -> pseudo-labels -> classifier -> cleaned mask.

    ``features (N, D)``, ``coarse (N,)`` in {0, 1} (or inside fraction), ``slide_index (N,)``,
    ``rc (N, 2)`` grid row/col, ``distance (N,)`` signed distance to the outline in
    patches, ``corrections (N,)`` int8 (-1 none, 0 normal, 1 tumour),
    ``prototype_labels`` {global id: "tumour" | "normal" | "ignore"}, ``blocks`` the
    widths of features from separate encoders (``Encoder.blocks``): prototypes weigh
    the blocks equally and the classifier trains one net per block.
    """
    config = config or RefineConfig()
    features = np.asarray(features, dtype=np.float32)
    coarse = np.asarray(coarse, dtype=np.float32)
    slide_index = np.asarray(slide_index)
    rc = np.asarray(rc, dtype=np.int64)
    check_inputs(features, coarse, slide_index, rc)
    if config.slide_norm:
        features = standardize_per_slide(features, slide_index)
    device = compute_device(config.device)
    steps = 4

    def step(i: int, msg: str) -> None:
        if cancel is not None and cancel():
            raise CancelledError(f"refinement cancelled before {msg}")
        if progress is not None:
            progress(i, steps, msg)

    step(0, "prototypes")
    x = embed_for_cosine(torch.from_numpy(features).to(device), config.feature_norm, blocks)
    gen = torch.Generator(device="cpu").manual_seed(config.seed)
    protos = build_prototypes(
        x, coarse, slide_index, distance=distance, config=config, generator=gen, cancel=cancel
    )
    step(1, "pseudo-labels")
    pl = make_pseudo_labels(
        x,
        coarse,
        slide_index,
        rc,
        protos,
        distance=distance,
        corrections=corrections,
        prototype_labels=prototype_labels,
        config=config,
    )
    step(2, "classifier")
    raw = torch.from_numpy(context_features(features, slide_index, rc, config.context)).to(device)
    cr = train_classifier(
        raw,
        pl.pseudo,
        pl.confidence,
        pl.proto_score,
        corrections=corrections,
        config=config,
        cancel=cancel,
        on_round=on_round,
        blocks=blocks,
    )
    step(3, "output")
    prob = final_probability(cr.prob, pl.score, corrections, config, coarse)
    refined = masks_per_slide(prob, slide_index, rc, config)
    if progress is not None:
        progress(steps, steps, "done")
    return RefineResult(
        local_proto=protos.local_proto,
        global_proto=protos.global_proto,
        global_scores=protos.global_scores,
        pseudo=cr.pseudo,
        confidence=cr.confidence,
        prob=prob,
        refined=refined,
        history=cr.history,
        prototypes=protos,
        initial=pl,
    )
