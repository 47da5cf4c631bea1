"""A tiny live line plot (QPainter) of training curves per epoch, rounds marked; no matplotlib."""

from __future__ import annotations

import math
from collections.abc import Sequence

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QFontMetrics, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

#: Colours of the series, in the order they are added.
SERIES_COLOURS = ("#ff7f0e", "#1f9bde", "#2ca02c", "#d62728")
#: A series name keeps its colour in every plot (the classifier's and the pixel stage's).
NAMED_COLOURS = {"loss": 0, "held-out loss": 1, "agreement": 2, "held-out agreement": 3}
#: Pen styles per series: held-out curves dashed so they read apart from the training ones.
_DASHED = ("held-out",)


class LinePlot(QWidget):
    """Draws named series of ``(x, y)`` points, with vertical marks (e.g. round boundaries).

    Series of one ``group`` share a y range (loss and held-out loss on one scale,
    agreements on another); the first group's range is written on the left axis,
    the second's on the right. The legend above the plot shows each latest value.
    """

    def __init__(
        self,
        names: Sequence[str] = ("loss", "agreement"),
        groups: Sequence[str] | None = None,
        *,
        x_label: str = "epoch",
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.names = tuple(names)
        self.groups = tuple(groups) if groups is not None else self.names
        if len(self.groups) != len(self.names):
            raise ValueError("one group per series name")
        self.x_label = x_label
        self.series: dict[str, list[tuple[float, float]]] = {n: [] for n in self.names}
        self.marks: list[tuple[float, str]] = []
        self.setMinimumHeight(self._legend_height() + 150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip(
            "Training loss per epoch (held-out: patches kept out of training), "
            "agreement with the pseudo-labels; vertical lines start a new round"
        )

    def sizeHint(self) -> QSize:  # noqa: N802 (Qt API)
        """Preferred size: wide and short, to sit under the buttons."""
        return QSize(320, self._legend_height() + 160)

    def _legend_height(self) -> int:
        return 16 * math.ceil(len(self.names) / 2) + 4

    def clear(self) -> None:
        """Forget all points and marks."""
        for values in self.series.values():
            values.clear()
        self.marks.clear()
        self.update()

    def add_point(self, x: float | None = None, **values: float | None) -> None:
        """Append one point at ``x`` (default: after the last point) to each named series."""
        if x is None:
            x = float(max((len(v) for v in self.series.values()), default=0) + 1)
        for name, value in values.items():
            if name in self.series and value is not None and math.isfinite(float(value)):
                self.series[name].append((float(x), float(value)))
        self.update()

    def add_mark(self, x: float, label: str = "") -> None:
        """Draw a vertical line at ``x`` with a short ``label`` (e.g. where round 2 starts)."""
        self.marks.append((float(x), label))
        self.update()

    def count(self, name: str) -> int:
        """How many points series ``name`` holds."""
        return len(self.series[name])

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        """Draw the legend, axes with the value ranges, marks and one polyline per series."""
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fg = self.palette().windowText().color()
        faint = QColor(fg)
        faint.setAlpha(110)
        metrics = QFontMetrics(self.font())
        legend_h = self._legend_height()
        rect = QRectF(self.rect()).adjusted(44, legend_h + 6, -44, -20)
        self._draw_legend(p, fg, legend_h)

        points = [pt for values in self.series.values() for pt in values]
        p.setPen(QPen(fg, 1))
        p.drawLine(rect.bottomLeft(), rect.bottomRight())
        p.drawLine(rect.bottomLeft(), rect.topLeft())
        p.drawLine(rect.bottomRight(), rect.topRight())
        if not points:
            p.drawText(rect, int(Qt.AlignmentFlag.AlignCenter), "no training yet")
            p.end()
            return
        x_lo = min(x for x, _ in points)
        x_hi = max(x for x, _ in points)
        x_span = x_hi - x_lo

        def px(x: float) -> float:
            return rect.left() + (
                rect.width() * (x - x_lo) / x_span if x_span > 0 else rect.width() / 2
            )

        # x axis: first and last epoch, and what it counts
        bottom = QRectF(rect.left() - 20, rect.bottom() + 2, rect.width() + 40, 16)
        p.drawText(bottom, int(Qt.AlignmentFlag.AlignHCenter), self.x_label)
        p.drawText(bottom, int(Qt.AlignmentFlag.AlignLeft), f"{x_lo:g}")
        if x_span > 0:
            p.drawText(bottom, int(Qt.AlignmentFlag.AlignRight), f"{x_hi:g}")

        # y ranges: the first group's on the left, the second's on the right, in its colour
        ranges = self._group_ranges()
        group_names = list(dict.fromkeys(self.groups))
        for side, group in zip(("left", "right"), group_names[:2], strict=False):
            lo, hi = ranges[group]
            colour = self._colour(self.groups.index(group))
            p.setPen(QPen(colour, 1))
            x0 = 0.0 if side == "left" else rect.right() + 3
            align = Qt.AlignmentFlag.AlignRight if side == "left" else Qt.AlignmentFlag.AlignLeft
            width = rect.left() - 3 if side == "left" else self.width() - x0
            for value, y in ((hi, rect.top()), (lo, rect.bottom())):
                text = metrics.elidedText(f"{value:.2g}", Qt.TextElideMode.ElideRight, int(width))
                p.drawText(
                    QRectF(x0, y - 8, width, 16), int(align | Qt.AlignmentFlag.AlignVCenter), text
                )

        # round marks
        for x, _label in self.marks:
            if x_span <= 0 or not x_lo <= x <= x_hi:
                continue
            pen = QPen(faint, 1, Qt.PenStyle.DashLine)
            p.setPen(pen)
            p.drawLine(QPointF(px(x), rect.top()), QPointF(px(x), rect.bottom()))

        for i, name in enumerate(self.names):
            values = self.series[name]
            if not values:
                continue
            colour = self._colour(i)
            lo, hi = ranges[self.groups[i]]
            span = hi - lo if hi > lo else 1.0
            path = QPainterPath()
            p.setPen(QPen(colour, 1))
            p.setBrush(colour)
            for k, (x, v) in enumerate(values):
                y = rect.bottom() - (v - lo) / span * rect.height() * 0.9 - rect.height() * 0.05
                point = QPointF(px(x), y)
                if k == 0:
                    path.moveTo(point)
                else:
                    path.lineTo(point)
                p.drawEllipse(point, 2.2, 2.2)
            p.setBrush(Qt.BrushStyle.NoBrush)
            style = Qt.PenStyle.DashLine if name.startswith(_DASHED) else Qt.PenStyle.SolidLine
            p.setPen(QPen(colour, 1.6, style))
            p.drawPath(path)

        # round labels on top of the curves, on a backing box, beside their line
        back = QColor(self.palette().window().color())
        back.setAlpha(210)
        for x, label in self.marks:
            if not label or x_span <= 0 or not x_lo <= x <= x_hi:
                continue
            w = metrics.horizontalAdvance(label) + 6
            left = px(x) + 2 if px(x) + 2 + w < rect.right() else px(x) - 2 - w
            box = QRectF(left, rect.top() + 1, w, metrics.height())
            p.fillRect(box, back)
            p.setPen(QPen(fg, 1))
            p.drawText(box, int(Qt.AlignmentFlag.AlignCenter), label)
        p.end()

    def _group_ranges(self) -> dict[str, tuple[float, float]]:
        """(min, max) of the values of each group's series."""
        out: dict[str, tuple[float, float]] = {}
        for name, group in zip(self.names, self.groups, strict=True):
            ys = [v for _, v in self.series[name]]
            if not ys:
                continue
            lo, hi = min(ys), max(ys)
            if group in out:
                lo, hi = min(lo, out[group][0]), max(hi, out[group][1])
            out[group] = (lo, hi)
        for group in self.groups:
            out.setdefault(group, (0.0, 1.0))
        return out

    def _colour(self, i: int) -> QColor:
        """Series ``i``'s colour: its name's (:data:`NAMED_COLOURS`), else by position."""
        return QColor(SERIES_COLOURS[NAMED_COLOURS.get(self.names[i], i) % len(SERIES_COLOURS)])

    def _draw_legend(self, p: QPainter, fg: QColor, height: int) -> None:
        """Two columns of ``[line] name latest-value`` above the plot: the series that have
        points (a series a run never fills, e.g. a held-out one, is not listed), or all of
        them while the plot is empty."""
        col_w = (self.width() - 16) / 2
        listed = [i for i, name in enumerate(self.names) if self.series[name]]
        for slot, i in enumerate(listed or range(len(self.names))):
            name = self.names[i]
            colour = self._colour(i)
            x = 8 + (slot % 2) * col_w
            y = 2 + (slot // 2) * 16
            style = Qt.PenStyle.DashLine if name.startswith(_DASHED) else Qt.PenStyle.SolidLine
            p.setPen(QPen(colour, 2, style))
            p.drawLine(QPointF(x, y + 8), QPointF(x + 18, y + 8))
            values = self.series[name]
            label = f"{name} {values[-1][1]:.3g}" if values else name
            p.setPen(QPen(fg, 1))
            p.drawText(
                QRectF(x + 22, y, col_w - 24, 16),
                int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                label,
            )
