"""The training plots' legend: it lists the series a run filled, each in its own colour."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui


def _legend_has(plot, colour: str, tmp_path) -> bool:
    """True when the legend band (above the plot area) shows the series colour ``colour``."""
    from skimage.io import imread

    shot = tmp_path / "plot.png"
    assert plot.grab().save(str(shot))
    band = imread(shot)[: plot._legend_height(), :, :3].astype(int)
    rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(band - rgb).sum(axis=-1) < 40).sum() > 10)


def test_a_series_with_no_points_is_not_in_the_legend(qtbot, tmp_path):
    from protorefine.napari.widgets._plot import SERIES_COLOURS, LinePlot

    plot = LinePlot(("loss", "agreement", "held-out agreement"), ("loss", "agreement", "agreement"))
    qtbot.addWidget(plot)
    plot.resize(420, plot.sizeHint().height())
    red = SERIES_COLOURS[3]  # "held-out agreement" keeps its colour of the classifier's plot
    assert _legend_has(plot, red, tmp_path)  # an empty plot lists what will come
    for x in range(1, 5):
        plot.add_point(x, loss=1.0 / x, agreement=0.5 + 0.1 * x)
    # a small slide: no confident cells were left out, so no held-out series
    assert not _legend_has(plot, red, tmp_path)
    assert _legend_has(plot, SERIES_COLOURS[0], tmp_path)  # loss, orange
    assert _legend_has(plot, SERIES_COLOURS[2], tmp_path)  # agreement, green in every plot
    plot.add_point(5, **{"held-out agreement": 0.9})
    assert _legend_has(plot, red, tmp_path)
