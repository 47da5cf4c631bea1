"""Prototype-guided pseudo-labels with confidence, honouring the pathologist's corrections."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from protorefine.errors import ProtorefineError
from protorefine.refine.classifier import predict, train_classifier
from protorefine.refine.config import RefineConfig
from protorefine.refine.postprocess import smooth_on_grid
from protorefine.refine.prototypes import Prototypes, reliability

#: What a pathologist can say of a global prototype (a *mark*).
MARKS = ("tumour", "normal", "ignore")


@dataclass
class PseudoLabels:
    """Per patch: ``pseudo`` (0/1), ``confidence`` in [0, 1] (0 = not used for training),
    ``score`` the blended tumour score, ``proto_score`` the prototype evidence alone."""

    pseudo: np.ndarray
    confidence: np.ndarray
    score: np.ndarray
    proto_score: np.ndarray


def effective_global_scores(
    scores: np.ndarray, labels: dict[int, str] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Global tumour scores after the pathologist's relabels, and the ignored prototypes."""
    out = np.asarray(scores, dtype=np.float32).copy()
    ignored = np.zeros(len(out), dtype=bool)
    for gid, lab in (labels or {}).items():
        g = int(gid)
        if not 0 <= g < len(out):
            continue
        if lab == "tumour":
            out[g] = 1.0
        elif lab == "normal":
            out[g] = 0.0
        elif lab == "ignore":
            ignored[g] = True
        else:
            raise ProtorefineError(
                f"prototype label {lab!r} for prototype {g}: must be one of {', '.join(MARKS)}"
            )
    return out, ignored


def _soft_vote(
    x: torch.Tensor, centers: torch.Tensor, scores: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Softmax-weighted (on cosine / temperature) average of prototype scores."""
    w = torch.softmax((x @ centers.T) / temperature, dim=1)
    return w @ scores


def prototype_evidence(
    features: torch.Tensor,
    slide_index: np.ndarray,
    protos: Prototypes,
    config: RefineConfig,
    global_scores: np.ndarray | None = None,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Local (own slide's prototypes) and global tumour evidence per patch, each in [0, 1]."""
    device = features.device
    n = features.shape[0]
    local = glob = None
    step = 32768
    if config.use_local:
        local = np.zeros(n, dtype=np.float32)
        for s in np.unique(slide_index):
            idx = np.flatnonzero(slide_index == s)
            sel = np.flatnonzero(protos.local_slide == s)
            cen = torch.from_numpy(protos.local_centers[sel]).to(device)
            sc = torch.from_numpy(protos.local_scores[sel]).to(device)
            for a in range(0, len(idx), step):
                part = torch.from_numpy(idx[a : a + step]).to(device)
                local[idx[a : a + step]] = (
                    _soft_vote(features[part], cen, sc, config.temperature).cpu().numpy()
                )
    if config.use_global:
        gs = protos.global_scores if global_scores is None else global_scores
        cen = torch.from_numpy(protos.global_centers).to(device)
        sc = torch.from_numpy(np.asarray(gs, dtype=np.float32)).to(device)
        glob = np.zeros(n, dtype=np.float32)
        for a in range(0, n, step):
            glob[a : a + step] = (
                _soft_vote(features[a : a + step], cen, sc, config.temperature).cpu().numpy()
            )
    return local, glob


def out_of_fold_evidence(
    x: torch.Tensor,
    coarse: np.ndarray,
    slide_index: np.ndarray,
    rc: np.ndarray,
    config: RefineConfig,
) -> np.ndarray:
    """Tumour probability of each patch from a head trained on the coarse labels of *other* folds.

    Folds are slides (grouped into at most ``oof_folds``); a single slide is split
    into grid quadrants. A patch's own noisy label never trains the head that scores it.
    """

    slides = np.unique(slide_index)
    k = max(2, int(config.oof_folds))
    if len(slides) >= 2:
        order = {s: i % k for i, s in enumerate(slides)}
        fold = np.array([order[s] for s in slide_index])
    else:
        r, c = rc[:, 0], rc[:, 1]
        fold = (r >= np.median(r)).astype(int) * 2 + (c >= np.median(c)).astype(int)
    lab = (np.asarray(coarse) >= 0.5).astype(np.int8)
    out = lab.astype(np.float32).copy()
    cfg = config.replace(rounds=1, epochs=max(1, config.epochs // 2))
    for f in np.unique(fold):
        train = fold != f
        if len(np.unique(lab[train])) < 2:
            continue
        idx = torch.from_numpy(np.flatnonzero(train)).to(x.device)
        res = train_classifier(
            x[idx],
            lab[train],
            np.ones(int(train.sum()), np.float32),
            lab[train].astype(np.float32),
            config=cfg,
        )

        test = torch.from_numpy(np.flatnonzero(~train)).to(x.device)
        out[~train] = predict(res.model, x[test])
    return out


def make_pseudo_labels(
    features: torch.Tensor,
    coarse: np.ndarray,
    slide_index: np.ndarray,
    rc: np.ndarray,
    protos: Prototypes,
    *,
    distance: np.ndarray | None = None,
    corrections: np.ndarray | None = None,
    marks: dict[int, str] | None = None,
    config: RefineConfig,
) -> PseudoLabels:
    """Blend coarse labels with prototype evidence, weighted by distance to the outline.

    ``q = t * r(d) * coarse + (1 - t * r(d)) * proto`` with ``t = coarse_trust`` and
    ``r(d) = 1 - exp(-|d| / boundary_width)``; ``q`` is smoothed on the grid, the label is
    ``q >= 0.5`` and the confidence ``|2q - 1|``. Corrections are hard labels with
    confidence 1; patches of an ignored global prototype get confidence 0.
    """
    n = len(coarse)
    coarse_f = np.asarray(coarse, dtype=np.float32)
    gscores, ignored = effective_global_scores(protos.global_scores, marks)
    local, glob = prototype_evidence(features, slide_index, protos, config, gscores)
    oof = (
        out_of_fold_evidence(features, coarse_f, slide_index, rc, config)
        if config.use_oof
        else None
    )
    parts = [p for p in (local, glob, oof) if p is not None]
    if parts:
        proto = np.mean(parts, axis=0).astype(np.float32)
        trust = config.coarse_trust * reliability(distance, n, config.boundary_width)
        q = trust * coarse_f + (1.0 - trust) * proto
    else:
        proto = coarse_f.copy()
        q = coarse_f.copy()
    # relabelled prototypes are the pathologist's word: they override the blend
    forced = np.full(n, np.nan, dtype=np.float32)
    for gid, lab in (marks or {}).items():
        if lab in ("tumour", "normal") and 0 <= int(gid) < len(gscores):
            forced[protos.global_proto == int(gid)] = 1.0 if lab == "tumour" else 0.0
    has_forced = ~np.isnan(forced)
    q[has_forced] = forced[has_forced]
    q = smooth_on_grid(q, slide_index, rc, config.pseudo_smooth)
    q[has_forced] = forced[has_forced]
    pseudo = (q >= 0.5).astype(np.int8)
    conf = np.abs(2.0 * q - 1.0).astype(np.float32)
    # never let a class the coarse outline has vanish: its most typical patches keep it
    for c in (0, 1):
        has_c = np.flatnonzero(((coarse_f >= 0.5) == bool(c)) & ~has_forced)
        if len(has_c) and not (pseudo == c).any():
            towards_c = q[has_c] if c == 1 else -q[has_c]
            top = has_c[np.argsort(-towards_c, kind="stable")[: max(1, len(has_c) // 4)]]
            pseudo[top] = c
            conf[top] = 0.1
    conf[ignored[protos.global_proto]] = 0.0
    if corrections is not None:
        corr = np.asarray(corrections)
        has = corr >= 0
        pseudo[has] = corr[has].astype(np.int8)
        q[has] = corr[has].astype(np.float32)
        conf[has] = 1.0
    return PseudoLabels(
        pseudo=pseudo, confidence=conf, score=q.astype(np.float32), proto_score=proto
    )
