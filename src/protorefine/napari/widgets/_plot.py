"""A tiny live line plot (QPainter) of training loss and agreement per round; no matplotlib."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

#: Colours of the series, in the order they are added.
SERIES_COLOURS = ("#ff7f0e", "#1f9bde", "#2ca02c", "#d62728")


class LinePlot(QWidget):
    """Draws a few named series against the round number, each scaled to its own range.

    Loss and agreement have different units, so each line spans the plot height
    between its own minimum and maximum; the legend shows the latest value.
    """

    def __init__(self, names: tuple[str, ...] = ("loss", "agreement"), parent=None) -> None:
        super().__init__(parent)
        self.names = tuple(names)
        self.series: dict[str, list[float]] = {n: [] for n in self.names}
        self.setMinimumHeight(110)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Training loss and agreement with the pseudo-labels, per round")

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        """Preferred size: wide and short, to sit under the buttons."""
        return QSize(260, 120)

    def clear(self) -> None:
        """Forget all points."""
        for values in self.series.values():
            values.clear()
        self.update()

    def add_point(self, **values: float) -> None:
        """Append one point per named series (missing names repeat nothing)."""
        for name, value in values.items():
            if name in self.series and value is not None and math.isfinite(float(value)):
                self.series[name].append(float(value))
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        """Draw axes, one polyline per series and a legend with the latest values."""
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        fg = pal.windowText().color()
        rect = QRectF(self.rect()).adjusted(30, 8, -8, -20)
        p.setPen(QPen(fg, 1))
        p.drawLine(rect.bottomLeft(), rect.bottomRight())
        p.drawLine(rect.bottomLeft(), rect.topLeft())
        n = max((len(v) for v in self.series.values()), default=0)
        p.drawText(
            QRectF(rect.left(), rect.bottom() + 2, rect.width(), 16),
            int(Qt.AlignmentFlag.AlignHCenter),
            "round" if n else "no training yet",
        )
        p.drawText(QRectF(0, rect.bottom() - 8, 26, 16), int(Qt.AlignmentFlag.AlignRight), "1")
        if n > 1:
            p.drawText(
                QRectF(rect.right() - 30, rect.bottom() + 2, 30, 16),
                int(Qt.AlignmentFlag.AlignRight),
                str(n),
            )
        legend_y = rect.top() + 2
        for i, name in enumerate(self.names):
            values = self.series[name]
            colour = QColor(SERIES_COLOURS[i % len(SERIES_COLOURS)])
            if values:
                lo, hi = min(values), max(values)
                span = hi - lo if hi > lo else 1.0
                path = QPainterPath()
                for k, v in enumerate(values):
                    x = rect.left() + (rect.width() * k / (n - 1) if n > 1 else rect.width() / 2)
                    y = rect.bottom() - (v - lo) / span * rect.height() * 0.9 - rect.height() * 0.05
                    if k == 0:
                        path.moveTo(x, y)
                    else:
                        path.lineTo(x, y)
                    p.setPen(QPen(colour, 1))
                    p.setBrush(colour)
                    p.drawEllipse(QPointF(x, y), 2.5, 2.5)
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.setPen(QPen(colour, 2))
                p.drawPath(path)
                label = f"{name} {values[-1]:.3g}"
            else:
                label = name
            p.setPen(QPen(colour, 2))
            p.drawLine(
                QPointF(rect.right() - 150, legend_y + 6), QPointF(rect.right() - 134, legend_y + 6)
            )
            p.setPen(QPen(fg, 1))
            p.drawText(
                QRectF(rect.right() - 130, legend_y - 2, 130, 16),
                int(Qt.AlignmentFlag.AlignLeft),
                label,
            )
            legend_y += 16
        p.end()
