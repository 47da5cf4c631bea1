"""The Pipeline over a project: full run, results for the layers, resume after cancel, invalidation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protorefine.annotations import read_geojson
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.project import Project
from protorefine.project.pipeline import Pipeline
from protorefine.refine import RefineConfig
from refine_synth import write_slide_case

pytestmark = pytest.mark.slow

CFG = RefineConfig(patch_size=64, encoder="colour-texture", device="cpu", epochs=4, rounds=2)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_slide_case(tmp_path_factory.mktemp("case"), size=1024)


def new_project(folder, case) -> Project:
    p = Project.create(folder, CFG)
    p.add_slide(case["slide"])
    p.set_coarse("s1", read_geojson(case["coarse"]))
    return p


@pytest.fixture(scope="module")
def done(tmp_path_factory, case):
    p = new_project(tmp_path_factory.mktemp("proj") / "p", case)
    rounds = []
    Pipeline(p).run(on_round=rounds.append)
    return p, rounds


def test_full_run_results(done):
    p, rounds = done
    assert all(p.stage_done(s) for s in Pipeline.STAGES)
    assert [r["round"] for r in rounds] == [1, 2]
    grid = p.grid("s1")
    shape = (grid.rows, grid.cols)
    tissue = grid.tissue.reshape(shape)
    for key in ("local_proto", "global_proto", "pseudo", "confidence", "prob", "refined", "coarse"):
        g = p.result_grid("s1", key)
        assert g.shape == shape, key
    gp = p.result_grid("s1", "global_proto")
    assert (gp[~tissue] == -1).all() and (gp[tissue] >= 0).all()
    assert gp.max() < len(p.global_scores())
    prob = p.result_grid("s1", "prob")
    assert ((prob >= 0) & (prob <= 1)).all()
    refined = p.result_grid("s1", "refined")
    assert refined.dtype == bool and not refined[~tissue].any() and refined.any()
    ann = p.refined_annotations("s1")
    assert len(ann) >= 1
    minx, miny, maxx, maxy = ann.union().bounds
    assert minx >= 0 and miny >= 0 and maxx <= 1024 and maxy <= 1024
    assert [h["round"] for h in p.history()] == [1, 2]
    # reopening gives the same results
    q = Project.open(p.folder)
    assert all(q.stage_done(s) for s in Pipeline.STAGES)
    np.testing.assert_array_equal(q.result_grid("s1", "refined"), refined)


def test_cancel_mid_stage_then_resume(tmp_path, case):
    p = new_project(tmp_path / "p", case)
    calls = {"n": 0}

    def cancel() -> bool:
        calls["n"] += 1
        return calls["n"] > 4  # grid passes, features is stopped after its first batches

    with pytest.raises(CancelledError):
        Pipeline(p).run(cancel=cancel)
    q = Project.open(p.folder)  # still loadable
    assert q.stage_done("grid") and not q.stage_done("features")
    pipe = Pipeline(q)
    pipe.run(until="prototypes")
    assert "grid" not in pipe.times and set(pipe.times) == {"features", "prototypes"}
    assert q.stage_done("prototypes") and not q.stage_done("pseudo_labels")
    pipe2 = Pipeline(q)
    pipe2.run()
    assert set(pipe2.times) == {"pseudo_labels", "classifier", "output", "pixels"}


def test_config_change_invalidates_later_stages_only(done):
    p, _ = done
    p.set_config(p.config.replace(threshold=0.3))
    assert p.stage_done("classifier") and not p.stage_done("output")
    pipe = Pipeline(p)
    pipe.run()
    assert set(pipe.times) == {"output", "pixels"}
    # corrections invalidate from the pseudo-labels on, and are obeyed
    grid = p.grid("s1")
    corr = np.full((grid.rows, grid.cols), -1, np.int8)
    r, c = np.argwhere(grid.tissue.reshape(grid.rows, grid.cols))[0]
    corr[r, c] = 1
    p.set_corrections("s1", corr)
    assert p.stage_done("prototypes") and not p.stage_done("pseudo_labels")
    pipe = Pipeline(p)
    pipe.run()
    assert set(pipe.times) == {"pseudo_labels", "classifier", "output", "pixels"}
    assert p.result_grid("s1", "pseudo")[r, c] == 1
    assert p.result_grid("s1", "prob")[r, c] == 1.0


def test_prototype_relabel_and_update_pseudo_labels(done):
    p, _ = done
    g = int(np.argmax(p.global_scores()))
    p.set_mark(g, "normal")
    pipe = Pipeline(p)
    pipe.update_pseudo_labels()
    assert set(pipe.times) == {"pseudo_labels"}
    gp = p.result_grid("s1", "global_proto")
    corr = p.corrections("s1")
    free = corr < 0 if corr is not None else np.ones(gp.shape, bool)  # corrections win
    assert (gp == g).any()
    assert (p.result_grid("s1", "pseudo")[(gp == g) & free] == 0).all()
    assert not p.stage_done("classifier")
    p.set_mark(g, None)


def test_encoder_change_reuses_feature_cache(done):
    p, _ = done
    p.set_config(p.config.replace(encoder="efficientnet-lite0"))
    assert p.stage_done("grid") and not p.stage_done("features")
    p.set_config(p.config.replace(encoder="colour-texture"))
    assert p.stage_done("features")


def test_combined_encoder_runs_through_the_pipeline(tmp_path, case):
    p = new_project(tmp_path / "p", case)
    p.set_config(p.config.replace(encoder="efficientnet-lite0+colour-texture", rounds=1))
    Pipeline(p).run()
    assert p.encoder_info["blocks"] == [1280, 77]
    assert Project.open(p.folder).feature_blocks == [1280, 77]
    from protorefine.refine.classifier import load_checkpoint

    model = load_checkpoint(p.stage_dir("classifier") / "model.pt")
    assert [net[0].in_features for net in model.nets] == [1280, 77]
    refined = p.result_grid("s1", "refined")
    assert refined.any() and not refined.all()


def test_damaged_checkpoint_is_one_line_error(tmp_path, case):
    p = new_project(tmp_path / "p", case)
    Pipeline(p).run(until="classifier")
    (p.stage_dir("classifier") / "model.pt").write_bytes(b"garbage")
    with pytest.raises(ProtorefineError, match="model.pt: checkpoint does not load"):
        Pipeline(p).run()
    assert p.stage_done("classifier") and not p.stage_done("output")


def test_bad_annotations(tmp_path, case):
    from shapely.geometry import box

    from protorefine.annotations import Annotation, AnnotationSet

    p = Project.create(tmp_path / "p", CFG)
    p.add_slide(case["slide"])
    with pytest.raises(ProtorefineError, match="'s1' has no coarse annotation"):
        Pipeline(p).run()
    p.set_coarse("s1", AnnotationSet([Annotation(box(0, 0, 100, 100), "Exclusion")]))
    with pytest.raises(ProtorefineError, match="no tumour region"):
        Pipeline(p).run()
    p.set_coarse("s1", AnnotationSet([Annotation(box(-10, -10, 2000, 2000), "Tumor")]))
    with pytest.raises(ProtorefineError, match="covers all tissue"):
        Pipeline(p).run()
    assert p.stage_done("features")  # earlier work is kept


def test_marks_follow_the_tissue_when_prototypes_are_rebuilt(tmp_path, case):
    p = new_project(tmp_path / "p", case)
    Pipeline(p).run(until="prototypes")

    def patches_of(gid: int) -> set[tuple[float, float]]:
        """Level-0 squares (x0, y0) of 16 px covered by the patches of a global prototype."""
        grid = p.grid("s1")
        rr, cc = np.nonzero(p.result_grid("s1", "global_proto") == gid)
        d, k = grid.downsample, range(int(grid.downsample // 16))
        cells = zip(rr.tolist(), cc.tolist(), strict=True)
        return {(c * d + 16 * i, r * d + 16 * j) for r, c in cells for i in k for j in k}

    gp = p.result_grid("s1", "global_proto")
    g = int(np.bincount(gp[gp >= 0]).argmax())  # the biggest prototype
    p.set_mark(g, "normal")
    marked = patches_of(g)
    for change in ({"seed": 5}, {"stride": 32}):  # a new build, then a new grid as well
        Pipeline(p, p.config.replace(**change)).run(until="pseudo_labels")
        info = p.stage_info("prototypes")
        assert info["marks_before"] == 1 and info["marks_carried"] >= 1
        labels = p.marks()
        assert set(labels.values()) == {"normal"}
        for h in labels:  # each carried mark sits on tissue that was marked
            here = patches_of(h)
            assert len(here & marked) > 0.5 * len(here)
        gp = p.result_grid("s1", "global_proto")
        free = np.isin(gp, list(labels))
        assert (p.result_grid("s1", "pseudo")[free] == 0).all()
        marked = set().union(*(patches_of(h) for h in labels))
    # marking again starts from the carried marks and belongs to this build
    h = next(iter(labels))
    p.set_mark(h, None)
    assert h not in p.marks() and Project.open(p.folder).marks() == {
        k: v for k, v in labels.items() if k != h
    }


def test_corrections_follow_the_tissue_to_a_new_grid(tmp_path, case):
    p = new_project(tmp_path / "p", case)
    grid = p.grid("s1")
    painted = np.full((grid.rows, grid.cols), -1, np.int8)
    tissue = grid.tissue.reshape(grid.rows, grid.cols)
    r, c = np.argwhere(tissue)[len(np.argwhere(tissue)) // 2]
    painted[r, c] = 1
    p.set_corrections("s1", painted)
    p.set_config(p.config.replace(stride=32))  # cells of half the size
    fine = p.corrections("s1")
    finer = p.grid("s1")
    assert fine.shape == (finer.rows, finer.cols) == (2 * grid.rows, 2 * grid.cols)
    assert (fine[2 * r : 2 * r + 2, 2 * c : 2 * c + 2] == 1).all() and (fine == 1).sum() == 4
    Pipeline(p).run(until="pseudo_labels")
    assert (p.result_grid("s1", "pseudo")[2 * r : 2 * r + 2, 2 * c : 2 * c + 2] == 1).all()
    p.set_config(p.config.replace(stride=None))  # and back: the painting is as it was
    np.testing.assert_array_equal(p.corrections("s1"), painted)


def test_pixel_size_set_by_hand(tmp_path, case):
    """A PNG records no pixel size: the pathologist gives it. Measurements, the viewer's scale
    and a patch grid in microns follow; cached features are reused only where the grid's
    cells did not move; the setting survives reopening and can go back to the file's."""
    p = new_project(tmp_path / "p", case)
    Pipeline(p).run()
    assert p.slide("s1").mpp is None and p.measurements("s1")["refined"].unit == "px"
    area_px = p.measurements("s1")["refined"].area
    stamp = (p.feature_cache("colour-texture", p.encoder_info["weight_hash"]) / "s1.npy").stat()

    p.set_slide_mpp("s1", 0.5)
    assert p.open_slide("s1").mpp == 0.5 and p.open_slide("s1", as_filed=True).mpp is None
    assert not p.stage_done("grid")  # the grid records the slide's pixel size
    q = Project.open(p.folder)
    assert q.slide("s1").mpp == 0.5 and q.slide("s1").mpp_by_user
    Pipeline(q).run()  # same cells (the grid is in pixels): features come from the cache
    assert q.stage_info("features")["reused_slides"] == 1
    cache = q.feature_cache("colour-texture", q.encoder_info["weight_hash"]) / "s1.npy"
    assert cache.stat().st_mtime_ns == stamp.st_mtime_ns
    m = q.measurements("s1")["refined"]
    assert m.unit == "µm" and m.area == pytest.approx(area_px * 0.25)

    # a grid in microns per pixel: 1 µm/px is a 2x coarser level, other cells, new features
    q.set_config(q.config.replace(mpp=1.0, level=None, patch_size=32))
    Pipeline(q).run("features")
    assert q.grid("s1").downsample == 64 and q.stage_info("features")["reused_slides"] == 0
    # cached rows are reused for the cells they were read from only, not for as many others
    cells = q.feature_cache("colour-texture", q.encoder_info["weight_hash"]) / "s1.cells"
    assert cells.read_text() == q.grid("s1").signature()
    for signature, reused in (("cells of another grid", 0), (None, 1)):
        if signature:
            cells.write_text(signature)
        q.clear_stage("features")
        Pipeline(q).run("features")
        assert q.stage_info("features")["reused_slides"] == reused

    with pytest.raises(ProtorefineError, match=r"^0\.0: microns per pixel must be between"):
        q.set_slide_mpp("s1", 0.0)
    with pytest.raises(ProtorefineError, match="between 0.01 and 100"):
        q.set_slide_mpp("s1", float("nan"))
    assert q.slide("s1").mpp == 0.5  # a refused value changes nothing
    q.set_slide_mpp("s1", None)
    assert q.slide("s1").mpp is None and not q.slide("s1").mpp_by_user


def test_review_marks_go_stale_when_the_outline_changes(done, case, tmp_path):
    """The pathologist ticks a slide as reviewed; a hand edit (or a rerun that redraws the
    outline) makes the tick stale, and the spreadsheet says which."""
    from shapely.geometry import box

    from protorefine.annotations import Annotation, AnnotationSet
    from protorefine.project.review import write_measurements_csv

    p, _ = done
    assert p.review_state("s1") is None
    p.set_reviewed("s1")
    assert p.review_state("s1") == "reviewed"
    assert Project.open(p.folder).review_state("s1") == "reviewed"  # kept in the project
    rows = write_measurements_csv(p, tmp_path / "m.csv").read_text().splitlines()
    assert rows[0].split(",")[4] == "reviewed" and rows[1].split(",")[4] == "yes"
    p.set_outline_edit("s1", AnnotationSet([Annotation(box(0, 0, 100, 100))]))
    assert p.review_state("s1") == "changed"
    rows = write_measurements_csv(p, tmp_path / "m.csv").read_text().splitlines()
    assert rows[1].split(",")[4] == "changed since review"
    p.set_outline_edit("s1", None)
    assert p.review_state("s1") == "reviewed"  # the outline that was checked is back
    p.set_reviewed("s1", False)
    assert p.review_state("s1") is None
    (p.folder / "reviewed.json").write_text("{not json")
    assert p.review_state("s1") is None  # a damaged record loses ticks, nothing else
    fresh = new_project(tmp_path / "fresh", case)
    with pytest.raises(ProtorefineError, match="'s1' has no refined outline to review yet"):
        fresh.set_reviewed("s1")


def test_revert_a_change_to_the_coarse_outline(done):
    """The pathologist disagrees with a change: inside that part the coarse outline's word
    comes back, everywhere else the accepted outline stays as it was, kept as a hand edit."""
    from shapely.geometry import box

    from protorefine.annotations import tumour_geometry
    from protorefine.measure import outline_changes

    p, _ = done
    coarse = tumour_geometry(p.coarse("s1"))
    before = tumour_geometry(p.accepted_outline("s1"))
    changes = outline_changes(p.coarse("s1"), p.accepted_outline("s1"), None)
    removed = next(ch for ch in changes if ch.kind == "removed")
    straddling = box(300, 300, 700, 700)  # across the coarse and refined boundaries
    assert (
        not straddling.intersection(coarse)
        .symmetric_difference(straddling.intersection(before))
        .is_empty
    )
    try:
        for part in (removed.geometry, straddling):
            old = tumour_geometry(p.accepted_outline("s1"))
            new = tumour_geometry(p.revert_to_coarse("s1", part))
            assert p.outline_edited("s1")
            assert tumour_geometry(p.accepted_outline("s1")).equals_exact(new, 1e-6)
            inside = new.intersection(part).symmetric_difference(coarse.intersection(part))
            outside = new.difference(part).symmetric_difference(old.difference(part))
            assert inside.area < 1.0 and outside.area < 1.0
        after = outline_changes(p.coarse("s1"), p.accepted_outline("s1"), None)
        assert all(not ch.geometry.intersects(removed.geometry.buffer(-2)) for ch in after)
        with pytest.raises(ProtorefineError, match="the part has no area"):
            p.revert_to_coarse("s1", box(10, 10, 10, 20))
    finally:
        p.set_outline_edit("s1", None)
    assert tumour_geometry(p.accepted_outline("s1")).equals_exact(before, 1e-6)


def test_unsure_share_and_review_order(done, tmp_path):
    """How unsure the model is on a slide, in the spreadsheet and the review order."""
    from protorefine.measure import UNSURE, unsure_share
    from protorefine.project.review import write_measurements_csv

    assert unsure_share(np.array([0.1, 0.5, 0.79, 0.8, 0.95])) == pytest.approx(2 / 5)
    assert unsure_share(np.array([])) == 0.0
    p, _ = done
    grid = p.grid("s1")
    prob = p.result_grid("s1", "prob")[grid.tissue.reshape(grid.rows, grid.cols)]
    share = p.unsure_shares()["s1"]
    assert share == pytest.approx(np.mean((prob > UNSURE[0]) & (prob < UNSURE[1])))
    rows = write_measurements_csv(p, tmp_path / "m.csv").read_text().splitlines()
    header, row = rows[0].split(","), rows[1].split(",")
    assert float(row[header.index("unsure_share")]) == pytest.approx(share, abs=1e-4)
    assert p.review_order() == ["s1"]
    p.set_reviewed("s1")
    try:
        assert p.review_order() == []
    finally:
        p.set_reviewed("s1", False)


def test_reading_many_slides_computes_each_fingerprint_once(done, monkeypatch):
    """Batch reads (the slide list, the spreadsheet) take the inputs as fixed, in their own
    thread only: another thread, e.g. the window saving an edit meanwhile, still sees it."""
    import threading

    p, _ = done
    expected = {name: p.fingerprint(name) for name in Pipeline.STAGES}
    calls = []
    real = p._fingerprint
    monkeypatch.setattr(
        p, "_fingerprint", lambda name, **kw: calls.append(name) or real(name, **kw)
    )
    with p.reading():
        for _ in range(3):
            assert p.has_results("s1") and p.review_state("s1") is None
            assert {name: p.fingerprint(name) for name in Pipeline.STAGES} == expected
        inside = len(calls)
        other: list[str] = []
        worker = threading.Thread(target=lambda: other.append(p.fingerprint("output")))
        worker.start()
        worker.join()
    assert inside == len(set(calls[:inside])) <= len(Pipeline.STAGES)  # once per stage
    assert other == [expected["output"]] and len(calls) == inside + 1  # computed afresh there
    p.fingerprint("output")
    assert len(calls) == inside + 2  # and again outside


def test_why_a_part_says_how_sure_the_model_is(done):
    from shapely.geometry import box

    from protorefine.measure import cells_in, unsure_share
    from protorefine.project.review import part_explainer

    p, _ = done
    explain = part_explainer(p, "s1")
    prob = p.result_grid("s1", "prob")
    ids = p.result_grid("s1", "global_proto")
    ds = p.grid("s1").downsample
    for part in (box(0, 0, 1024, 1024), box(300, 300, 700, 700)):
        share = unsure_share(prob[cells_in(part, ds, ids.shape) & (ids >= 0)])
        said, _ = explain(part)
        clause = (
            f"the model is unsure on {share:.0%} of its patches"
            if share > 0
            else "the model is sure of every one of its patches"
        )
        assert said.startswith("mostly prototype ") and f"; {clause}" in said


def test_refined_outline_in_the_coarse_outlines_class(tmp_path, case):
    """An outline drawn as 'Metastasis' comes back as 'Metastasis' (same QuPath class)."""
    from dataclasses import replace

    p = new_project(tmp_path / "p", case)
    coarse = read_geojson(case["coarse"])
    coarse.annotations = [replace(a, classification="Metastasis") for a in coarse]
    p.set_coarse("s1", coarse)
    Pipeline(p).run()
    refined = p.refined_annotations("s1")
    assert len(refined) and {a.classification for a in refined} == {"Metastasis"}


def test_the_patch_reader_is_the_callers_choice(tmp_path, case, monkeypatch):
    """napari asks for reader threads (no fork out of a GUI); the CLI keeps the default."""
    import protorefine.project.pipeline as pipeline

    seen = []
    real = pipeline.extract_features

    def spy(*args, **kwargs):
        seen.append(kwargs.get("loader"))
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "extract_features", spy)
    Pipeline(new_project(tmp_path / "a", case), loader="inline").run(until="features")
    Pipeline(new_project(tmp_path / "b", case)).run(until="features")
    assert seen == ["inline", None]


def test_slides_without_an_outline_wait_for_one(tmp_path, case):
    """A batch outlined in part: a partial run refines the outlined slides and leaves the
    others out, saying so; the command line's strict run names the slide that lacks one;
    once outlined, the next run takes it in (the other slides' features from the cache)."""
    import shutil

    second = tmp_path / "s2.png"
    shutil.copy(case["slide"], second)
    p = new_project(tmp_path / "p", case)
    p.add_slide(second)
    assert [s.id for s in p.run_slides()] == ["s1"]
    with pytest.raises(ProtorefineError, match="slide 's2' has no coarse annotation"):
        Pipeline(p).run()
    assert not (p.folder / "stages").exists() or not any((p.folder / "stages").iterdir())
    Pipeline(p, partial=True).run()
    assert p.has_results("s1") and not p.has_results("s2")
    assert p.measurements("s1")["refined"].area > 0 and "refined" not in p.measurements("s2")
    with pytest.raises(ProtorefineError, match="'s2' has no refined outline: it was left out"):
        p.accepted_outline("s2")
    with pytest.raises(ProtorefineError, match="'s2' was not part of the last run"):
        p.result_grid("s2", "prob")
    assert set(p.unsure_shares()) == {"s1"} and p.review_order() == ["s1"]
    written = p.export_refined(tmp_path / "out")
    assert [w.name for w in written] == ["s1.geojson"]
    rows = (tmp_path / "out" / "tumour_measurements.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["s1", "s2"]
    assert rows[2].split(",")[5] == ""  # s2: no regions yet
    # s2 gets its outline: the results no longer match the inputs, and the next run has both
    p.set_coarse("s2", read_geojson(case["coarse"]))
    assert not p.stage_done("output") and not p.has_results("s1")
    pipe = Pipeline(p, partial=True)
    pipe.run()
    assert p.has_results("s1") and p.has_results("s2")
    assert p.stage_info("features")["reused_slides"] == 1  # s1's features were cached


def test_export_every_slide_reports_progress_and_stops_on_cancel(done, tmp_path):
    p, _ = done
    steps = []
    written = p.export_refined(tmp_path / "all", progress=lambda d, t, m: steps.append((d, t, m)))
    assert [w.name for w in written] == ["s1.geojson"]
    assert steps == [(0, 2, "s1"), (2, 2, "tumour_measurements.csv")]
    with pytest.raises(CancelledError, match="export cancelled after 0 of 1 slides"):
        p.export_refined(tmp_path / "cancelled", cancel=lambda: True)
    assert list((tmp_path / "cancelled").iterdir()) == []


def test_colour_statistics_are_read_once_and_shape_the_outline(done, tmp_path, monkeypatch):
    """The output stage reads the slide's stain statistics once per grid (``colour/``); a
    redraw reuses them, and switching colour prototypes off changes the outline."""
    import shutil

    import protorefine.project.pipeline as pipeline
    from protorefine.annotations import tumour_geometry

    src, _ = done
    folder = tmp_path / "p"
    shutil.copytree(src.folder, folder)
    p = Project.open(folder)
    cached = list((folder / "colour").glob("s1-f*.npy"))
    assert (
        len(cached) == 1 and cached[0].with_suffix(".cells").read_text() == p.grid("s1").signature()
    )
    with_colour = tumour_geometry(p.refined_annotations("s1"))

    def no_reading(*_args, **_kwargs):
        raise AssertionError("the slide was read again")

    monkeypatch.setattr(pipeline, "cell_sums", no_reading)
    p.set_config(p.config.replace(threshold=p.config.threshold + 0.05))
    Pipeline(p).run()  # a redraw: statistics from colour/
    p.set_config(p.config.replace(threshold=p.config.threshold - 0.05, colour_prototypes=0))
    pipe = Pipeline(p)
    pipe.run()
    assert set(pipe.times) == {"output", "pixels"}
    plain = tumour_geometry(p.refined_annotations("s1"))
    assert plain.symmetric_difference(with_colour).area > 0.01 * with_colour.area


def test_a_project_made_by_a_relative_path_or_moved_reuses_its_features(
    tmp_path, case, monkeypatch
):
    import shutil

    import protorefine.project.pipeline as pipeline_mod

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    p = new_project("proj", case)  # a relative folder, as `refine --out proj`
    Pipeline(p).run(until="features")
    cache_txt = tmp_path / "a" / "proj" / "stages" / "features" / "cache.txt"
    assert not Path(cache_txt.read_text()).is_absolute()

    def no_extraction(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr(pipeline_mod, "extract_features", no_extraction)
    monkeypatch.chdir(tmp_path / "b")  # rerun from another folder
    q = Project.open(tmp_path / "a" / "proj")
    Pipeline(q).run(until="prototypes")
    shutil.move(tmp_path / "a" / "proj", tmp_path / "moved")  # the project moved
    q = Project.open(tmp_path / "moved")
    q.clear_stage("prototypes")
    Pipeline(q).run(until="prototypes")
    assert q.stage_done("features") and q.stage_done("prototypes")


def test_a_moved_project_of_earlier_versions_reads_its_absolute_feature_cache(tmp_path, case):
    import shutil

    p = new_project(tmp_path / "p", case)
    Pipeline(p).run(until="features")
    cache_txt = p.stage_dir("features") / "cache.txt"
    key = Path(cache_txt.read_text()).name
    cache_txt.write_text(str((tmp_path / "p" / "features" / key).resolve()))  # as written before
    Pipeline(Project.open(tmp_path / "p")).run(until="prototypes")
    shutil.move(tmp_path / "p", tmp_path / "q")  # the absolute path is gone: read inside
    q = Project.open(tmp_path / "q")
    q.clear_stage("prototypes")
    Pipeline(q).run(until="prototypes")
    assert q.stage_done("prototypes")
