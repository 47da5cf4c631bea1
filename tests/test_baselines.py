"""Baselines on small feature clouds: DkNN relabelling and the coarse-label classifier."""

from __future__ import annotations

import numpy as np
import pytest

from protorefine.errors import ProtorefineError
from protorefine.refine.baselines import coarse_classifier, dknn


def _clouds(n: int = 200, dim: int = 16, noise: float = 0.2, seed: int = 0):
    """Two well-separated clouds (truth 0/1) and coarse labels with ``noise`` of them flipped."""
    rng = np.random.default_rng(seed)
    truth = (np.arange(n) >= n // 2).astype(np.uint8)
    centres = rng.standard_normal((2, dim)) * 3
    feats = (centres[truth] + rng.standard_normal((n, dim)) * 0.7).astype(np.float32)
    coarse = truth.copy()
    flip = rng.choice(n, int(noise * n), replace=False)
    coarse[flip] = 1 - coarse[flip]
    return feats, coarse, truth


def test_dknn_repairs_flipped_labels():
    feats, coarse, truth = _clouds()
    out = dknn(feats, coarse, k=5)
    assert out.shape == truth.shape and out.dtype == np.uint8
    assert (coarse == truth).mean() == pytest.approx(0.8)
    # a wrong majority of 5 at 20% noise has probability ~0.06
    assert (out == truth).mean() > 0.9


def test_dknn_weighs_encoder_blocks_equally():
    """A wide block of noise beside a narrow informative one: blocks keep the neighbours right."""
    feats, coarse, truth = _clouds(dim=8)
    noise = np.random.default_rng(1).standard_normal((len(feats), 1000)).astype(np.float32)
    both = np.concatenate([feats, noise], axis=1)
    plain = (dknn(both, coarse, k=5) == truth).mean()
    balanced = (dknn(both, coarse, k=5, blocks=(8, 1000)) == truth).mean()
    assert balanced > 0.95 and balanced > plain + 0.05


def test_dknn_excludes_the_patch_itself():
    # Three identical points labelled 1 and one far point labelled 0 near them in angle:
    # with k=1 the lone 0 must take its nearest other neighbour's label, not its own.
    feats = np.array([[1, 0], [1, 0.01], [1, 0.02], [1, 0.2]], np.float32)
    coarse = np.array([1, 1, 1, 0])
    assert dknn(feats, coarse, k=1).tolist() == [1, 1, 1, 1]


def test_dknn_per_slide_neighbours():
    # Same features on two slides, opposite labels: within-slide search keeps each slide's labels,
    # a cohort-wide search mixes them.
    feats = np.tile(np.eye(3, dtype=np.float32) + 0.01, (2, 1))
    coarse = np.array([1, 1, 1, 0, 0, 0])
    slide = np.array([0, 0, 0, 1, 1, 1])
    assert dknn(feats, coarse, slide, k=2).tolist() == [1, 1, 1, 0, 0, 0]


def test_dknn_rejects_bad_input():
    feats, coarse, _ = _clouds(n=20)
    with pytest.raises(ProtorefineError, match="coarse"):
        dknn(feats, coarse[:-1])
    with pytest.raises(ProtorefineError, match="k=0"):
        dknn(feats, coarse, k=0)
    with pytest.raises(ProtorefineError, match="slide_index"):
        dknn(feats, coarse, np.zeros(3))
    with pytest.raises(ProtorefineError, match="0 .outside. or 1"):
        dknn(feats, coarse * 2)


def test_coarse_classifier_learns_the_majority_and_is_deterministic():
    feats, coarse, truth = _clouds(noise=0.15)
    p1 = coarse_classifier(feats, coarse, seed=3)
    p2 = coarse_classifier(feats, coarse, seed=3)
    assert p1.shape == (len(truth),) and p1.dtype == np.float32
    assert np.array_equal(p1, p2)
    assert ((p1 > 0.5) == truth).mean() > 0.85
    assert 0.0 <= p1.min() and p1.max() <= 1.0


def test_coarse_classifier_single_class_and_bad_input():
    feats, _, _ = _clouds(n=10)
    assert np.all(coarse_classifier(feats, np.ones(10)) == 1.0)
    with pytest.raises(ProtorefineError, match="features"):
        coarse_classifier(feats[0], np.ones(10))
    bad = feats.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ProtorefineError, match="NaN"):
        coarse_classifier(bad, np.ones(10))


def test_attention_mil_cleans_a_dilated_outline():
    """Per slide, bags of neighbouring patches: the normal rim a dilated outline takes in is
    scored low when it looks like the normal tissue outside."""
    from scipy import ndimage as ndi

    from protorefine.refine.baselines import attention_mil

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:30, :30]
    truth = np.hypot(yy - 15, xx - 15) < 8
    coarse = ndi.binary_dilation(truth, iterations=3)
    feats = rng.normal(0, 1, (900, 6)).astype(np.float32)
    feats[:, :2] += np.where(truth.ravel(), 2.0, -2.0)[:, None]
    rc = np.stack([yy.ravel(), xx.ravel()], 1)
    prob = attention_mil(feats, coarse.ravel().astype(np.uint8), np.zeros(900, int), rc)
    rim = coarse.ravel() & ~truth.ravel()
    assert prob.shape == (900,)
    assert prob[truth.ravel()].mean() > 0.7 and prob[rim].mean() < prob[truth.ravel()].mean() - 0.3
