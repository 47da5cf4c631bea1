"""How live the napari window stays while the workflow widgets run (event-loop stalls, cancel latency).

Run under a display (or ``xvfb-run -a``)::

    xvfb-run -a .venv/bin/python benchmarks/gui_responsiveness.py [--size 1024] [--slides 2]

A 10 ms QTimer records the longest gap between ticks (the longest time the
window could not repaint or take a click) while each step runs: the Prototypes
run, the Refine and train run, a prototype relabel, and a retrain with
corrections. "worker" is the longest wall-clock stall while the worker thread
computes; "+display" runs until the results are on screen (first runs fill the
hidden placeholder layers made when the slide was shown); "own" is the longest
stall counting only the time this process ran (CPU time over the gap), which
leaves out stalls of a machine shared with other jobs. Then it times switching
slides (image, outline and stored result layers added at once, then the missing
placeholders one per event-loop turn) and a cancel during classifier training.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def build_project(folder: Path, size: int, n_slides: int):
    """Synthetic OME-Zarr slides with dilated-truth coarse outlines in a fresh project."""
    from protorefine.annotations import vectorize
    from protorefine.project import Project
    from protorefine.refine.config import RefineConfig
    from protorefine.slides import convert_to_ome_zarr
    from protorefine.synthetic import synthetic_slide

    config = RefineConfig(encoder="colour-texture", patch_size=32, device="cpu", rounds=2)
    project = Project.create(folder / "project", config)
    for i in range(n_slides):
        slide, truth, ds = synthetic_slide((size, size), seed=i + 3, tile=256)
        slide.name = f"bench{i}"
        path = convert_to_ome_zarr(slide, folder / f"bench{i}.zarr")
        coarse = vectorize(truth, ds)
        for ann in coarse.annotations:
            ann.geometry = ann.geometry.buffer(40).simplify(12)
        entry = project.add_slide(path)
        project.set_coarse(entry.id, coarse)
    return project


class Meter:
    """Longest interval between 10 ms timer ticks, split at the moment the worker ends."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self.timer = QTimer()
        self.timer.setInterval(10)
        self.timer.timeout.connect(self._tick)
        self.worker_gap = 0.0
        self.shown_gap = 0.0
        self.own_gap = 0.0
        self.computing = True
        self.last = time.perf_counter()
        self.last_cpu = time.process_time()

    def _tick(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        gap = now - self.last
        own = min(gap, cpu - self.last_cpu)  # part of the stall this process was running
        self.last, self.last_cpu = now, cpu
        if self.computing:
            self.worker_gap = max(self.worker_gap, gap)
        self.shown_gap = max(self.shown_gap, gap)
        self.own_gap = max(self.own_gap, own)

    def measure_switch(self, state, slide_id: str) -> dict:
        """Show ``slide_id`` from the event loop and wait until its placeholders exist."""
        from qtpy.QtCore import QTimer

        from protorefine.napari.widgets.unattended import process_events

        self.computing = False
        self.last, self.last_cpu = time.perf_counter(), time.process_time()
        self.timer.start()
        t0 = time.perf_counter()
        QTimer.singleShot(0, lambda: state.show_slide(slide_id))
        process_events(0.1)
        while state.placeholders_pending:
            process_events(0.02)
        seconds = time.perf_counter() - t0
        process_events(0.3)
        self.timer.stop()
        return {
            "seconds": seconds,
            "worker_ms": 0.0,
            "shown_ms": self.shown_gap * 1000,
            "own_ms": self.own_gap * 1000,
            "outcome": "done",
        }

    def measure(self, runner, start) -> dict:
        """Run ``start()`` and wait for ``runner`` with the event loop live; return the stalls."""
        from protorefine.napari.widgets.unattended import wait_for

        def computed(*_):
            self.computing = False

        runner.computed.connect(computed)
        self.last, self.last_cpu = time.perf_counter(), time.process_time()
        self.timer.start()
        t0 = time.perf_counter()
        if not start():
            raise SystemExit("the step could not start")
        wait_for(runner)
        self.timer.stop()
        runner.computed.disconnect(computed)
        return {
            "seconds": time.perf_counter() - t0,
            "worker_ms": self.worker_gap * 1000,
            "shown_ms": self.shown_gap * 1000,
            "own_ms": self.own_gap * 1000,
            "outcome": runner.last_outcome,
        }


def main() -> None:
    """Build the cohort, drive the widgets, print one row per step."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="slide side in pixels")
    parser.add_argument("--slides", type=int, default=2)
    args = parser.parse_args()

    import napari

    from protorefine.napari.state import get_state
    from protorefine.napari.widgets._common import WARMED
    from protorefine.napari.widgets.prototypes import PrototypesWidget
    from protorefine.napari.widgets.refine import RefineWidget
    from protorefine.napari.widgets.review import ReviewWidget
    from protorefine.napari.widgets.unattended import process_events, wait_for

    folder = Path(tempfile.mkdtemp(prefix="protorefine-gui-bench-"))
    project = build_project(folder, args.size, args.slides)
    viewer = napari.Viewer(show=True)
    state = get_state(viewer)
    protos, refine, review = PrototypesWidget(viewer), RefineWidget(viewer), ReviewWidget(viewer)
    for widget, name in ((protos, "Prototypes"), (refine, "Refine"), (review, "Review")):
        viewer.window.add_dock_widget(widget, name=name)
    state.set_project(project)
    state.show_slide(project.slides[0].id)
    WARMED.wait(300)
    deadline = time.monotonic() + 60
    while state.placeholders_pending and time.monotonic() < deadline:
        process_events(0.05)
    process_events(0.5)
    n = sum(int(project.grid(s.id).tissue.sum()) for s in project.slides)
    print(
        f"{args.slides} slides of {args.size}x{args.size}, {n} tissue patches, colour-texture, CPU"
    )
    rows = []
    rows.append(("prototypes (first run)", Meter().measure(protos.runner, protos.run)))
    rows.append(("refine and train (first run)", Meter().measure(refine.runner, refine.run)))
    protos.table.selectRow(0)
    rows.append(
        (
            "prototype relabel",
            Meter().measure(protos.runner, lambda: protos.mark_selected("tumour")),
        )
    )
    refined = np.asarray(state.layer("refined").data)
    rr, cc = np.nonzero(refined > 0)
    review.paint_cells(rr[:10], cc[:10], 1)
    rows.append(("retrain with corrections", Meter().measure(review.runner, review.retrain)))
    second = project.slides[1].id if len(project.slides) > 1 else project.slides[0].id
    rows.append((f"switch to slide {second}", Meter().measure_switch(state, second)))
    rows.append(
        (
            f"switch back to {project.slides[0].id}",
            Meter().measure_switch(state, project.slides[0].id),
        )
    )
    print(f"{'step':30s} {'seconds':>7s} {'worker ms':>9s} {'+display ms':>11s} {'own ms':>7s}")
    for name, r in rows:
        print(
            f"{name:30s} {r['seconds']:7.1f} {r['worker_ms']:9.0f} {r['shown_ms']:11.0f}"
            f" {r['own_ms']:7.0f}  {r['outcome']}"
        )

    # cancel latency during classifier training
    project.set_config(project.config.replace(epochs=600, samples_per_epoch=16384))
    refine.run(invalidate="classifier")
    deadline = time.monotonic() + 120
    while "classifier" not in refine.runner.status.text() and time.monotonic() < deadline:
        process_events(0.05)
    process_events(0.2)
    refine.runner.cancel()
    wait_for(refine.runner)
    if refine.runner.cancel_requested_at is None:
        print("cancel during training: training ended before the cancel was sent")
    else:
        latency = refine.runner.finished_at - refine.runner.cancel_requested_at
        print(
            f"cancel during training: stopped after {latency * 1000:.0f} ms"
            f" ({refine.runner.last_outcome})"
        )
    viewer.close()


if __name__ == "__main__":
    main()
