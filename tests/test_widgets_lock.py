"""napari while a ``protorefine refine`` runs on the open project: the Project pane says the
project is busy, and the panes refuse to start a run on it."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.gui

HOLDER = """
import sys
from protorefine.project.lock import project_lock
with project_lock(sys.argv[1]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def notes():
    """napari notifications shown during the test, as (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(event) -> None:
        seen.append((str(event.severity), str(event.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


def test_a_project_another_process_runs_on_shows_busy_and_refuses_a_run(
    make_napari_viewer, tmp_path, notes
) -> None:
    from protorefine.napari.widgets._common import runnable_project
    from protorefine.napari.widgets.project import ProjectWidget
    from protorefine.project import Project

    folder = tmp_path / "proj"
    Project.create(folder)
    viewer = make_napari_viewer()
    pw = ProjectWidget(viewer)
    viewer.window.add_dock_widget(pw, name="Project and slides")
    pw.open_project(folder)
    assert pw.busy.isHidden()

    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        pw.show_busy()  # what the pane's timer does every few seconds
        assert not pw.busy.isHidden()
        assert "project busy" in pw.busy.text() and f"PID {proc.pid}" in pw.busy.text()
        assert len(pw.busy.text().splitlines()) == 1

        notes.clear()
        assert runnable_project(pw.state) is None
        assert any(
            sev == "warning" and "project busy" in msg and "Nothing was changed" in msg
            for sev, msg in notes
        )
    finally:
        proc.communicate(timeout=60)
    pw.show_busy()
    assert pw.busy.isHidden() and pw.busy.text() == ""
