"""Baselines the refinement is measured against, on the same patch features.

- :func:`coarse_classifier`: an MLP head trained directly on the coarse labels
  (what a user gets by trusting the outline and training a patch classifier).
- :func:`dknn`: Deep k-NN relabelling, each patch takes the majority coarse label
  of its ``k`` nearest neighbours in feature space (cosine, itself excluded), as
  in the comparison of the LC-MIL paper.
"""

from __future__ import annotations

import numpy as np
import torch

from protorefine.errors import ProtorefineError


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


def _device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ProtorefineError(f"device {device!r}: not a torch device") from exc


def _normalise(f: torch.Tensor) -> torch.Tensor:
    return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)


def coarse_classifier(
    features: np.ndarray,
    coarse: np.ndarray,
    *,
    hidden: int = 128,
    epochs: int = 30,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    batch: int = 256,
    seed: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Tumour probability per patch from an MLP trained on the coarse labels themselves.

    Same head as the engine's classifier (standardised L2-normalised features,
    one hidden ReLU layer, dropout), class-balanced mini-batches, Adam; predicts
    on every patch it was trained on, as the refinement does.
    """
    f, c = _check(features, coarse)
    if c.min() == c.max():
        return np.full(len(c), float(c[0]), dtype=np.float32)
    dev = _device(device)
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    x = _normalise(torch.from_numpy(f))
    mean, std = x.mean(0, keepdim=True), x.std(0, keepdim=True).clamp_min(1e-6)
    x = ((x - mean) / std).to(dev)
    y = torch.from_numpy(c).float().to(dev)
    model = torch.nn.Sequential(
        torch.nn.Linear(x.shape[1], hidden),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(hidden, 1),
    ).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    pos = float(c.mean())
    weights = torch.from_numpy(np.where(c == 1, 0.5 / pos, 0.5 / (1.0 - pos))).double()
    n = len(c)
    steps = max(1, int(np.ceil(n / batch)))
    model.train()
    for _ in range(epochs):
        idx = torch.multinomial(weights, steps * batch, replacement=True, generator=gen).to(dev)
        for s in range(steps):
            b = idx[s * batch : (s + 1) * batch]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(x[b]).squeeze(1), y[b]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        prob = torch.sigmoid(model(x).squeeze(1))
    return prob.cpu().numpy().astype(np.float32)


def dknn(
    features: np.ndarray,
    coarse: np.ndarray,
    slide_index: np.ndarray | None = None,
    k: int = 5,
    *,
    chunk: int = 2048,
) -> np.ndarray:
    """Relabel each patch by the majority coarse label of its ``k`` nearest neighbours (cosine, self excluded).

    With ``slide_index`` the neighbours are searched within the patch's own slide
    only; without it, across all patches given. Returns ``(N,)`` uint8 labels.
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
        x = _normalise(torch.from_numpy(f[g]))
        lab = torch.from_numpy(c[g]).float()
        for start in range(0, len(g), chunk):
            sim = x[start : start + chunk] @ x.T
            rows = torch.arange(sim.shape[0])
            sim[rows, rows + start] = -float("inf")  # exclude the patch itself
            nn_idx = sim.topk(kk, dim=1).indices
            votes = lab[nn_idx].mean(1)
            out[g[start : start + chunk]] = (votes > 0.5).numpy().astype(np.uint8)
    return out
