"""The project store: create/open, slides, annotations, corrections, relabels, stage markers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from protorefine.annotations import read_geojson
from protorefine.errors import ProtorefineError
from protorefine.project import Project
from protorefine.refine import RefineConfig
from refine_synth import write_slide_case


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_slide_case(tmp_path_factory.mktemp("case"), size=768)


def test_create_open_roundtrip(tmp_path, case):
    cfg = RefineConfig(patch_size=64, encoder="colour-texture")
    p = Project.create(tmp_path / "proj", cfg)
    entry = p.add_slide(case["slide"])
    assert entry.id == "s1" and entry.shape == (768, 768) and entry.levels >= 1
    assert p.add_slide(case["slide"]) is entry  # adding the same file twice is a no-op
    p.set_coarse("s1", read_geojson(case["coarse"]))
    p.set_mark(3, "normal")
    p.ui_state["current_slide"] = "s1"
    p.save_ui_state()
    q = Project.open(tmp_path / "proj")
    assert q.config == cfg
    assert [s.id for s in q.slides] == ["s1"]
    assert q.coarse("s1") is not None and len(q.coarse("s1")) == len(p.coarse("s1"))
    assert q.marks() == {3: "normal"}
    assert q.ui_state == {"current_slide": "s1"}
    q.set_mark(3, None)
    assert q.marks() == {}
    data = json.loads((tmp_path / "proj" / "config.json").read_text())
    assert data["refine"]["patch_size"] == 64


def test_open_rejects_non_projects(tmp_path):
    with pytest.raises(ProtorefineError, match="not a protorefine project"):
        Project.open(tmp_path)
    (tmp_path / "junk.txt").write_text("x")
    with pytest.raises(ProtorefineError, match="not empty"):
        Project.create(tmp_path)


def test_corrections_and_relabel_validation(tmp_path, case):
    p = Project.create(tmp_path / "p", RefineConfig(patch_size=64))
    p.add_slide(case["slide"])
    grid = p.grid("s1")
    corr = np.full((grid.rows, grid.cols), -1, np.int8)
    corr[2, 3] = 1
    p.set_corrections("s1", corr)
    np.testing.assert_array_equal(p.corrections("s1"), corr)
    with pytest.raises(ProtorefineError, match="shape"):
        p.set_corrections("s1", np.zeros((2, 2), np.int8))
    with pytest.raises(ProtorefineError, match="values must be"):
        p.set_corrections("s1", np.full((grid.rows, grid.cols), 5, np.int8))
    with pytest.raises(ProtorefineError, match="prototype label 'maybe'"):
        p.set_mark(0, "maybe")
    with pytest.raises(ProtorefineError, match="not in the project"):
        p.coarse_patch_labels("nope")
    p.remove_slide("s1")
    assert p.slides == [] and Project.open(p.folder).slides == []


def test_missing_slide_file_is_named(tmp_path, case):
    import shutil

    src = tmp_path / "copy.png"
    shutil.copy(case["slide"], src)
    p = Project.create(tmp_path / "p", RefineConfig(patch_size=64))
    p.add_slide(src)
    src.unlink()
    with pytest.raises(ProtorefineError, match="copy.png: slide file"):
        Project.open(p.folder).open_slide("copy")


def test_erased_coarse_outline_reads_back_empty(tmp_path, case):
    """A user who deletes every shape keeps a loadable project: the outline reads back empty."""
    from protorefine.annotations import AnnotationSet

    p = Project.create(tmp_path / "proj", RefineConfig(patch_size=64, encoder="colour-texture"))
    p.add_slide(case["slide"])
    p.set_coarse("s1", AnnotationSet())
    again = Project.open(tmp_path / "proj").coarse("s1")
    assert again is not None and len(again) == 0


def _open_with_config_field(tmp_path, field, value) -> str:
    """The error opening a project whose config.json has ``field`` set to ``value`` by hand."""
    Project.create(tmp_path / "proj", RefineConfig(patch_size=64))
    cfg = tmp_path / "proj" / "config.json"
    data = json.loads(cfg.read_text())
    data["refine"][field] = value
    cfg.write_text(json.dumps(data))
    with pytest.raises(ProtorefineError) as exc:
        Project.open(tmp_path / "proj")
    return str(exc.value)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("epochs", "ten", "a whole number"),
        ("threshold", "high", "a number"),
        ("use_local", "yes", "true or false"),
        ("encoder", 3, "text"),
        ("stride", [2], "a whole number or null"),
        ("epochs", True, "a whole number"),
        ("patch_size", None, "a whole number"),
    ],
)
def test_config_field_of_the_wrong_type_is_one_line(tmp_path, field, value, expected):
    msg = _open_with_config_field(tmp_path, field, value)
    assert "config.json" in msg and field in msg and expected in msg and "\n" not in msg
    with pytest.raises(ProtorefineError, match=field):
        RefineConfig.from_dict({field: value})


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("epochs", -3, ">= 1"),
        ("epochs", 0, ">= 1"),
        ("output_upsample", 0, ">= 1"),
        ("finetune_epochs", -1, ">= 0"),
        ("min_area", -2, ">= 0"),
        ("oof_folds", 1, ">= 2"),
        ("seed", -1, "from 0 to 4294967295"),
        ("seed", 2**40, "from 0 to 4294967295"),
    ],
)
def test_config_count_out_of_range_is_refused_on_open(tmp_path, field, value, allowed):
    """``"epochs": -3`` in config.json ran without a word: refused naming file, field, range."""
    msg = _open_with_config_field(tmp_path, field, value)
    assert "config.json" in msg and f"{field}={value}" in msg and allowed in msg
    assert "\n" not in msg


@pytest.mark.parametrize("name", ["config.json", "slides.json"])
@pytest.mark.parametrize("content", [bytes(range(256)), b"", b"{not json"])
def test_a_damaged_project_json_file_is_named(tmp_path, name, content):
    """Binary junk gave a UnicodeDecodeError traceback, an empty file named only the folder."""
    Project.create(tmp_path / "proj", RefineConfig(patch_size=64))
    (tmp_path / "proj" / name).write_bytes(content)
    with pytest.raises(ProtorefineError) as exc:
        Project.open(tmp_path / "proj")
    msg = str(exc.value)
    assert msg.startswith(str(tmp_path / "proj" / name)) and "not valid JSON" in msg
    assert "\n" not in msg
    assert (tmp_path / "proj" / name).read_bytes() == content


def test_damaged_ui_state_opens_with_no_saved_widget_state(tmp_path):
    """ui_state.json only restores how the widgets looked: junk in it must not stop the project."""
    Project.create(tmp_path / "proj", RefineConfig(patch_size=64))
    (tmp_path / "proj" / "ui_state.json").write_bytes(bytes(range(256)))
    assert Project.open(tmp_path / "proj").ui_state == {}


def test_config_validate_names_a_non_number():
    cfg = RefineConfig(patch_size=64)
    cfg.epochs = "ten"  # type: ignore[assignment]
    with pytest.raises(ProtorefineError, match="epochs.*a whole number"):
        cfg.validate()
    assert RefineConfig(patch_size=64, threshold=1 / 2).threshold == 0.5


@pytest.mark.parametrize("bad", ["../../x", "a/b", "a\\b", "..", ".", "", 3])
def test_slide_ids_that_are_not_plain_names_are_refused_on_open(tmp_path, case, bad):
    p = Project.create(tmp_path / "proj", RefineConfig(patch_size=64))
    p.add_slide(case["slide"])
    slides = tmp_path / "proj" / "slides.json"
    data = json.loads(slides.read_text())
    data[0]["id"] = bad
    slides.write_text(json.dumps(data))
    with pytest.raises(ProtorefineError, match=r"slides\.json: slide id") as exc:
        Project.open(tmp_path / "proj")
    assert "\n" not in str(exc.value)


def test_a_slide_file_whose_name_is_no_plain_id_is_refused_on_add(tmp_path, case):
    import shutil

    odd = tmp_path / "...png"  # its stem is ".."
    shutil.copy(case["slide"], odd)
    p = Project.create(tmp_path / "proj", RefineConfig(patch_size=64))
    with pytest.raises(ProtorefineError, match=r"\.\.\.png: .*slide id"):
        p.add_slide(odd)
    assert p.slides == [] and json.loads((tmp_path / "proj" / "slides.json").read_text()) == []


def test_opening_for_writing_removes_the_temp_entries_of_killed_runs(tmp_path, case):
    from protorefine._atomic import atomic_path

    p = Project.create(tmp_path / "proj", RefineConfig(patch_size=64))
    p.add_slide(case["slide"])
    left, writes = [], []
    for target, replace_dir in [
        (p.stage_dir("features"), True),  # a stage killed mid-run
        (p.folder / "slides.json", False),
        (p.folder / "features" / "abc" / "s1.npy", False),
    ]:
        writes.append(atomic_path(target, replace_dir=replace_dir))
        tmp = writes[-1].__enter__()  # never finished, as in a killed run
        tmp.mkdir() if replace_dir else tmp.write_bytes(b"x")
        left.append(tmp.parent)
    assert all(d.is_dir() for d in left)
    decoys = [
        p.folder / "stages" / ".features.abc.tmp",  # not the temp pattern
        p.folder / ".notes.ABCDEFGH.tmp",
        p.folder / "mine.abcdefgh.tmp",
        p.folder / ".data.abcdefgh.tmp.bak",
    ]
    for d in decoys:
        d.mkdir(parents=True)
    made = p.folder / ".x.abcdefgh.tmp"  # a file, not a folder _atomic makes
    made.write_text("keep")
    holds_more = p.folder / ".notes.abcdefgh.tmp"  # the pattern, but holding the user's files
    holds_more.mkdir()
    (holds_more / "draft.txt").write_text("mine")
    Project.open(p.folder)  # reading leaves everything
    assert all(d.is_dir() for d in left)
    Project.open_or_create(p.folder)
    assert not any(d.exists() for d in left)
    assert all(d.is_dir() for d in decoys) and made.read_text() == "keep"
    assert (holds_more / "draft.txt").read_text() == "mine"
    assert (p.folder / "slides.json").is_file() and (p.folder / "features" / "abc").is_dir()


def test_clearing_a_stage_deletes_only_what_the_pipeline_made(tmp_path):
    """A stage name that is not one of the pipeline's, or a stage folder that is a link to
    the user's own files, is never deleted."""
    p = Project.create(tmp_path / "p")
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    for name in ("..", "../../precious", "bogus"):
        with pytest.raises(ProtorefineError, match="unknown stage"):
            p.clear_stage(name)
    (tmp_path / "p" / "stages").mkdir(exist_ok=True)
    (tmp_path / "p" / "stages" / "grid").symlink_to(precious, target_is_directory=True)
    with pytest.raises(ProtorefineError, match="a link, not a stage folder"):
        p.clear_stage("grid")
    assert (precious / "keep.txt").read_text() == "mine"
    made = tmp_path / "p" / "stages" / "features"
    made.mkdir()
    (made / "done.json").write_text("{}")
    p.clear_stage("features")
    assert not made.exists()
    # nor when the stages folder itself is a link: clearing or forgetting leaves it whole
    other = tmp_path / "q"
    q = Project.create(other)
    (precious / "output").mkdir()
    (precious / "output" / "done.json").write_text("{}")
    if (other / "stages").exists():
        (other / "stages").rmdir()
    (other / "stages").symlink_to(precious, target_is_directory=True)
    for act in (q.clear_stage, q.forget_stage):
        with pytest.raises(ProtorefineError, match="a link, not a stage folder"):
            act("output")
    assert (precious / "output" / "done.json").exists() and (precious / "keep.txt").exists()
