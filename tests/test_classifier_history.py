"""The classifier reports training per epoch (history and progress) without changing its results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protorefine.refine.classifier import train_classifier
from protorefine.refine.config import RefineConfig


@pytest.fixture(scope="module")
def data():
    """Features with a learnable tumour direction and 15 % noisy pseudo-labels."""
    rng = np.random.default_rng(0)
    n, d = 2000, 16
    x = rng.normal(size=(n, d)).astype(np.float32)
    truth = (x[:, 0] + 0.3 * rng.normal(size=n)) > 0
    pseudo = np.where(rng.random(n) < 0.15, ~truth, truth).astype(np.int8)
    confidence = rng.random(n).astype(np.float32)
    score = truth * 0.8 + 0.1
    return torch.from_numpy(x), pseudo, confidence, score


@pytest.mark.slow
def test_history_and_progress_per_epoch(data):
    x, pseudo, confidence, score = data
    config = RefineConfig(epochs=5, finetune_epochs=3, rounds=3, samples_per_epoch=1024)
    seen: list[tuple[int, int, str]] = []
    rounds: list[dict] = []
    live: list[dict] = []
    result = train_classifier(
        x,
        pseudo,
        confidence,
        score,
        config=config,
        progress=lambda d, t, m: seen.append((d, t, m)),
        on_round=rounds.append,
        on_epoch=live.append,
    )
    assert [h["round"] for h in result.history] == [1, 2, 3]
    assert [len(h["epochs"]) for h in result.history] == [5, 3, 3]
    assert [e["epoch"] for e in result.history[1]["epochs"]] == [1, 2, 3]
    # the first round holds patches out: their loss and agreement per epoch
    first = result.history[0]["epochs"]
    assert all("held_out_loss" in e and 0.0 <= e["held_out_agreement"] <= 1.0 for e in first)
    assert all("held_out_loss" not in e for e in result.history[1]["epochs"])
    assert first[-1]["loss"] == pytest.approx(result.history[0]["loss"])
    assert first[-1]["loss"] < first[0]["loss"]  # it learns
    # on_round gets the same records, epochs included
    assert rounds == result.history
    # progress: one message per epoch, counting up to all epochs
    epochs = [(d, t) for d, t, m in seen if ", epoch " in m]
    assert [d for d, _ in epochs] == list(range(1, 12)) and {t for _, t in epochs} == {11}
    # on_epoch: each epoch's record as it happens, the same values as the history
    expected = [{"round": h["round"], **e} for h in result.history for e in h["epochs"]]
    assert [(p["round"], p["epoch"]) for p in live] == [(e["round"], e["epoch"]) for e in expected]
    for p, e in zip(live, expected, strict=True):
        assert p.keys() == e.keys()
        assert all(p[k] == pytest.approx(e[k], rel=1e-5) for k in e)


def test_results_do_not_depend_on_who_listens(data):
    x, pseudo, confidence, score = data
    config = RefineConfig(epochs=4, finetune_epochs=2, rounds=2, samples_per_epoch=1024)
    corrections = np.full(len(pseudo), -1, np.int8)
    corrections[:10] = 1
    quiet = train_classifier(x, pseudo, confidence, score, corrections=corrections, config=config)
    loud = train_classifier(
        x,
        pseudo,
        confidence,
        score,
        corrections=corrections,
        config=config,
        progress=lambda *_: None,
        on_round=lambda _: None,
        on_epoch=lambda _: None,
    )
    assert np.array_equal(quiet.prob, loud.prob)
    assert np.array_equal(quiet.pseudo, loud.pseudo)
    assert quiet.history == loud.history
