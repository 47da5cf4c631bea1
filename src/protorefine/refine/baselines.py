"""Baselines the refinement is measured against, on the same patch features.

- :func:`coarse_classifier`: the engine's MLP head trained directly on the coarse
  labels (what a user gets by trusting the outline and training a patch classifier).
- :func:`dknn`: Deep k-NN relabelling, each patch takes the majority coarse label
  of its ``k`` nearest neighbours in feature space (cosine, itself excluded), as
  in the comparison of the LC-MIL paper.
- :func:`attention_mil`: an LC-MIL-style label cleaner: per slide, an attention-MIL
  network trained on bags of neighbouring patches inside (positive) and outside
  (negative) the coarse outline, then each patch scored as a bag of one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from protorefine.errors import ProtorefineError
from protorefine.features.device import resolve_device
from protorefine.refine.classifier import train_classifier
from protorefine.refine.config import RefineConfig
from protorefine.refine.prototypes import embed_for_cosine


def _check(features: np.ndarray, coarse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes and return ``(features float32 (N, D), coarse int64 (N,) in {0, 1})``."""
    f = np.asarray(features, dtype=np.float32)
    c = np.asarray(coarse)
    if f.ndim != 2:
        raise ProtorefineError(f"features: expected a (N, D) array, got shape {f.shape}")
    if c.shape != (f.shape[0],):
        raise ProtorefineError(
            f"coarse: expected shape ({f.shape[0]},) to match features, got {c.shape}"
        )
    if f.shape[0] < 2:
        raise ProtorefineError(f"features: need at least 2 patches, got {f.shape[0]}")
    if not np.isfinite(f).all():
        raise ProtorefineError("features: contain NaN or infinite values")
    c = c.astype(np.float64)
    if not np.isin(c, (0.0, 1.0)).all():
        raise ProtorefineError("coarse: labels must be 0 (outside) or 1 (inside)")
    return f, c.astype(np.int64)


def coarse_classifier(
    features: np.ndarray,
    coarse: np.ndarray,
    *,
    seed: int = 0,
    device: str = "cpu",
    config: RefineConfig | None = None,
    blocks: Sequence[int] | None = None,
) -> np.ndarray:
    """Tumour probability per patch from the engine's patch classifier trained on the coarse labels.

    The same head, epochs and class-balanced sampling as the refinement's first
    round (``config``, default :class:`RefineConfig`), but every patch is trained
    with its coarse label at full confidence and there is no re-finetuning: the
    refinement without prototypes. Predicts on every patch, as the refinement does.
    ``blocks``: widths of features from separate encoders, one net each, as the refinement.
    """
    f, c = _check(features, coarse)
    if c.min() == c.max():
        return np.full(len(c), float(c[0]), dtype=np.float32)
    cfg = (config or RefineConfig()).replace(seed=int(seed), device=device, rounds=1)
    x = torch.from_numpy(f).to(resolve_device(device))
    res = train_classifier(
        x,
        c.astype(np.int8),
        np.ones(len(c), dtype=np.float32),
        c.astype(np.float32),
        config=cfg,
        blocks=blocks,
    )
    return np.asarray(res.prob, dtype=np.float32)


def dknn(
    features: np.ndarray,
    coarse: np.ndarray,
    slide_index: np.ndarray | None = None,
    k: int = 5,
    *,
    chunk: int = 2048,
    blocks: Sequence[int] | None = None,
) -> np.ndarray:
    """Relabel each patch by the majority coarse label of its ``k`` nearest neighbours (cosine, self excluded).

    With ``slide_index`` the neighbours are searched within the patch's own slide
    only; without it, across all patches given. ``blocks`` (widths of features from
    separate encoders) weighs each encoder's block equally in the cosine. Returns
    ``(N,)`` uint8 labels.
    """
    f, c = _check(features, coarse)
    if int(k) < 1:
        raise ProtorefineError(f"k={k}: must be >= 1")
    groups: list[np.ndarray]
    if slide_index is None:
        groups = [np.arange(len(c))]
    else:
        s = np.asarray(slide_index)
        if s.shape != c.shape:
            raise ProtorefineError(
                f"slide_index: expected shape {c.shape} to match features, got {s.shape}"
            )
        groups = [np.flatnonzero(s == v) for v in np.unique(s)]
    out = c.astype(np.uint8).copy()
    for g in groups:
        if len(g) < 2:
            continue  # a lone patch has no neighbours: keep its coarse label
        kk = min(int(k), len(g) - 1)
        x = embed_for_cosine(torch.from_numpy(f[g]), "none", blocks)
        lab = torch.from_numpy(c[g]).float()
        for start in range(0, len(g), chunk):
            sim = x[start : start + chunk] @ x.T
            rows = torch.arange(sim.shape[0])
            sim[rows, rows + start] = -float("inf")  # exclude the patch itself
            nn_idx = sim.topk(kk, dim=1).indices
            votes = lab[nn_idx].mean(1)
            out[g[start : start + chunk]] = (votes > 0.5).numpy().astype(np.uint8)
    return out


def attention_mil(
    features: np.ndarray,
    coarse: np.ndarray,
    slide_index: np.ndarray,
    rc: np.ndarray,
    *,
    seed: int = 0,
    window: int = 3,
) -> np.ndarray:
    """Tumour probability per patch from a per-slide attention-MIL network (Ilse et al. 2018)
    trained as LC-MIL does on a single slide: every ``window`` x ``window`` neighbourhood of
    patches is a bag, positive when its centre is inside the coarse outline; each patch is
    then scored as a bag of one. Features are z-scored per slide."""
    f, c = _check(features, coarse)
    sidx = np.asarray(slide_index)
    rcs = np.asarray(rc, dtype=np.int64)
    out = c.astype(np.float32).copy()
    for v in np.unique(sidx):
        g = np.flatnonzero(sidx == v)
        if c[g].min() != c[g].max() and len(g) >= 4:
            out[g] = _mil_one_slide(f[g], c[g], rcs[g], seed=seed, window=window)
    return out


def _bags(rc: np.ndarray, window: int) -> torch.Tensor:
    """(N, window²) indices of each patch's grid neighbours (-1 where there is none)."""
    pos = {(int(r), int(q)): i for i, (r, q) in enumerate(rc)}
    half = window // 2
    index = torch.full((len(rc), window * window), -1, dtype=torch.long)
    for i, (r, q) in enumerate(rc):
        k = 0
        for dr in range(-half, half + 1):
            for dq in range(-half, half + 1):
                j = pos.get((int(r) + dr, int(q) + dq))
                if j is not None:
                    index[i, k] = j
                    k += 1
    return index


class _AttentionMIL(torch.nn.Module):
    """Patch embedding, attention pooling (Ilse et al. 2018) and a bag classifier."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.embed = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.ReLU())
        self.attend = torch.nn.Sequential(
            torch.nn.Linear(hidden, 32), torch.nn.Tanh(), torch.nn.Linear(32, 1)
        )
        self.head = torch.nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        h = self.embed(x[index.clamp(min=0)])  # (B, W, hidden)
        a = self.attend(h).squeeze(-1).masked_fill(index < 0, -float("inf"))
        return self.head((torch.softmax(a, 1).unsqueeze(-1) * h).sum(1)).squeeze(-1)


def _mil_one_slide(
    f: np.ndarray, lab: np.ndarray, rc: np.ndarray, *, seed: int, window: int, epochs: int = 30
) -> np.ndarray:
    x = torch.from_numpy((f - f.mean(0)) / (f.std(0) + 1e-6))
    index = _bags(rc, window)
    y = torch.from_numpy(lab.astype(np.float32))
    w_pos = float((lab == 0).sum()) / max(1, int((lab == 1).sum()))
    torch.manual_seed(int(seed))
    gen = torch.Generator().manual_seed(int(seed))
    net = _AttentionMIL(x.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for _ in range(epochs):
        order = torch.randperm(len(index), generator=gen)
        for start in range(0, len(order), 256):
            b = order[start : start + 256]
            weight = torch.where(y[b] > 0.5, w_pos, 1.0)
            loss = bce(net(x, index[b]), y[b], weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return torch.sigmoid(net(x, torch.arange(len(x)).unsqueeze(1))).numpy()
