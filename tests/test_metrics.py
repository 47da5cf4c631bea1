"""Overlap metrics and the evaluate table."""

from __future__ import annotations

import numpy as np
import pytest

from protorefine.errors import ProtorefineError
from protorefine.evaluate import all_metrics, dice, format_table, iou, precision, recall


def test_known_values():
    truth = np.zeros((4, 4), bool)
    truth[:2] = True  # 8 px
    pred = np.zeros((4, 4), bool)
    pred[1:3] = True  # 8 px, 4 overlap
    assert dice(pred, truth) == pytest.approx(0.5)
    assert iou(pred, truth) == pytest.approx(4 / 12)
    assert precision(pred, truth) == pytest.approx(0.5)
    assert recall(pred, truth) == pytest.approx(0.5)
    mask = np.zeros((4, 4), bool)
    mask[:2] = True  # only the truth rows count
    assert dice(pred, truth, mask) == pytest.approx(2 * 4 / (4 + 8))
    assert recall(pred, truth, mask) == pytest.approx(0.5)
    assert precision(pred, truth, mask) == pytest.approx(1.0)


def test_empty_and_perfect_cases():
    z = np.zeros((3, 3), bool)
    assert all_metrics(z, z) == {"dice": 1.0, "iou": 1.0, "precision": 1.0, "recall": 1.0}
    o = np.ones((3, 3), bool)
    assert dice(o, o) == 1.0 and dice(z, o) == 0.0 and recall(z, o) == 0.0
    with pytest.raises(ProtorefineError, match="shape"):
        dice(z, np.zeros((2, 2), bool))


def test_table_lists_slides_and_mean():
    m = {"dice": 0.8, "iou": 0.7, "precision": 0.9, "recall": 0.75}
    res = {
        "slides": [{"slide": "a", "refined": m, "coarse": m}],
        "mean": {"refined": m, "coarse": m},
    }
    text = format_table(res)
    lines = text.splitlines()
    assert lines[0].startswith("slide") and "coa dice" in lines[0] and "ref recall" in lines[0]
    assert lines[1].startswith("a") and "0.8000" in lines[1]
    assert lines[2].startswith("mean")
