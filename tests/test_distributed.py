"""Refining on a dask.distributed cluster (``--scheduler``): same outlines as one machine,
a worker killed mid-run survived, progress and report per slide, bad addresses refused."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from distributed import LocalCluster  # noqa: E402
from distributed.diagnostics.plugin import WorkerPlugin  # noqa: E402

import protorefine.project.cluster as cluster_mod  # noqa: E402
import protorefine.project.pipeline as pipeline_mod  # noqa: E402
import protorefine.refine.steps as steps_mod  # noqa: E402
from protorefine.annotations import rasterize, read_geojson  # noqa: E402
from protorefine.cli import main  # noqa: E402
from protorefine.errors import ProtorefineError  # noqa: E402
from protorefine.project import Project  # noqa: E402
from protorefine.project.cluster import ClusterPipeline, connect  # noqa: E402
from protorefine.project.pipeline import Pipeline  # noqa: E402
from protorefine.project.stages import OUTLINE_FILE  # noqa: E402
from protorefine.refine import RefineConfig  # noqa: E402
from refine_synth import dice, write_slide_case  # noqa: E402

SIZE = 512
CFG = RefineConfig(
    patch_size=64, encoder="colour-texture", device="cpu", epochs=4, rounds=2, pixel_level=False
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> list[dict]:
    """Three small synthetic slides with their coarse outlines."""
    root = tmp_path_factory.mktemp("cohort")
    cases = []
    for i, seed in enumerate((3, 4, 5)):
        case = write_slide_case(root / f"c{i}", size=SIZE, seed=seed)
        slide = case["slide"].with_name(f"s{i}.png")
        coarse = case["coarse"].with_name(f"s{i}.geojson")
        case["slide"].rename(slide)
        case["coarse"].rename(coarse)
        case["slide"], case["coarse"], case["id"] = slide, coarse, f"s{i}"
        cases.append(case)
    return cases


def new_project(folder: Path, cohort, config: RefineConfig = CFG) -> Project:
    project = Project.create(folder, config)
    for case in cohort:
        project.add_slide(case["slide"])
        project.set_coarse(case["id"], read_geojson(case["coarse"]))
    return project


@pytest.fixture(scope="module")
def cluster():
    """A LocalCluster of 2 worker processes (1 thread each), connected as an address."""
    lc = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        with connect(lc.scheduler_address) as c:
            yield c
    finally:
        cluster_mod.close_shared()  # napari's connections to it
        lc.close()


@pytest.fixture(scope="module")
def one_machine(tmp_path_factory, cohort) -> Project:
    project = new_project(tmp_path_factory.mktemp("local") / "p", cohort)
    Pipeline(project).run()
    return project


def outline_masks(project: Project, stage: str) -> dict[str, np.ndarray]:
    """Each slide's outline of ``stage`` as a full-resolution mask."""
    return {
        s.id: rasterize(
            read_geojson(project.stage_file(stage, OUTLINE_FILE, s.id), allow_empty=True),
            (SIZE, SIZE),
            1,
        )
        for s in project.slides
    }


def assert_same_outlines(a: Project, b: Project, stage: str = "output") -> None:
    ma, mb = outline_masks(a, stage), outline_masks(b, stage)
    assert set(ma) == set(mb) == {"s0", "s1", "s2"}
    for sid in ma:
        assert ma[sid].any(), sid
        assert dice(ma[sid], mb[sid]) == 1.0, sid


def no_local_work(monkeypatch) -> None:
    """Reading patches, stain statistics or a slide's local prototypes on the client fails:
    that work is the workers' (the workers are other processes, which this does not reach)."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("per-slide work ran on the client")

    monkeypatch.setattr(pipeline_mod, "extract_features", refuse)
    monkeypatch.setattr(pipeline_mod, "cell_sums", refuse)
    monkeypatch.setattr(pipeline_mod, "dense_features", refuse)
    monkeypatch.setattr(Project, "compute_grid", refuse)
    monkeypatch.setattr(pipeline_mod, "slide_prototypes_step", refuse)
    monkeypatch.setattr(steps_mod, "slide_prototypes_step", refuse)


def test_cluster_run_equals_one_machine(cluster, one_machine, cohort, tmp_path, monkeypatch):
    project = new_project(tmp_path / "p", cohort)
    no_local_work(monkeypatch)
    seen, tasks = [], []
    pipe = ClusterPipeline(project, cluster)
    pipe.on_task = tasks.append
    pipe.run(progress=lambda done, total, msg: seen.append((done, total, msg)))
    assert_same_outlines(one_machine, project)
    workers = set(cluster.workers())
    # each slide task's state, as napari's slide list shows it: queued, (on a worker), done
    for sid in ("s0", "s1", "s2"):
        states = [t for t in tasks if t.step == "features" and t.slide_id == sid]
        assert states[0].state == "queued" and states[-1].state == "done"
        assert {t.state for t in states[1:-1]} <= {"running"}
        assert states[-1].worker in workers and states[-1].seconds >= 0
        assert states[-1].describe().startswith("features: ") and " s on " in states[-1].describe()
    for stage in ("grid", "features", "prototypes", "output"):
        runs = pipe.slide_runs[stage]
        assert set(runs) == {"s0", "s1", "s2"}
        assert all(r["worker"] in workers and r["seconds"] >= 0 for r in runs.values())
    # progress counts slides done across the workers
    done = [d for d, total, msg in seen if msg.startswith("features: s") and total == 3]
    assert done == [1, 2, 3]
    # a second run finds every stage done: nothing is sent to the workers
    again = ClusterPipeline(Project.open(project.folder), cluster)
    again.run()
    assert again.slide_runs == {}


def test_a_cluster_connection_leaves_dask_elsewhere_alone(cluster):
    # napari shows slides as dask arrays: they must not be computed on (or, once it has
    # closed, fail for want of) the cluster a run connected to
    import dask
    import dask.array as da

    assert dask.config.get("scheduler", None) != "dask.distributed"
    with connect("local:1") as other:
        assert other.client is not None
        assert int(da.ones((8, 8), chunks=4).sum().compute()) == 64
    assert int(da.ones((8, 8), chunks=4).sum().compute()) == 64


class KillOnFirstFeatures(WorkerPlugin):
    """Kills its worker process (as the OOM killer would) when the first slide's features
    task starts executing anywhere; a flag file makes it happen once."""

    def __init__(self, flag: str) -> None:
        self.flag = flag

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and str(key).startswith("protorefine-features-"):
            try:
                fd = os.open(self.flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.write(fd, str(key).encode())
            os.close(fd)
            os._exit(1)


def test_a_worker_killed_mid_run_is_survived(cluster, one_machine, cohort, tmp_path):
    flag = tmp_path / "killed"
    cluster.client.register_plugin(KillOnFirstFeatures(str(flag)), name="kill-once")
    try:
        project = new_project(tmp_path / "p", cohort)
        pipe = ClusterPipeline(project, cluster)
        pipe.run()
    finally:
        cluster.client.unregister_worker_plugin("kill-once")
    assert flag.exists(), "no worker was killed"
    killed = flag.read_text()  # the task that was running when its worker died
    assert killed.startswith("protorefine-features-")
    assert_same_outlines(one_machine, project)
    assert set(pipe.slide_runs["features"]) == {"s0", "s1", "s2"}
    # no half-written file was left in the project
    leftovers = [p for p in project.folder.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_cli_refine_on_a_scheduler_address(cluster, cohort, one_machine, tmp_path):
    out = tmp_path / "out"
    args = ["refine", *(str(c["slide"]) for c in cohort), "--coarse"]
    args += [str(c["coarse"]) for c in cohort]
    args += ["--out", str(out), "--patch-size", "64", "--encoder", "colour-texture"]
    args += ["--device", "cpu", "--no-pixel-stage", "--scheduler", cluster.scheduler]
    # the one-machine run's training settings, so the outlines can be compared
    project = new_project(out / "project", cohort)
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["scheduler"]["address"] == cluster.scheduler
    assert set(report["scheduler"]["workers"]) == set(cluster.workers())
    for sid in ("s0", "s1", "s2"):
        features = report["slides"][sid]["workers"]["features"]
        assert features["worker"] in report["scheduler"]["workers"]
        assert features["seconds"] > 0
    assert_same_outlines(one_machine, Project.open(project.folder))


@pytest.mark.slow
def test_cli_refine_on_a_scheduler_and_workers_started_with_dasks_own_cli(
    cohort, one_machine, tmp_path
):
    """`dask scheduler` and `dask worker` as a site starts them (other processes, a
    scheduler file), then `protorefine refine --scheduler FILE`: the one-machine outlines."""
    import subprocess
    import sys
    import time

    dask_cli = Path(sys.executable).with_name("dask")
    if not dask_cli.exists():
        pytest.skip("no dask command beside this Python")
    file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    logs = (tmp_path / "scheduler.log").open("w"), (tmp_path / "worker.log").open("w")
    started = [
        subprocess.Popen(
            [
                str(dask_cli),
                "scheduler",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(file),
            ],
            stdout=logs[0],
            stderr=subprocess.STDOUT,
            env=env,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert file.exists(), (tmp_path / "scheduler.log").read_text()
        started.append(
            subprocess.Popen(
                [str(dask_cli), "worker", "--scheduler-file", str(file), "--nworkers", "2"]
                + ["--nthreads", "1", "--no-dashboard"],
                stdout=logs[1],
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        out = tmp_path / "out"
        args = ["refine", *(str(c["slide"]) for c in cohort), "--coarse"]
        args += [str(c["coarse"]) for c in cohort]
        args += ["--out", str(out), "--patch-size", "64", "--encoder", "colour-texture"]
        args += ["--device", "cpu", "--no-pixel-stage", "--scheduler", str(file)]
        project = new_project(out / "project", cohort)
        assert main(args) == 0  # waits for the workers to join
        report = json.loads((out / "report.json").read_text())
        workers = report["scheduler"]["workers"]
        assert 1 <= len(workers) <= 2  # the run starts once the first worker has joined
        ran = {report["slides"][sid]["workers"]["features"]["worker"] for sid in ("s0", "s1", "s2")}
        assert ran <= set(workers)
        assert_same_outlines(one_machine, Project.open(project.folder))
    finally:
        cluster_mod.close_shared()
        for proc in reversed(started):
            proc.terminate()
        for proc in reversed(started):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()


def test_without_a_scheduler_the_report_says_so(one_machine, cohort, tmp_path):
    out = tmp_path / "out"
    new_project(out / "project", cohort)
    args = ["refine", str(cohort[0]["slide"]), "--coarse", str(cohort[0]["coarse"])]
    args += ["--out", str(out), "--patch-size", "64", "--encoder", "colour-texture"]
    args += ["--device", "cpu", "--no-pixel-stage"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["scheduler"] is None and "workers" not in report["slides"]["s0"]


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("tcp://127.0.0.1:1", "no dask scheduler answers there"),
        ("no-such-scheduler.json", "not a scheduler address"),
        ("local:0", "a LocalCluster needs at least 1 worker"),
    ],
)
def test_a_bad_scheduler_address_is_one_line(address, says, cohort, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cluster_mod, "CONNECT_TIMEOUT_S", 1)
    out = tmp_path / "out"
    args = ["refine", str(cohort[0]["slide"]), "--coarse", str(cohort[0]["coarse"])]
    args += ["--out", str(out), "--scheduler", address]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("protorefine: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err)
    assert f"--scheduler {address}: {says}" in errors[0]
    assert not (out / "project").exists()  # refused before the project was made


def test_a_scheduler_file_is_read_and_a_damaged_one_is_one_line(cluster, tmp_path):
    good = tmp_path / "scheduler.json"
    good.write_text(json.dumps({"type": "Scheduler", "address": cluster.scheduler}))
    with connect(str(good)) as c:
        assert c.workers() == cluster.workers()
    bad = tmp_path / "damaged.json"
    bad.write_text("{not json")
    with pytest.raises(ProtorefineError, match=r"damaged\.json: not a dask scheduler file"):
        connect(str(bad), timeout=1)
    bad.write_text("{}")
    with pytest.raises(ProtorefineError, match=r"damaged\.json: not a dask scheduler file"):
        connect(str(bad), timeout=1)


@pytest.mark.slow
def test_cluster_run_with_the_pixel_stage_equals_one_machine(
    cluster, cohort, tmp_path, monkeypatch
):
    cfg = CFG.replace(pixel_level=True)
    local = new_project(tmp_path / "local", cohort, cfg)
    Pipeline(local).run()
    project = new_project(tmp_path / "cluster", cohort, cfg)
    # dense features, known cells, self-training and tracing run on the workers; the client
    # fits the cohort model from their summaries and stores what they send back
    no_local_work(monkeypatch)

    def refuse(*_args, **_kwargs):
        raise AssertionError("the pixel stage's per-slide work ran on the client")

    for name in ("prepare_slide", "refine_slide", "pixel_outline"):
        monkeypatch.setattr(pipeline_mod, name, refuse)
    seen = []
    pipe = ClusterPipeline(project, cluster)
    pipe.run(progress=lambda done, total, msg: seen.append((done, total, msg)))
    workers = set(cluster.workers())
    for record in ("pixels", "pixels-outline"):
        runs = pipe.slide_runs[record]
        assert set(runs) == {"s0", "s1", "s2"}
        assert all(r["worker"] in workers for r in runs.values())
        # the client's wait on the workers, within the stage's time (the central share)
        assert 0 < pipe.task_seconds[record] < pipe.times["pixels"]
    assert [d for d, t, m in seen if m.startswith("pixels: s") and t == 3] == [1, 2, 3] * 2
    assert_same_outlines(local, project, "pixels")
    # the stored maps are the one-machine run's, to one float16 step (the workers' thread
    # counts change the order of floating-point sums)
    for sid in ("s0", "s1", "s2"):
        a, b = local.pixel_probability(sid), project.pixel_probability(sid)
        assert a is not None and b is not None, sid
        assert np.allclose(a[0], b[0], atol=1e-3), sid


@pytest.mark.gui
def test_napari_runs_on_the_scheduler_set_in_the_project_pane(
    make_napari_viewer, qtbot, cluster, cohort, tmp_path, monkeypatch
):
    from protorefine.napari.state import get_state
    from protorefine.napari.widgets.project import TASK_COLUMN, ProjectWidget
    from protorefine.napari.widgets.prototypes import PrototypesWidget

    viewer = make_napari_viewer()
    pane, protos = ProjectWidget(viewer), PrototypesWidget(viewer)
    state = get_state(viewer)
    project = new_project(tmp_path / "p", cohort)
    state.set_project(project)
    assert pane.table.isColumnHidden(TASK_COLUMN)  # no cluster, no cluster column
    pane.scheduler.setText(f"  {cluster.scheduler} ")  # typed, then Enter
    pane.scheduler.editingFinished.emit()
    assert state.scheduler == cluster.scheduler
    assert not pane.table.isColumnHidden(TASK_COLUMN)
    no_local_work(monkeypatch)  # the run succeeds only if the workers did the slides' work
    shown: dict[str, list[str]] = {}
    state.slide_task.connect(lambda t: shown.setdefault(t.slide_id, []).append(t.describe()))
    with qtbot.waitSignal(protos.runner.finished, timeout=120_000):
        assert protos.run() is True
    assert protos.runner.last_outcome == "done", protos.runner.last_message
    assert project.stage_done("pseudo_labels")
    # each slide's row followed its tasks: queued, then done on a worker, stage by stage
    workers = [w.removeprefix("tcp://") for w in cluster.workers()]
    rows = {pane.table.item(r, 0).text(): r for r in range(pane.table.rowCount())}
    assert set(shown) == set(rows) == {"s0", "s1", "s2"}
    for sid, row in rows.items():
        assert shown[sid][0] == "grid: queued" and "features: queued" in shown[sid]
        assert "prototypes: queued" in shown[sid]
        last = pane.table.item(row, TASK_COLUMN).text()
        assert last == shown[sid][-1] and last.startswith("prototypes: ")
        assert any(last.endswith(f" on {w}") for w in workers), last
    # back to this machine: the field cleared, the next run is a plain one
    pane.set_scheduler("")
    assert state.scheduler == "" and pane.scheduler.text() == ""
    assert pane.table.isColumnHidden(TASK_COLUMN)


@pytest.mark.gui
def test_napari_a_bad_scheduler_is_the_runs_one_line_error(
    make_napari_viewer, qtbot, cohort, tmp_path, monkeypatch
):
    from protorefine.napari.state import get_state
    from protorefine.napari.widgets.project import ProjectWidget
    from protorefine.napari.widgets.prototypes import PrototypesWidget

    monkeypatch.setattr(cluster_mod, "CONNECT_TIMEOUT_S", 1)
    viewer = make_napari_viewer()
    pane, protos = ProjectWidget(viewer), PrototypesWidget(viewer)
    get_state(viewer).set_project(new_project(tmp_path / "p", cohort))
    pane.set_scheduler("tcp://127.0.0.1:1")
    with qtbot.waitSignal(protos.runner.finished, timeout=60_000):
        assert protos.run() is True
    assert protos.runner.last_outcome != "done"
    assert "--scheduler tcp://127.0.0.1:1: no dask scheduler answers there" in (
        protos.runner.last_message
    )


def test_cancel_stops_the_run_and_a_rerun_resumes_from_the_written_slides(
    cluster, one_machine, cohort, tmp_path
):
    from protorefine.errors import CancelledError

    project = new_project(tmp_path / "p", cohort)
    done: list[str] = []

    def progress(_done: int, _total: int, msg: str) -> None:
        if msg.startswith("features: s"):
            done.append(msg)

    tasks = []
    pipe = ClusterPipeline(project, cluster)
    pipe.on_task = tasks.append
    with pytest.raises(CancelledError, match="cancelled in stage 'features'"):
        pipe.run(progress=progress, cancel=lambda: bool(done))
    assert project.stage_done("grid") and not project.stage_done("features")
    # the slides not done yet had their futures cancelled, and napari's list says so
    final = {t.slide_id: t.state for t in tasks if t.step == "features"}
    assert "done" in final.values() and "cancelled" in final.values()
    assert set(final.values()) <= {"done", "cancelled"}
    # the rerun (a new client, as after a killed run) finds the slides the workers wrote
    again = ClusterPipeline(Project.open(project.folder), cluster)
    again.run()
    cached = [sid for sid, run in again.slide_runs["features"].items() if run["cached"]]
    assert len(cached) >= 1
    assert "grid" not in again.slide_runs  # a finished stage is not sent again
    assert_same_outlines(one_machine, project)


def test_a_slides_error_on_a_worker_is_one_line_naming_the_worker(cluster, cohort, tmp_path):
    import shutil

    moved = tmp_path / "s9.png"
    shutil.copy(cohort[0]["slide"], moved)
    project = new_project(tmp_path / "p", cohort[1:])
    entry = project.add_slide(moved)
    project.set_coarse(entry.id, read_geojson(cohort[0]["coarse"]))
    moved.unlink()  # the slide file is gone by the time the workers read it
    with pytest.raises(ProtorefineError) as err:
        ClusterPipeline(project, cluster).run()
    message = str(err.value)
    assert "\n" not in message and "s9.png" in message
    assert any(message.startswith(f"worker {w}: ") for w in cluster.workers())
    assert not project.stage_done("grid")


def test_a_worker_that_cannot_see_the_project_says_so(tmp_path):
    with pytest.raises(ProtorefineError, match="cannot see the project folder"):
        cluster_mod._slide_work("grid", str(tmp_path / "elsewhere"), CFG.to_dict(), "s0", False)
