"""Local (per slide) and global (across slides) prototypes by spherical k-means in torch."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from protorefine.errors import ProtorefineError
from protorefine.refine.config import RefineConfig


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (zero rows stay zero), so dot products are cosines."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)


FEATURE_NORMS = ("none", "center", "standardize")


def standardize_per_slide(features: np.ndarray, slide_index: np.ndarray) -> np.ndarray:
    """Z-score every feature within each slide, so stain and scanner shifts between slides cancel."""
    f = np.asarray(features, dtype=np.float32)
    out = np.empty_like(f)
    for s in np.unique(slide_index):
        m = slide_index == s
        part = f[m]
        out[m] = (part - part.mean(0)) / np.maximum(part.std(0), 1e-6)
    return out


@dataclass
class CosineSpace:
    """How features become unit rows for prototype cosines: the cohort's centring and
    scale per column (``mode``) and, with ``blocks`` (widths of features from separate
    encoders), each block's scale. Fitted once on the cohort, it embeds any slide's rows
    alone exactly as it embeds them among the rest (a cluster's worker sees one slide).

    Encoder features are mostly non-negative (ReLU, statistics), so raw cosines all sit
    near 1; centring (and z-scoring, for features of mixed units) spreads them out. Every
    block is scaled to the same mean row norm, so a 1280-d block does not drown a 77-d one.
    """

    mode: str
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    blocks: tuple[int, ...] | None = None
    block_scale: np.ndarray | None = None

    @classmethod
    def fit(
        cls,
        features: torch.Tensor,
        mode: str = "standardize",
        blocks: Sequence[int] | None = None,
    ) -> CosineSpace:
        """The space of ``features`` (N, D): their column statistics and block scales."""
        if mode not in FEATURE_NORMS:
            raise ValueError(f"feature_norm {mode!r}: must be one of {', '.join(FEATURE_NORMS)}")
        x = features.float()
        space = cls(mode)
        if mode in ("center", "standardize"):
            space.mean = x.mean(0).cpu().numpy()
        if mode == "standardize":
            space.std = x.std(0).clamp_min(1e-6).cpu().numpy()
        if blocks is not None and len(blocks) > 1:
            check_blocks(blocks, x.shape[1])
            parts = torch.split(space._centred(x), [int(b) for b in blocks], dim=1)
            space.blocks = tuple(int(b) for b in blocks)
            space.block_scale = np.array(
                [float(p.norm(dim=1).mean().clamp_min(1e-6)) for p in parts], dtype=np.float32
            )
        return space

    def _centred(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            x = x - torch.from_numpy(self.mean).to(x)
        if self.std is not None:
            x = x / torch.from_numpy(self.std).to(x)
        return x

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """Unit rows of ``features`` in this space."""
        x = self._centred(features.float())
        if self.blocks is not None and self.block_scale is not None:
            parts = torch.split(x, list(self.blocks), dim=1)
            x = torch.cat(
                [p / float(s) for p, s in zip(parts, self.block_scale, strict=True)], dim=1
            )
        return normalize(x)


def embed_for_cosine(
    features: torch.Tensor, mode: str = "standardize", blocks: Sequence[int] | None = None
) -> torch.Tensor:
    """Unit rows for cosine comparisons in the space of ``features`` themselves."""
    return CosineSpace.fit(features, mode, blocks).embed(features)


def check_blocks(blocks: Sequence[int], dim: int) -> None:
    """Feature block widths must be positive and add up to the feature width."""
    if any(int(b) < 1 for b in blocks) or sum(int(b) for b in blocks) != dim:
        raise ProtorefineError(
            f"feature blocks {tuple(blocks)} do not add up to the {dim} feature columns"
        )


def spherical_kmeans(
    x: torch.Tensor,
    k: int,
    *,
    weights: torch.Tensor | None = None,
    iters: int = 30,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted k-means on cosine similarity; returns unit centroids ``(k', D)`` and labels.

    ``x`` must be unit rows. Seeding is k-means++ on ``1 - cos`` from ``generator`` (a
    CPU generator: the draws are made on the CPU whatever device ``x`` is on, which a CUDA
    tensor needs and which keeps the seeds the same on every device), so equal seeds give
    equal results. Clusters that end up empty are dropped.
    """
    n = x.shape[0]
    k = max(1, min(int(k), n))
    w = torch.ones(n, dtype=x.dtype, device=x.device) if weights is None else weights.to(x)
    # k-means++ seeding on cosine distance
    first = int(torch.multinomial((w / w.sum()).cpu(), 1, generator=generator).item())
    centers = [x[first]]
    dist = (1.0 - x @ x[first]).clamp_min(0)
    for _ in range(1, k):
        p = dist * w
        if float(p.sum()) <= 1e-12:
            break
        idx = int(torch.multinomial((p / p.sum()).cpu(), 1, generator=generator).item())
        centers.append(x[idx])
        dist = torch.minimum(dist, (1.0 - x @ x[idx]).clamp_min(0))
    c = torch.stack(centers)
    labels = torch.zeros(n, dtype=torch.long, device=x.device)
    for it in range(iters):
        new_labels = (x @ c.T).argmax(dim=1)
        if it > 0 and torch.equal(new_labels, labels):
            break
        labels = new_labels
        sums = torch.zeros_like(c).index_add_(0, labels, x * w[:, None])
        c = normalize(sums)
    # drop empty clusters and relabel densely
    used = torch.unique(labels)
    c = c[used]
    labels = (x @ c.T).argmax(dim=1)
    return c, labels


def choose_k(n: int, k_div: float, k_max: int) -> int:
    """Number of clusters for ``n`` items: about ``sqrt(n / k_div)``, between 1 and ``k_max``."""
    if n <= 0:
        return 0
    return int(max(1, min(k_max, round(math.sqrt(n / k_div)))))


def merge_prototypes(
    centers: torch.Tensor, counts: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedily merge prototypes whose cosine exceeds ``threshold``, largest first.

    Returns the merged unit centres, their summed counts and, for each input
    prototype, the index of the merged prototype it went into.
    """
    order = torch.argsort(counts, descending=True, stable=True)
    kept: list[int] = []
    target = torch.full((centers.shape[0],), -1, dtype=torch.long)
    sums: list[torch.Tensor] = []
    cnts: list[float] = []
    for j in order.tolist():
        if kept:
            kc = normalize(torch.stack(sums))
            sims = kc @ centers[j]
            best = int(sims.argmax())
            if float(sims[best]) > threshold:
                sums[best] = sums[best] + centers[j] * counts[j]
                cnts[best] += float(counts[j])
                target[j] = best
                continue
        kept.append(j)
        sums.append(centers[j] * counts[j])
        cnts.append(float(counts[j]))
        target[j] = len(kept) - 1
    merged = normalize(torch.stack(sums))
    return merged, torch.tensor(cnts, dtype=centers.dtype), target


@dataclass
class Prototypes:
    """Both prototype levels for a cohort, plus each patch's assignment.

    ``local_centers (L, D)`` unit vectors, ``local_slide (L,)`` the slide of each,
    ``local_class (L,)`` the coarse class it was clustered from, ``local_counts (L,)``
    member patches, ``local_scores (L,)`` reliability-weighted tumour share of its
    members; ``global_centers (K, D)``, ``global_scores (K,)``, ``global_counts (K,)``,
    ``local_to_global (L,)``; per patch ``local_proto (N,)`` and ``global_proto (N,)``.
    """

    local_centers: np.ndarray
    local_slide: np.ndarray
    local_class: np.ndarray
    local_counts: np.ndarray
    local_scores: np.ndarray
    global_centers: np.ndarray
    global_scores: np.ndarray
    global_counts: np.ndarray
    local_to_global: np.ndarray
    local_proto: np.ndarray
    global_proto: np.ndarray

    def to_arrays(self) -> dict[str, np.ndarray]:
        """All fields as a dict of arrays (for ``np.savez``)."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, data) -> Prototypes:
        """Inverse of ``to_arrays`` (accepts an ``np.load`` result)."""
        return cls(**{k: np.asarray(data[k]) for k in cls.__dataclass_fields__})


def reliability(distance: np.ndarray | None, n: int, width: float) -> np.ndarray:
    """How much a patch's coarse label can be trusted: ~0 on the outline, -> 1 far from it."""
    if distance is None:
        return np.ones(n, dtype=np.float32)
    d = np.abs(np.asarray(distance, dtype=np.float32))
    d = np.where(np.isfinite(d), d, 1e3)
    return (1.0 - np.exp(-d / width)).astype(np.float32)


@dataclass
class LocalPrototypes:
    """One slide's local prototypes: ``centers (m, D)`` unit vectors, ``klass (m,)`` the
    coarse class each was clustered from, ``counts (m,)`` member cells, ``scores (m,)``
    reliability-weighted tumour share of its members, and ``assign (n,)`` each cell's
    prototype."""

    centers: np.ndarray
    klass: np.ndarray
    counts: np.ndarray
    scores: np.ndarray
    assign: np.ndarray


def slide_generator(seed: int, index: int) -> torch.Generator:
    """The k-means draws of slide ``index``: the same wherever the slide is clustered (one
    machine or a cluster's worker), whatever order the slides run in."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def local_prototypes(
    x: torch.Tensor,
    coarse: np.ndarray,
    distance: np.ndarray | None,
    *,
    config: RefineConfig,
    generator: torch.Generator,
) -> LocalPrototypes:
    """One slide's local prototypes from its unit rows ``x``: spherical k-means inside and
    outside the coarse outline, near-duplicates merged, each scored by the share of its
    members (all the slide's cells nearest to it) inside the outline, weighted by their
    distance from it, with a one-cell prior at 0.5."""
    device = x.device
    coarse_f = np.asarray(coarse, dtype=np.float32)
    rel = torch.from_numpy(reliability(distance, len(coarse_f), config.boundary_width) + 1e-3)
    centers, klass = [], []
    for c in (0, 1):
        sel = torch.from_numpy(np.flatnonzero((coarse_f >= 0.5) == bool(c))).to(device)
        k = choose_k(int(sel.numel()), config.local_k_div, config.local_k_max)
        if k == 0:
            continue
        cc, _ = spherical_kmeans(x[sel], k, iters=config.kmeans_iters, generator=generator)
        centers.append(cc)
        klass += [c] * cc.shape[0]
    cen = torch.cat(centers)
    klass_t = torch.tensor(klass, dtype=torch.float32)
    assign = (x @ cen.T).argmax(dim=1)
    counts = torch.bincount(assign, minlength=cen.shape[0]).float().cpu()
    merged, mcounts, target = merge_prototypes(cen.cpu(), counts, config.merge_threshold)
    # class of a merged prototype: count-weighted majority of what went into it
    mclass = torch.zeros(merged.shape[0]).index_add_(0, target, klass_t * counts)
    mclass = (mclass / mcounts.clamp_min(1e-9) >= 0.5).float()
    assign = (x @ merged.to(device).T).argmax(dim=1).cpu()
    m = merged.shape[0]
    num = torch.zeros(m).index_add_(0, assign, rel * torch.from_numpy(coarse_f))
    den = torch.zeros(m).index_add_(0, assign, rel)
    return LocalPrototypes(
        centers=merged.numpy().astype(np.float32),
        klass=mclass.numpy().astype(np.int8),
        counts=torch.bincount(assign, minlength=m).float().numpy(),
        scores=((num + 0.5) / (den + 1.0)).numpy().astype(np.float32),
        assign=assign.numpy().astype(np.int64),
    )


def global_prototypes(
    local: Sequence[LocalPrototypes],
    *,
    config: RefineConfig,
    generator: torch.Generator,
    device: torch.device | None = None,
) -> Prototypes:
    """Global prototypes clustered from every slide's local ones (``local`` in slide order)
    by count-weighted spherical k-means. A global prototype's score averages its members'
    scores with one vote per slide plus ``global_prior`` votes at 0.5, so a pattern seen on
    a single slide is not over-trusted."""
    offsets = np.cumsum([0] + [len(lp.centers) for lp in local])
    local_proto = np.concatenate([lp.assign + o for lp, o in zip(local, offsets, strict=False)])
    local_centers = np.concatenate([lp.centers for lp in local]).astype(np.float32)
    local_slide = np.concatenate(
        [np.full(len(lp.centers), i, dtype=np.int64) for i, lp in enumerate(local)]
    )
    local_counts = np.concatenate([lp.counts for lp in local]).astype(np.float32)
    local_scores = np.concatenate([lp.scores for lp in local]).astype(np.float32)
    L = local_centers.shape[0]
    kg = max(1, min(choose_k(L, 1.0, config.global_k_max), L))
    gcen, l2g = spherical_kmeans(
        torch.from_numpy(local_centers).to(device),
        kg,
        weights=torch.from_numpy(local_counts).to(device),
        iters=config.kmeans_iters,
        generator=generator,
    )
    l2g_np = l2g.cpu().numpy()
    K = gcen.shape[0]
    gscore = np.zeros(K, dtype=np.float32)
    gcount = np.zeros(K, dtype=np.float32)
    for g in range(K):
        members = np.flatnonzero(l2g_np == g)
        votes = []
        for s in np.unique(local_slide[members]):
            ms = members[local_slide[members] == s]
            wts = local_counts[ms]
            votes.append(float((local_scores[ms] * wts).sum() / max(wts.sum(), 1e-9)))
        gscore[g] = (sum(votes) + 0.5 * config.global_prior) / (len(votes) + config.global_prior)
        gcount[g] = local_counts[members].sum()
    # A cell belongs to the global prototype of its local prototype: global prototypes
    # are clusters of local ones, so both layers, the counts and relabels agree exactly.
    return Prototypes(
        local_centers=local_centers,
        local_slide=local_slide,
        local_class=np.concatenate([lp.klass for lp in local]),
        local_counts=local_counts,
        local_scores=local_scores,
        global_centers=gcen.cpu().numpy().astype(np.float32),
        global_scores=gscore,
        global_counts=gcount,
        local_to_global=l2g_np.astype(np.int64),
        local_proto=local_proto.astype(np.int64),
        global_proto=l2g_np[local_proto].astype(np.int64),
    )


def carry_marks(
    marks: dict[int, str],
    old: dict[str, tuple[np.ndarray, np.ndarray]],
    new: dict[str, tuple[np.ndarray, np.ndarray]],
    radius: float,
) -> dict[int, str]:
    """Move a pathologist's marks of global prototypes onto recomputed prototypes.

    ``old`` and ``new`` map slide id -> (patch centres (n, 2) in level-0 pixels, global
    prototype id of each patch). A new prototype takes the mark of the old one that more than
    half of its patches lie on (nearest old patch within ``radius``); prototypes
    without such a majority stay unmarked. Ids change whenever prototypes are rebuilt
    (another encoder, grid, seed or outline), so marks must follow the tissue, not the id.
    """
    from collections import Counter

    from scipy.spatial import cKDTree

    if not marks:
        return {}
    sizes: Counter[int] = Counter()
    votes: dict[int, Counter[int]] = {}
    for slide_id, (xy, gid) in new.items():
        sizes.update(gid.tolist())
        if slide_id not in old or len(old[slide_id][0]) == 0 or len(xy) == 0:
            continue
        oxy, ogid = old[slide_id]
        dist, idx = cKDTree(oxy).query(xy, distance_upper_bound=radius)
        found = np.isfinite(dist)
        for h, g in zip(gid[found].tolist(), ogid[idx[found]].tolist(), strict=True):
            votes.setdefault(h, Counter())[g] += 1
    out = {}
    for h, counts in votes.items():
        g, n = counts.most_common(1)[0]
        if g in marks and n > 0.5 * sizes[h]:
            out[int(h)] = marks[g]
    return out
