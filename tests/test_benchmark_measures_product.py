"""The quality benchmark measures the product: its "ours" row is what `protorefine refine` writes."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from protorefine.annotations import read_geojson
from protorefine.cli import main as cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import cohorts as C  # noqa: E402
import quality as Q  # noqa: E402

pytestmark = pytest.mark.slow


def test_quality_row_equals_a_refine_run(tmp_path, capsys):
    slides, notes = C.build_synthetic_cohort(n_slides=2, shape=(1024, 1024), seed=5)
    notes.update(C.add_coarse(slides, 5))
    cohort = C.Cohort("synthetic", slides, patch_size=64, key="test-synthetic", notes=notes)

    run = Q.product_run(cohort, "colour-texture", cache=tmp_path / "bench", log=lambda *a: None)
    masks, _ = run.refine({"seed": 0})
    bench = Q.scores(masks, cohort)

    tifs = [str(t) for t, _ in run.pairs]
    coarse = [str(c) for _, c in run.pairs]
    out = tmp_path / "refined"
    flags = run.command.split(" --coarse COARSE ")[1].split()  # the command the row names
    assert flags == "--patch-size 64 --stride 64 --encoder colour-texture --device cpu".split()
    assert cli(["refine", *tifs, "--coarse", *coarse, "--out", str(out), *flags]) == 0
    written = [
        Q.outline_raster(read_geojson(out / f"{s.name}.geojson"), run.project, s.name, s)
        for s in cohort.slides
    ]
    product = Q.scores(written, cohort)
    for a, b in zip(masks, written, strict=True):
        np.testing.assert_array_equal(a, b)
    assert product["dice"] == pytest.approx(bench["dice"], abs=1e-12)
    # and the benchmark's row beats the coarse outline it started from, as the product does
    assert bench["dice"] > Q.coarse_pixel_scores(cohort)["dice"]
