"""Patch-grid controls: patch size, resolution (pyramid level or microns per pixel), finer grid.

The grid decides what a "patch" is for every later step, so the pathologist picks it
where the features are computed, and sees how many cells of what size it gives on
the slide on screen before starting.
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import Any

from qtpy.QtCore import Signal
from qtpy.QtWidgets import QCheckBox, QComboBox, QGridLayout, QLabel, QSpinBox, QWidget

from protorefine.errors import ProtorefineError
from protorefine.slides import tissue_mask

#: Marks a slide whose tissue mask is being found.
_PENDING = "pending"
#: Microns per pixel offered when every slide of the project records its own.
MPP_CHOICES = (0.25, 0.5, 1.0, 2.0, 4.0)


class GridControls(QWidget):
    """Patch size, resolution and finer-grid switch; ``changes()`` gives the config fields."""

    #: A slide's tissue mask is ready (its path): emitted from the background thread.
    tissue_ready = Signal(str)

    def __init__(self) -> None:
        super().__init__()
        self._stride: int | None = None  # a stride set elsewhere (CLI, config.json), kept as is
        self._min_tissue: float | None = None  # the project's tissue share per cell
        # slide path -> (low-res tissue mask, downsample), or None when it could not be read;
        # found in a background thread (0.7 s on a real slide), never in the event loop
        self._tissue: dict[str, Any] = {}
        self._slide: Any = None
        self._pool = cf.ThreadPoolExecutor(max_workers=1, thread_name_prefix="protorefine-tissue")
        self.tissue_ready.connect(self._on_tissue)
        self.patch_size = QSpinBox()
        self.patch_size.setRange(16, 2048)
        self.patch_size.setSingleStep(16)
        self.patch_size.setSuffix(" px")
        self.patch_size.setToolTip("Patch size in pixels at the chosen resolution")
        self.resolution = QComboBox()
        self.resolution.setToolTip(
            "Where patches are cut: a pyramid level (valid for every slide) or a target "
            "resolution in microns per pixel (offered when every slide records its own)"
        )
        self.finer = QCheckBox("finer grid")
        self.finer.setToolTip(
            "Cells of half the patch size, each seen through the patch around it: finer "
            "outlines for 4x the feature time"
        )
        self.info = QLabel("")
        self.info.setWordWrap(True)
        self.info.setToolTip(
            "The grid this gives on the slide on screen, and how many of its cells hold "
            "tissue (the patches whose features are computed)"
        )
        self.resolution.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.resolution.setMinimumContentsLength(9)
        lay = QGridLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.patch_size, 0, 0)
        lay.addWidget(self.resolution, 0, 1)
        lay.addWidget(self.finer, 1, 0)
        lay.addWidget(self.info, 1, 1)
        lay.setColumnStretch(1, 1)

    def sync(self, project: Any, *, keep: bool = False) -> None:
        """Offer the resolutions every slide of ``project`` has and show its current grid.

        With ``keep`` the choices on screen stay (when still offered): the slide list
        changed, not the project.
        """
        if keep and self.resolution.count():
            size, finer, data = self.patch_size.value(), self.finer.isChecked(), self._current()
            self.sync(project)
            self.patch_size.setValue(size)
            self.finer.setChecked(finer)
            for index in range(self.resolution.count()):
                if tuple(self.resolution.itemData(index)) == tuple(data):
                    self.resolution.setCurrentIndex(index)
            return
        cfg = project.config
        self._min_tissue = float(cfg.tissue_threshold)
        entries = project.slides
        levels = min((e.levels for e in entries), default=1)
        choices: list[tuple[str, tuple[str, float]]] = [
            (f"level {k}" + (" (full res.)" if k == 0 else ""), ("level", k))
            for k in range(max(1, levels))
        ]
        if entries and all(e.mpp for e in entries):
            coarsest = max(e.mpp for e in entries)  # every slide must reach the resolution
            mpps = {m for m in MPP_CHOICES if m >= 0.95 * coarsest}
            if cfg.mpp is not None:
                mpps.add(float(cfg.mpp))
            choices += [(f"{m:g} µm/px", ("mpp", m)) for m in sorted(mpps)]
        current = ("mpp", float(cfg.mpp)) if cfg.mpp is not None else ("level", cfg.level or 0)
        self.resolution.blockSignals(True)
        self.resolution.clear()
        for text, data in choices:
            self.resolution.addItem(text, data)
        index = next((i for i, (_, d) in enumerate(choices) if d == current), 0)
        self.resolution.setCurrentIndex(index)
        self.resolution.blockSignals(False)
        self.patch_size.setValue(int(cfg.patch_size))
        fine = cfg.stride is not None and int(cfg.stride) < int(cfg.patch_size)
        self._stride = int(cfg.stride) if fine else None
        self.finer.setChecked(fine)

    def changes(self) -> dict[str, Any]:
        """The grid fields of a RefineConfig as the controls set them."""
        size = int(self.patch_size.value())
        kind, value = self._current()
        stride = None
        if self.finer.isChecked():
            keep = self._stride is not None and self._stride < size
            stride = self._stride if keep else max(1, size // 2)
        return {
            "patch_size": size,
            "level": int(value) if kind == "level" else None,
            "mpp": float(value) if kind == "mpp" else None,
            "stride": stride,
        }

    def _current(self) -> tuple[str, float]:
        return self.resolution.currentData() or ("level", 0)

    def show_for(self, slide: Any) -> None:
        """Say what the grid gives on ``slide``; its tissue count follows once the mask is found."""
        self._slide = slide
        self.info.setText(self.describe(slide))
        key = None if slide is None else str(slide.path)
        if key is not None and key not in self._tissue:
            self._tissue[key] = _PENDING
            self._pool.submit(self._find_tissue, slide, key)

    def _find_tissue(self, slide: Any, key: str) -> None:
        try:
            self._tissue[key] = tissue_mask(slide)
        except Exception:  # the count is a courtesy: the run itself reports a bad slide
            self._tissue[key] = None
        self.tissue_ready.emit(key)

    def _on_tissue(self, key: str) -> None:
        if self._slide is not None and str(self._slide.path) == key:
            self.info.setText(self.describe(self._slide))

    def describe(self, slide: Any) -> str:
        """What the grid gives on ``slide``: cells across and down, their size, and how many
        hold tissue once its mask is known."""
        if slide is None:
            return ""
        # imported here: protorefine.features pulls in torch (warm_up imports it in the background)
        from protorefine.features import make_grid
        from protorefine.features.grid import MIN_TISSUE

        tissue = self._tissue.get(str(slide.path))
        known = isinstance(tissue, tuple)
        min_tissue = MIN_TISSUE if self._min_tissue is None else self._min_tissue
        try:
            grid = make_grid(
                slide, tissue=tissue if known else True, min_tissue=min_tissue, **self.changes()
            )
        except ProtorefineError as exc:
            return str(exc)
        cell = f" of {grid.mpp * grid.stride:.0f} µm" if grid.mpp else ""
        text = f"{grid.cols} × {grid.rows} = {grid.rows * grid.cols:,} cells{cell}"
        if known:  # the patches whose features are computed
            text += f", {int(grid.tissue.sum()):,} on tissue"
        return text
