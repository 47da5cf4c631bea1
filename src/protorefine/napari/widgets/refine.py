"""Dock widget "Refine and train": pseudo-labels and classifier training with a live plot.

Runs the rest of the pipeline (features and prototypes when missing,
pseudo-labels, classifier rounds, output) in a worker thread on the configured
device, plots training loss (and held-out loss and agreement) per epoch as the
epochs finish, with round boundaries and the agreement with the pseudo-labels
after each round, and shows the result as the "refined" Labels layer and the
"confidence" image layer.
"""

from __future__ import annotations

from collections.abc import Iterator

import napari
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from protorefine.napari.layer_names import CONFIDENCE, REFINED
from protorefine.napari.widgets._common import (
    SlideResults,
    WorkflowWidget,
    edited_outlines,
    load_results,
    pipeline_for,
    relay_slide_tasks,
    runnable_project,
    show_outline,
    show_results,
    slide_task_events,
    style_result_layers,
)
from protorefine.napari.widgets._plot import LinePlot
from protorefine.napari.widgets._worker import TaskContext, TaskRunner

#: Plot series: loss per epoch, held-out loss and agreement per epoch (first round, when
#: patches are held out), agreement with the pseudo-labels after each round.
PLOT_SERIES = ("loss", "held-out loss", "agreement", "held-out agreement")
PLOT_GROUPS = ("loss", "loss", "agreement", "agreement")
#: The pixel stage's plot: its self-training fit per L-BFGS iteration, slide after slide.
PIXEL_SERIES = ("loss", "agreement", "held-out agreement")
PIXEL_GROUPS = ("loss", "agreement", "agreement")


def device_text(name: str) -> str:
    """Human words for the compute device a config name resolves to, e.g. "cuda (NVIDIA H100)"."""
    from protorefine.features import resolve_device

    try:
        device = resolve_device(name)
    except Exception as exc:  # an unusable device name: say so instead of failing the widget
        return f"{name}: {exc}"
    if device.type == "cuda":
        import torch

        return f"GPU: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "GPU: Apple MPS"
    if name != "auto":
        return "CPU"
    from protorefine.features.device import gpu_left_unused

    reason = gpu_left_unused()
    return f"CPU: {reason}" if reason else "CPU (no GPU found)"


class RefineWidget(WorkflowWidget):
    """Train the patch classifier on prototype-guided pseudo-labels and show the refined annotation."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        super().__init__(napari_viewer)
        self.history: list[dict] = []

        intro = QLabel(
            "Trains a patch classifier on the prototype-guided pseudo-labels, in rounds, "
            "then turns its tumour probability into the refined outline."
        )
        intro.setWordWrap(True)
        self.device_label = QLabel(device_text("auto"))
        self.device_label.setWordWrap(True)  # a CPU-only torch on a GPU machine says why
        self.rounds = QSpinBox()
        self.rounds.setRange(1, 20)
        self.rounds.setToolTip("Rounds of re-finetuning on updated pseudo-labels (1 = train once)")
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.05, 0.95)
        self.threshold.setSingleStep(0.05)
        self.threshold.setDecimals(2)
        self.threshold.setToolTip(
            "Tumour probability a patch needs to fall inside the refined outline: lower gives "
            "a looser outline, higher a tighter one. Changing only this redraws the outline "
            "without retraining."
        )
        self.run_button = QPushButton("Refine and train")
        self.run_button.setToolTip("Pseudo-labels, classifier training and the refined outline")
        self.run_button.clicked.connect(self.run)
        self.rounds.valueChanged.connect(self._name_button)
        self.threshold.valueChanged.connect(self._name_button)
        self.runner = TaskRunner(self.state)
        #: Epoch records of the current run in order, each with its ``round`` (the plot's points).
        self.epochs: list[dict] = []
        self.plot = LinePlot(PLOT_SERIES, PLOT_GROUPS, x_label="epoch")
        #: The pixel stage's self-training curves of the current run, one record a slide.
        self.pixel_curves: list[dict] = []
        self.pixel_plot = LinePlot(PIXEL_SERIES, PIXEL_GROUPS, x_label="L-BFGS iteration")
        self.pixel_plot.setToolTip(
            "The pixel stage's self-training, slide after slide: log-loss and agreement on "
            "its training cells, and agreement with confident cells kept out of training "
            "(slides with more than it takes), per L-BFGS iteration; vertical lines start "
            "the next slide"
        )
        self.pixel_title = QLabel(
            "Pixel stage: self-training per iteration (dashed: held-out cells)"
        )

        form = QFormLayout()
        form.addRow("Device", self.device_label)
        form.addRow("Rounds", self.rounds)
        form.addRow("Outline threshold", self.threshold)
        lay = QVBoxLayout(self.body)
        lay.addWidget(intro)
        lay.addLayout(form)
        lay.addWidget(self.run_button)
        lay.addWidget(self.runner)
        lay.addWidget(QLabel("Training per epoch (dashed: held-out patches)"))
        lay.addWidget(self.plot)
        lay.addWidget(self.pixel_title)
        lay.addWidget(self.pixel_plot)
        lay.addStretch(1)
        self._clear_pixel_plot()

        self.state.project_changed.connect(self._on_project)
        self.state.results_changed.connect(self._name_button)
        self.state.slide_changed.connect(self._on_slide)
        self._on_project(self.state.project)

    def _on_slide(self, slide_id) -> None:
        """Keep the refined outline and the confidence style with the slide on screen."""
        project = self.state.project
        outline = None
        if project is not None and slide_id is not None and project.has_results(slide_id):
            outline = project.accepted_outline(slide_id)
        show_outline(self.state, outline)
        style_result_layers(self.state)

    def _on_project(self, project) -> None:
        self.plot.clear()
        self._clear_pixel_plot()
        show_outline(self.state, None)
        if project is None:
            self.rounds.setValue(3)
            return
        self.rounds.setValue(int(project.config.rounds))
        self.threshold.setValue(float(project.config.threshold))
        self._name_button()
        self.device_label.setText(device_text(project.config.device))

    def run(self, *, invalidate: str | None = None) -> bool:
        """Start pseudo-labelling, training and output; ``invalidate`` reruns from that stage."""
        project = runnable_project(self.state)
        if project is None:
            return False
        config = self._config(project)
        redraw_only = not invalidate and self._redraw_only(project, config)
        edited = edited_outlines(project)  # before pipeline_for puts the new config in place
        pipeline = pipeline_for(project, config, scheduler=self.state.scheduler)
        if not redraw_only:  # the plot keeps the training it shows when nothing retrains
            self.history = []
            self.epochs = []
            self.plot.clear()
            self._clear_pixel_plot()

        slide_id = self.state.slide_id

        def task(ctx: TaskContext) -> SlideResults:
            relay_slide_tasks(pipeline, ctx)
            if invalidate:
                pipeline.invalidate(invalidate)
            # every epoch reaches the plot (progress updates are thinned out)
            pipeline.run(
                progress=ctx.progress, cancel=ctx.cancel, on_round=ctx.send, on_epoch=ctx.send
            )
            return load_results(project, slide_id, edited_before=edited)

        return self.runner.start(
            "Refine and train",
            task,
            on_done=self._on_done,
            on_event=slide_task_events(self.state, self._on_round),
        )

    def _config(self, project):
        """The project's config with this pane's settings."""
        return project.config.replace(
            rounds=int(self.rounds.value()), threshold=round(float(self.threshold.value()), 2)
        )

    @staticmethod
    def _redraw_only(project, config, changed=(None, "output")) -> bool:
        """True when the classifier is trained and at most output settings changed."""
        from protorefine.refine.config import first_changed_stage

        if not project.stage_done("classifier"):
            return False
        return first_changed_stage(project.config, config) in changed

    def _name_button(self, *_args) -> None:
        """Say on the button when a run would only redraw the outline, not retrain."""
        project = self.state.project
        redraw = project is not None and self._redraw_only(
            project, self._config(project), changed=("output",)
        )
        self.run_button.setText("Redraw outline" if redraw else "Refine and train")

    def _on_round(self, info: object) -> None:
        """An epoch record (``epoch`` key), a round record or a slide's pixel-stage curve
        (``pixel_curve`` key) from the worker: update its plot."""
        if not isinstance(info, dict):
            return
        if "pixel_curve" in info:
            self.pixel_curves.append(dict(info))
            self.draw_pixel_plot()
            return
        # both arrive in order through one queued signal: every epoch, then its round
        (self.epochs if "epoch" in info else self.history).append(dict(info))
        self.draw_plot()

    def draw_plot(self) -> None:
        """Plot :attr:`epochs` one point per epoch, rounds marked, agreement after each round."""
        plot = self.plot
        plot.clear()
        last_of_round: dict[int | None, int] = {}
        previous = None
        for x, rec in enumerate(self.epochs, start=1):
            r = rec.get("round")
            if previous is not None and r != previous:
                plot.add_mark(x - 0.5, f"round {r}")
            previous = r
            last_of_round[r] = x
            plot.add_point(
                x,
                loss=rec.get("loss"),
                **{
                    "held-out loss": rec.get("held_out_loss"),
                    "held-out agreement": rec.get("held_out_agreement"),
                },
            )
        for rec in self.history:
            at = last_of_round.get(rec.get("round"))
            if at is not None:
                plot.add_point(at, agreement=rec.get("agreement"))

    def draw_pixel_plot(self) -> None:
        """Plot :attr:`pixel_curves`: each slide's iterations in turn, slides marked."""
        plot = self.pixel_plot
        plot.clear()
        x = 0
        for k, rec in enumerate(self.pixel_curves):
            if k and rec["points"]:
                plot.add_mark(x + 0.5, f"slide {rec['slide']}")
            for point in rec["points"]:
                x += 1
                plot.add_point(
                    x,
                    loss=point.get("loss"),
                    agreement=point.get("agreement"),
                    **{"held-out agreement": point.get("held_out_agreement")},
                )
        shown = x > 0
        self.pixel_title.setVisible(shown)
        plot.setVisible(shown)

    def _clear_pixel_plot(self) -> None:
        self.pixel_curves = []
        self.draw_pixel_plot()

    def _on_done(self, results: SlideResults) -> Iterator[None]:
        self._name_button()
        yield from show_results(self.state, results, show=(REFINED, CONFIDENCE))
