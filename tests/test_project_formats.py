"""Stage files named in one place, and projects written by earlier versions read as before."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protorefine.project import Project
from protorefine.project.pipeline import Pipeline
from protorefine.project.stages import (
    CELLS_SUFFIX,
    CURRENT_FORMAT,
    DONE_FILE,
    FORMATS,
    STAGE_FILES,
    FormatV1,
    FormatV2,
    cached_features_fit,
    marks_format,
    slide_file,
)
from protorefine.refine import RefineConfig
from refine_synth import write_slide_case

CFG = RefineConfig(patch_size=64, encoder="colour-texture", device="cpu", epochs=2, rounds=1)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_slide_case(tmp_path_factory.mktemp("case"), size=768)


@pytest.fixture
def project(tmp_path, case) -> Project:
    from protorefine.annotations import read_geojson

    p = Project.create(tmp_path / "p", CFG)
    p.add_slide(case["slide"])
    p.set_coarse("s1", read_geojson(case["coarse"]))
    return p


def test_formats_newest_first():
    assert isinstance(CURRENT_FORMAT, FormatV2) and CURRENT_FORMAT is FORMATS[0]
    assert [f.version for f in FORMATS] == sorted((f.version for f in FORMATS), reverse=True)


def test_corrections_of_the_first_format_are_read_then_replaced(project):
    grid = project.grid("s1")
    old = np.full((grid.rows, grid.cols), -1, np.int8)
    old[1, 2] = 0
    folder = project.folder / "corrections"
    folder.mkdir()
    before = project.fingerprint("pseudo_labels")
    np.save(folder / "s1.npy", old)  # as the first versions wrote them: no cell size
    np.testing.assert_array_equal(project.corrections("s1"), old)
    assert project.fingerprint("pseudo_labels") != before  # they count as corrections
    new = old.copy()
    new[0, 0] = 1
    project.set_corrections("s1", new)  # written in today's format, the old file goes
    assert (folder / "s1.npz").exists() and not (folder / "s1.npy").exists()
    np.testing.assert_array_equal(project.corrections("s1"), new)
    np.save(folder / "s1.npy", old)
    project.set_corrections("s1", None)  # clearing removes every format's file
    assert not list(folder.iterdir()) and project.corrections("s1") is None


def test_marks_of_the_first_format_hold_until_prototypes_record_their_build(project):
    path = project.folder / "prototype_labels.json"
    path.write_text(json.dumps({"3": "normal"}))  # a plain mapping, no build recorded
    assert marks_format(json.loads(path.read_text())) is FORMATS[1]
    assert project.marks() == {3: "normal"}
    stage = project.stage_dir("prototypes")
    stage.mkdir(parents=True)
    (stage / DONE_FILE).write_text(json.dumps({"run": "abc"}))
    (stage / "marks.json").write_text(json.dumps({"5": "tumour"}))
    assert project.marks() == {5: "tumour"}  # a recorded build: the carried marks
    path.write_text(json.dumps({"run": "abc", "labels": {"1": "ignore"}}))
    assert marks_format(json.loads(path.read_text())) is CURRENT_FORMAT
    assert project.marks() == {1: "ignore"}
    project.set_mark(2, "tumour")
    assert json.loads(path.read_text()) == {"run": "abc", "labels": {"1": "ignore", "2": "tumour"}}


def test_first_format_fingerprints_hold_the_slide_path(project, tmp_path):
    v1 = project.fingerprint("grid", fmt=FormatV1())
    assert v1 != project.fingerprint("grid")
    current = project.fingerprint("grid")
    project.slides[0].path = str(tmp_path / "moved.png")
    assert project.fingerprint("grid") == current  # the slide, not where its file lies
    assert project.fingerprint("grid", fmt=FormatV1()) != v1


def test_a_stage_done_in_the_first_format_is_adopted(project):
    marker = project.stage_dir("grid") / DONE_FILE
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"fingerprint": project.fingerprint("grid", fmt=FormatV1())}))
    assert project.stage_done("grid")
    assert json.loads(marker.read_text())["fingerprint"] == project.fingerprint("grid")
    marker.write_text(json.dumps({"fingerprint": "something else"}))
    assert not project.stage_done("grid")


def test_cached_features_fit_their_grid_in_either_format(project, tmp_path):
    grid = project.grid("s1")
    path = tmp_path / "s1.npy"
    assert not cached_features_fit(path, grid)
    np.save(path, np.zeros((int(grid.tissue.sum()), 4), np.float32))
    assert cached_features_fit(path, grid)  # no .cells: the row count decides
    np.save(path, np.zeros((int(grid.tissue.sum()) + 1, 4), np.float32))
    assert not cached_features_fit(path, grid)
    path.with_suffix(CELLS_SUFFIX).write_text(grid.signature())
    assert cached_features_fit(path, grid)  # .cells: the grid's cells decide
    path.with_suffix(CELLS_SUFFIX).write_text("another grid")
    assert not cached_features_fit(path, grid)


@pytest.mark.slow
def test_each_stage_writes_the_files_named_in_stage_files(project):
    Pipeline(project).run()
    for stage in Pipeline.STAGES:
        written = {p.name for p in project.stage_dir(stage).iterdir()}
        named = {slide_file(f, "s1") for f in STAGE_FILES[stage]} | {DONE_FILE}
        assert written == named, stage
