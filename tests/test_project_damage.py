"""A project's own stored arrays damaged (truncated, emptied, pickled): one line naming the
file, and a rerun recomputes what was damaged."""

from __future__ import annotations

import numpy as np
import pytest

from protorefine.annotations import read_geojson
from protorefine.errors import ProtorefineError
from protorefine.project import Project
from protorefine.project.pipeline import Pipeline
from protorefine.refine import RefineConfig
from refine_synth import write_slide_case

pytestmark = pytest.mark.slow

CFG = RefineConfig(patch_size=64, encoder="colour-texture", device="cpu", epochs=2, rounds=1)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_slide_case(tmp_path_factory.mktemp("case"), size=768)


def new_project(folder, case) -> Project:
    p = Project.create(folder, CFG)
    p.add_slide(case["slide"])
    p.set_coarse("s1", read_geojson(case["coarse"]))
    return p


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_stage_npz_is_one_line_and_a_rerun_recomputes_it(tmp_path, case):
    p = new_project(tmp_path / "p", case)
    Pipeline(p).run()
    _truncate(p.stage_dir("prototypes") / "prototypes.npz")
    _truncate(p.stage_dir("output") / "prob.npz")
    q = Project.open(tmp_path / "p")
    with pytest.raises(ProtorefineError, match=r"prototypes\.npz: .*damaged.*run") as exc:
        q.result_grid("s1", "local_proto")
    assert "\n" not in str(exc.value)
    with pytest.raises(ProtorefineError, match=r"prob\.npz: .*damaged"):
        q.unsure_shares()
    Pipeline(q).run()  # the damaged stages count as not done: recomputed
    grid = q.grid("s1")
    assert q.result_grid("s1", "local_proto").shape == (grid.rows, grid.cols)
    assert q.result_grid("s1", "refined").any()
    assert set(q.unsure_shares()) == {"s1"}


def test_truncated_grid_npz_is_one_line(tmp_path, case):
    p = new_project(tmp_path / "p", case)
    Pipeline(p).run(until="grid")
    _truncate(p.stage_dir("grid") / "s1.npz")
    q = Project.open(tmp_path / "p")
    with pytest.raises(ProtorefineError, match=r"s1\.npz: .*damaged"):
        q.grid("s1")
    Pipeline(q).run(until="grid")
    assert q.grid("s1").tissue.any()


@pytest.mark.parametrize("damage", ["empty", "pickled", "truncated"])
def test_damaged_feature_cache_is_one_line_and_recomputed(tmp_path, case, damage):
    p = new_project(tmp_path / "p", case)
    Pipeline(p).run(until="features")
    feats = next((tmp_path / "p" / "features").glob("*/s1.npy"))
    good = np.load(feats)
    if damage == "empty":
        feats.write_bytes(b"")
    elif damage == "pickled":
        np.save(feats, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    else:
        _truncate(feats)
    q = Project.open(tmp_path / "p")
    with pytest.raises(ProtorefineError, match=r"s1\.npy: .*damaged") as exc:
        Pipeline(q).run(until="prototypes")
    assert "\n" not in str(exc.value)
    Pipeline(q).run(until="prototypes")
    assert np.array_equal(np.load(feats), good)


def test_damaged_corrections_are_one_line(tmp_path, case):
    p = new_project(tmp_path / "p", case)
    grid = p.grid("s1")
    p.set_corrections("s1", np.zeros((grid.rows, grid.cols), dtype=np.int8))
    _truncate(tmp_path / "p" / "corrections" / "s1.npz")
    with pytest.raises(ProtorefineError, match=r"s1\.npz: .*damaged.*paint"):
        p.corrections("s1")
