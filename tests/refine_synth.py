"""Synthetic feature clouds with a known tumour map and a corrupted coarse annotation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def blob_map(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth random tumour map with a normal island inside and a small satellite outside."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    cy, cx = h * rng.uniform(0.4, 0.6), w * rng.uniform(0.4, 0.6)
    r = min(h, w) * rng.uniform(0.25, 0.3)
    ang = np.arctan2(yy - cy, xx - cx)
    wobble = 1 + 0.15 * np.sin(3 * ang + rng.uniform(0, 6))
    truth = np.hypot(yy - cy, xx - cx) < r * wobble
    # a normal island inside the tumour
    iy, ix = int(cy + r * 0.3), int(cx - r * 0.2)
    truth[iy - 3 : iy + 3, ix - 3 : ix + 3] = False
    # a tumour satellite outside
    truth[2:5, 2:5] = True
    return truth


def coarse_from_truth(truth: np.ndarray) -> np.ndarray:
    """Coarse outline: dilate, fill holes, drop tiny parts (what a hurried pathologist draws)."""
    c = ndimage.binary_closing(truth, iterations=2)
    c = ndimage.binary_dilation(c, iterations=2)
    c = ndimage.binary_fill_holes(c)
    lab, n = ndimage.label(c)
    sizes = np.bincount(lab.ravel())
    keep = sizes >= 30
    keep[0] = False
    return keep[lab]


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Distance to the mask's outline in pixels: positive inside, negative outside."""
    return np.where(
        mask, ndimage.distance_transform_edt(mask), -ndimage.distance_transform_edt(~mask)
    ).astype(np.float32)


def make_cohort(n_slides: int = 4, shape: tuple[int, int] = (32, 32), dim: int = 32, seed: int = 0):
    """Features (N, dim), coarse (N,), truth (N,), slide_index, rc, distance for a small cohort.

    Tumour patches come from two tumour patterns; normal ones from three normal
    patterns (one of which, the island pattern, also appears outside). Each slide
    shifts all patterns a little (stain variation).
    """
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(5, dim)).astype(np.float32)
    feats, coarse, truth_all, sidx, rcs, dist = [], [], [], [], [], []
    for s in range(n_slides):
        truth = blob_map(shape, rng)
        c = coarse_from_truth(truth)
        shift = rng.normal(scale=0.3, size=dim).astype(np.float32)
        rr, cc = np.mgrid[: shape[0], : shape[1]]
        t = truth.ravel()
        kind = np.where(t, rng.integers(0, 2, t.size), rng.integers(2, 5, t.size))
        f = centers[kind] + shift + rng.normal(scale=0.6, size=(t.size, dim)).astype(np.float32)
        feats.append(f)
        coarse.append(c.ravel().astype(np.float32))
        truth_all.append(t)
        sidx.append(np.full(t.size, s))
        rcs.append(np.stack([rr.ravel(), cc.ravel()], 1))
        dist.append(signed_distance(c).ravel())
    return (
        np.concatenate(feats).astype(np.float32),
        np.concatenate(coarse),
        np.concatenate(truth_all),
        np.concatenate(sidx),
        np.concatenate(rcs),
        np.concatenate(dist),
    )


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean arrays."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    denom = pred.sum() + truth.sum()
    return 1.0 if denom == 0 else float(2 * (pred & truth).sum() / denom)


def write_slide_case(folder, *, size: int = 1024, seed: int = 3) -> dict:
    """A synthetic slide (PNG), its coarse outline and truth (GeoJSON) written to ``folder``."""
    from pathlib import Path

    import imageio.v3 as iio

    from protorefine.annotations import vectorize, write_geojson
    from protorefine.synthetic import simulate_coarse, synthetic_slide

    folder = Path(folder)
    for sub in ("slides", "coarse", "gt"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    slide, truth, ds = synthetic_slide((size, size), seed=seed)
    iio.imwrite(folder / "slides" / "s1.png", np.asarray(slide.levels[0]))
    write_geojson(simulate_coarse(truth, ds, seed=seed), folder / "coarse" / "s1.geojson")
    write_geojson(vectorize(truth, ds), folder / "gt" / "s1.geojson")
    return {
        "slide": folder / "slides" / "s1.png",
        "coarse": folder / "coarse" / "s1.geojson",
        "gt": folder / "gt" / "s1.geojson",
        "truth": truth,
        "downsample": ds,
    }


def run_steps(
    features,
    coarse,
    slide_index,
    rc,
    *,
    distance=None,
    corrections=None,
    marks=None,
    config=None,
    progress=None,
    cancel=None,
    on_round=None,
    blocks=None,
):
    """The refinement's steps in the pipeline's order on one in-memory cohort.

    Returns a namespace: ``prototypes`` and its per-patch ids and scores, ``initial``
    pseudo-labels, the classifier's ``pseudo``/``confidence``/``history``, the refined
    ``prob`` and ``refined`` mask per patch (each slide's grid cleaned as the output stage does).
    """
    from types import SimpleNamespace

    from protorefine.refine import (
        Cohort,
        RefineConfig,
        classifier_step,
        probability_step,
        prototypes_step,
        pseudo_labels_step,
    )
    from protorefine.refine.postprocess import masks_per_slide

    config = config or RefineConfig()
    slide_index = np.asarray(slide_index)
    ids = [str(i) for i in range(int(slide_index.max()) + 1)]
    rows = {
        sid: tuple(int(x) for x in np.flatnonzero(slide_index == i)[[0, -1]] + [0, 1])
        for i, sid in enumerate(ids)
    }
    cohort = Cohort(
        slide_ids=ids,
        features=np.asarray(features, np.float32),
        slide_index=slide_index,
        rc=np.asarray(rc, np.int64),
        rows=rows,
        blocks=tuple(blocks) if blocks else None,
        coarse=np.asarray(coarse, np.float32),
        distance=distance,
        corrections=corrections,
    )
    protos = prototypes_step(cohort, config, cancel=cancel)
    initial = pseudo_labels_step(cohort, protos, config, marks=marks)
    cr = classifier_step(cohort, initial, config, cancel=cancel, on_round=on_round)
    prob = probability_step(cohort, cr.model, initial.score, config)
    return SimpleNamespace(
        prototypes=protos,
        local_proto=protos.local_proto,
        global_proto=protos.global_proto,
        global_scores=protos.global_scores,
        initial=initial,
        pseudo=cr.pseudo,
        confidence=cr.confidence,
        history=cr.history,
        prob=prob,
        refined=masks_per_slide(prob, slide_index, cohort.rc, config),
    )
