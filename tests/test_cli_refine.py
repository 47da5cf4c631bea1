"""``protorefine refine`` and ``protorefine evaluate`` end to end, and every bad-input case."""

from __future__ import annotations

import csv
import json
import re
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import shapely

from protorefine.annotations import read_geojson, write_geojson
from protorefine.cli import main
from protorefine.errors import ProtorefineError
from protorefine.project import Project
from protorefine.project.pipeline import Pipeline
from protorefine.project.stages import FormatV1
from refine_synth import write_slide_case

FAST = ["--patch-size", "64", "--encoder", "colour-texture", "--device", "cpu"]


def refine_args(slide, coarse, out, *extra: str) -> list[str]:
    """``protorefine refine SLIDE --coarse COARSE --out OUT`` plus ``extra``."""
    return ["refine", str(slide), "--coarse", str(coarse), "--out", str(out), *extra]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_slide_case(tmp_path_factory.mktemp("case"), size=1024)


@pytest.fixture(scope="module")
def refined(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    rc = main(refine_args(case["slide"], case["coarse"], out, *FAST))
    assert rc == 0
    return out


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("protorefine: error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err)
    return errors[0]


@pytest.mark.slow
def test_refine_writes_outputs(refined, case):
    ann = read_geojson(refined / "s1.geojson")
    assert len(ann) >= 1 and all(a.classification == "Tumor" for a in ann)
    minx, miny, maxx, maxy = ann.union().bounds
    assert minx >= 0 and miny >= 0 and maxx <= 1024 and maxy <= 1024
    # a drawn outline, not the pixel staircase of the mask it was traced from
    edges = np.diff(
        shapely.get_coordinates(shapely.get_rings(shapely.get_parts(ann.union()))), axis=0
    )
    assert np.mean((np.abs(edges) < 1e-9).any(axis=1)) < 0.3
    raw = json.loads((refined / "s1.geojson").read_text())
    assert raw["type"] == "FeatureCollection"
    assert raw["features"][0]["properties"]["objectType"] == "annotation"
    png = iio.imread(refined / "s1_refined.png")
    assert png.shape == (16, 16) and set(np.unique(png)) <= {0, 255} and png.max() == 255
    report = json.loads((refined / "report.json").read_text())
    assert report["config"]["patch_size"] == 64 and report["device"] == "cpu"
    assert set(report["stages"]) == {
        "pixels",
        "grid",
        "features",
        "prototypes",
        "pseudo_labels",
        "classifier",
        "output",
    }
    assert report["slides"]["s1"]["tissue_patches"] > 0
    assert report["encoder"]["name"] == "colour-texture"
    import torch

    import protorefine  # the versions a re-run needs to give the same numbers

    assert report["software"]["protorefine"] == protorefine.__version__
    assert report["software"]["torch"] == torch.__version__
    assert 0 <= report["slides"]["s1"]["unsure"] <= 1
    # each region's area and greatest dimension, for QuPath and in the report (a PNG: pixels)
    figures = [
        {m["name"]: m["value"] for m in f["properties"]["measurements"]} for f in raw["features"]
    ]
    areas = [f["Area px^2"] for f in figures]
    assert areas == pytest.approx([a.geometry.area for a in ann], rel=1e-6)
    tumour = report["slides"]["s1"]["tumour"]
    assert tumour["refined"]["area_px2"] == pytest.approx(ann.union().area, rel=1e-6)
    assert tumour["refined"]["regions"] == len(ann) and tumour["coarse"]["regions"] >= 1
    changes = report["slides"]["s1"]["changes"]  # what the refinement changed, and why
    assert changes and {c["kind"] for c in changes} <= {"removed", "added"}
    assert any(c["why"].startswith("mostly prototype ") for c in changes)
    assert {c["why"] for c in changes if not c["why"].startswith("mostly ")} <= {
        "no tissue there (glass or background)"
    }
    assert changes[0]["area_px2"] == max(c["area_px2"] for c in changes)
    (row,) = csv.DictReader((refined / "tumour_measurements.csv").open())
    assert row["slide"] == "s1" and int(row["regions"]) == len(ann)
    assert float(row["area_px2"]) == pytest.approx(ann.union().area, abs=0.1)
    assert row["area_mm2"] == "" and row["mpp"] == ""  # a PNG: no pixel size, no mm


@pytest.mark.slow
def test_refine_on_a_finer_grid(case, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(refine_args(case["slide"], case["coarse"], out, *FAST, "--stride", "32"))
    assert rc == 0
    said = capsys.readouterr().out
    assert re.search(
        r"^s1: tumour \d+ regions?, [\d,]+ px², largest [\d,]+ px across \(coarse: .*\); "
        r"model unsure on \d+% of the tissue$",
        said,
        re.M,
    )
    png = iio.imread(out / "s1_refined.png")
    assert png.shape == (32, 32) and png.max() == 255  # one pixel per 32 px cell
    assert json.loads((out / "report.json").read_text())["config"]["stride"] == 32
    js = tmp_path / "eval.json"
    folders = {k: str(case[k].parent) for k in ("gt", "coarse", "slide")}
    rc = main(
        ["evaluate", "--pred", str(out), "--gt", folders["gt"], "--coarse", folders["coarse"]]
        + ["--slides", folders["slide"], "--json", str(js)]
    )
    assert rc == 0
    row = json.loads(js.read_text())["slides"][0]
    assert row["refined"]["dice"] > row["coarse"]["dice"]


@pytest.mark.slow
def test_a_batch_ends_with_the_slides_to_check_first(case, tmp_path, capsys):
    import shutil

    other = write_slide_case(tmp_path / "other", size=1024, seed=7)
    slides, coarse = [case["slide"]], [case["coarse"]]
    for src, folder in ((other["slide"], "slides"), (other["coarse"], "coarse")):
        (tmp_path / folder).mkdir(exist_ok=True)
        target = tmp_path / folder / f"s2{src.suffix}"
        shutil.copy(src, target)
        (slides if folder == "slides" else coarse).append(target)
    out = tmp_path / "out"
    argv = ["refine", *map(str, slides), "--coarse", *map(str, coarse), "--out", str(out), *FAST]
    assert main(argv) == 0
    said = capsys.readouterr().out.splitlines()
    unsure = {
        k: v["unsure"] for k, v in json.loads((out / "report.json").read_text())["slides"].items()
    }
    order = sorted(unsure, key=lambda k: -unsure[k])
    expected = ", ".join(f"{k} ({unsure[k]:.0%})" for k in order)
    assert f"check first (least sure): {expected}" in said


@pytest.mark.slow
def test_rerun_resumes_without_recomputing(refined, case):
    rc = main(
        [
            "refine",
            str(case["slide"]),
            "--coarse",
            str(case["coarse"]),
            "--out",
            str(refined),
            *FAST,
        ]
    )
    assert rc == 0
    report = json.loads((refined / "report.json").read_text())
    assert not any(s["ran_now"] for s in report["stages"].values())


@pytest.mark.slow
def test_evaluate_prints_table(refined, case, capsys, tmp_path):
    capsys.readouterr()
    js = tmp_path / "eval.json"
    rc = main(
        [
            "evaluate",
            "--pred",
            str(refined),
            "--gt",
            str(case["gt"].parent),
            "--coarse",
            str(case["coarse"].parent),
            "--slides",
            str(case["slide"].parent),
            "--json",
            str(js),
        ]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert "s1" in out and "mean" in out and "ref dice" in out and "coa dice" in out
    res = json.loads(js.read_text())
    row = res["slides"][0]
    assert 0 < row["refined"]["dice"] <= 1 and 0 < row["coarse"]["dice"] <= 1


def test_slide_without_coarse_names_it(case, tmp_path, capsys):
    other = tmp_path / "other.geojson"
    shutil.copy(case["coarse"], other)
    rc = main(refine_args(case["slide"], other, tmp_path / "o", *FAST))
    assert rc == 2
    line = one_error_line(capsys)
    assert "s1.png" in line and "'s1'" in line and "other" in line


@pytest.mark.parametrize(
    ("classification", "size", "message"),
    [("Exclusion", 300, "no tumour region"), ("Tumor", 1024, "covers all tissue")],
    ids=["no-tumour-class", "covers-all-tissue"],
)
def test_unusable_coarse_annotation(case, tmp_path, capsys, classification, size, message):
    from shapely.geometry import box

    from protorefine.annotations import Annotation, AnnotationSet

    bad = tmp_path / "s1.geojson"
    write_geojson(AnnotationSet([Annotation(box(0, 0, size, size), classification)]), bad)
    rc = main(refine_args(case["slide"], bad, tmp_path / "o", *FAST))
    assert rc == 2
    assert message in one_error_line(capsys)


@pytest.mark.slow
def test_refine_says_what_it_changed_in_the_coarse_file(refined, case, tmp_path, capsys):
    """Notes on reading the coarse file reach the terminal: a class left out, parts clipped."""
    from shapely.geometry import box

    from protorefine.annotations import Annotation, AnnotationSet, read_annotations

    coarse = read_annotations(case["coarse"]).annotations
    extra = [
        Annotation(box(900, 900, 1100, 1100), "Tumor"),
        Annotation(box(0, 0, 50, 50), "Stroma"),
    ]
    path = tmp_path / "s1.geojson"
    write_geojson(AnnotationSet([*coarse, *extra]), path)
    args = refine_args(case["slide"], path, tmp_path / "o", *FAST)
    assert main([*args, "--project", str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err
    clipped = rf"{re.escape(str(path))}: clipped (\d+) annotation\(s\) partly outside the 1024x1024"
    found = re.search(clipped, err)
    assert found and int(found.group(1)) >= 1  # the one added here, and any of the simulation's
    assert "not used, as neither tumour nor exclusion: 'Stroma' (1)" in err


def test_slide_without_tissue(case, tmp_path, capsys):
    blank = tmp_path / "blank.png"
    iio.imwrite(blank, np.full((1024, 1024, 3), 245, np.uint8))
    coarse = tmp_path / "blank.geojson"
    shutil.copy(case["coarse"], coarse)
    rc = main(refine_args(blank, coarse, tmp_path / "o", *FAST))
    assert rc == 2
    assert "no tissue" in one_error_line(capsys)


def test_unknown_encoder(case, tmp_path, capsys):
    args = refine_args(
        case["slide"],
        case["coarse"],
        tmp_path / "o",
        "--patch-size",
        "64",
        "--encoder",
        "nope",
        "--device",
        "cpu",
    )
    assert main(args) == 2
    line = one_error_line(capsys)
    assert "unknown encoder 'nope'" in line and "colour-texture" in line
    assert not (tmp_path / "o").exists()  # refused before anything was written


@pytest.mark.slow
def test_encoder_typo_on_a_finished_project_keeps_its_results(refined, case, tmp_path, capsys):
    proj = tmp_path / "proj"
    shutil.copytree(refined / "project", proj)
    args = refine_args(case["slide"], case["coarse"], tmp_path / "o", *FAST, "--project", str(proj))
    args[args.index("colour-texture")] = "colour-texture+efficientnet-lit0"
    assert main(args) == 2
    assert "unknown encoder 'efficientnet-lit0'" in one_error_line(capsys)
    project = Project.open(proj)
    assert project.config.encoder == "colour-texture"
    assert all(project.stage_done(s) for s in Pipeline.STAGES)


@pytest.mark.slow
def test_damaged_checkpoint(refined, case, tmp_path, capsys):
    proj = tmp_path / "proj"
    shutil.copytree(refined / "project", proj)
    (proj / "stages" / "classifier" / "model.pt").write_bytes(b"garbage")
    (proj / "stages" / "output" / "done.json").unlink()
    args = refine_args(case["slide"], case["coarse"], tmp_path / "o", "--project", str(proj), *FAST)
    assert main(args) == 2
    assert "model.pt: checkpoint does not load" in one_error_line(capsys)


@pytest.mark.slow
def test_refine_a_real_svs_tightens_the_outline(slides_dir, tmp_path):
    """A quick outline around one tumour region of the TCGA slide (JPEG 2000 SVS): the refined
    outline stays in that region and drops part of it (the stroma), as a pathologist expects."""
    from shapely.geometry import Polygon

    from protorefine.annotations import Annotation, AnnotationSet

    slide = slides_dir / "TCGA-CR-7395-01A-01-TS1.svs"
    corners = [(146, 1528), (546, 873), (1274, 728), (1601, 1092), (1528, 2183), (1092, 2620)]
    outline = Polygon([*corners, (437, 2474), (146, 2038)])
    coarse = tmp_path / f"{slide.stem}.geojson"
    write_geojson(AnnotationSet([Annotation(outline)]), coarse)
    out = tmp_path / "out"
    grid = ["--patch-size", "64", "--level", "1"]
    assert main(refine_args(slide, coarse, out, *grid, "--encoder", "colour-texture")) == 0
    refined = read_geojson(out / f"{slide.stem}.geojson").union()
    assert refined.is_valid and not refined.is_empty
    assert refined.difference(outline.buffer(128)).area < 0.02 * refined.area
    assert 0.25 < refined.area / outline.area < 0.9


@pytest.mark.slow
def test_threshold_rerun_redraws_only_the_outline(refined, case, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(refined, out)
    before = read_geojson(out / "s1.geojson").union().area
    args = refine_args(case["slide"], case["coarse"], out, *FAST, "--threshold", "0.85")
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert [k for k, s in report["stages"].items() if s["ran_now"]] == ["output", "pixels"]
    assert report["config"]["threshold"] == 0.85
    assert read_geojson(out / "s1.geojson").union().area < before


@pytest.mark.slow
def test_refine_writes_an_ome_zarr_copy_with_the_labels(refined, case, tmp_path, capsys):
    """``--ome-zarr``: the slide as OME-Zarr with the refined outline as NGFF labels, which the
    napari reader shows over it; a rerun keeps the copy; a folder in the way is refused."""
    from protorefine.annotations import rasterize
    from protorefine.napari.reader import read_paths
    from protorefine.slides import open_slide

    out = tmp_path / "out"
    args = refine_args(case["slide"], case["coarse"], out, *FAST, "--ome-zarr")
    assert main([*args, "--project", str(refined / "project")]) == 0
    copy = out / "s1.ome.zarr"
    source = iio.imread(case["slide"])
    assert np.array_equal(np.asarray(open_slide(copy).levels[0]), source[..., :3])
    layers = read_paths(str(copy))
    assert [kind for _, _, kind in layers] == ["image", "labels"]
    labels, meta, _ = layers[1]
    # the labels hold exactly the exported outline, at a quarter patch, on the image's own
    # pixel grid (scale only, as the image: every NGFF reader places them right)
    outline = read_geojson(out / "s1.geojson")
    cells = rasterize(outline, (1024, 1024), 16).astype(np.uint8)
    level0 = np.asarray(labels[0] if meta["multiscale"] else labels).astype(bool)
    assert np.array_equal(level0, np.kron(cells, np.ones((16, 16), np.uint8)).astype(bool))
    assert tuple(meta["scale"]) == (1.0, 1.0) and tuple(meta["translate"]) == (0.0, 0.0)
    stamp = (copy / "0" / ".zarray").stat().st_mtime_ns
    assert main([*args, "--project", str(refined / "project")]) == 0
    assert (copy / "0" / ".zarray").stat().st_mtime_ns == stamp  # kept, not converted again
    capsys.readouterr()
    other = tmp_path / "other"
    (other / "s1.ome.zarr").mkdir(parents=True)
    (other / "s1.ome.zarr" / "notes.txt").write_text("mine")
    args = refine_args(case["slide"], case["coarse"], other, *FAST, "--ome-zarr")
    assert main([*args, "--project", str(refined / "project")]) == 2
    assert "is not an OME-Zarr copy of s1.png" in one_error_line(capsys)
    assert (other / "s1.ome.zarr" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_labels_export_of_a_plain_slide_needs_a_target_and_stops_clean_on_cancel(refined, tmp_path):
    from protorefine.errors import CancelledError
    from protorefine.project.labels_export import export_refined_labels

    project = Project.open(refined / "project")
    with pytest.raises(ProtorefineError, match="s1.png: not an OME-Zarr slide; name a .zarr"):
        export_refined_labels(project, "s1")
    target = tmp_path / "s1.ome.zarr"
    with pytest.raises(CancelledError):
        export_refined_labels(project, "s1", target, cancel=lambda: True)
    assert not target.exists() and not list(tmp_path.iterdir())
    assert project.stage_done("output")


@pytest.mark.slow
def test_a_moved_slide_keeps_its_project(refined, case, tmp_path):
    """A slide file moved (another folder, another computer) is found again: relocating it keeps
    outlines and every finished stage; a file of another size is refused; the CLI given the
    moved file resumes without recomputing."""
    from protorefine.errors import ProtorefineError

    folder = tmp_path / "project"
    shutil.copytree(refined / "project", folder)
    moved = tmp_path / "elsewhere" / "s1.png"
    moved.parent.mkdir()
    shutil.copy(case["slide"], moved)
    project = Project.open(folder)
    coarse_before = project.coarse("s1").union()
    project.relocate_slide("s1", moved)
    again = Project.open(folder)
    assert again.slide("s1").path == str(moved.resolve()) and not again.slide_missing("s1")
    assert all(again.stage_done(s) for s in Pipeline.STAGES)
    assert again.coarse("s1").union().equals(coarse_before)
    small = tmp_path / "small.png"
    iio.imwrite(small, iio.imread(case["slide"])[:512])
    with pytest.raises(
        ProtorefineError, match=r"small.png: 1024 × 512 px, but slide 's1' is 1024 × 1024 px"
    ):
        again.relocate_slide("s1", small)
    assert Project.open(folder).slide("s1").path == str(moved.resolve())
    # the command line, given the slide at its new place, resumes
    args = refine_args(moved, case["coarse"], tmp_path / "out", *FAST, "--project", str(folder))
    (folder.parent / "elsewhere" / "s1.png").rename(tmp_path / "s1.png")  # moved once more
    args[1] = str(tmp_path / "s1.png")
    assert main(args) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert not any(s["ran_now"] for s in report["stages"].values())


@pytest.mark.slow
def test_ome_zarr_output_for_an_ome_zarr_slide_leaves_the_input_alone(case, tmp_path):
    from protorefine.slides import convert_to_ome_zarr

    slide = convert_to_ome_zarr(case["slide"], tmp_path / "in" / "s1.zarr")
    out = tmp_path / "out"
    assert main(refine_args(slide, case["coarse"], out, *FAST, "--ome-zarr")) == 0
    assert (out / "s1.ome.zarr" / "labels" / "refined").is_dir()
    assert not (slide / "labels").exists()  # the user's slide is not written to


@pytest.mark.slow
def test_a_project_from_before_path_free_fingerprints_keeps_its_results(refined, tmp_path):
    """Stage records written when fingerprints held slide paths are adopted, not recomputed."""
    folder = tmp_path / "project"
    shutil.copytree(refined / "project", folder)
    old = Project.open(folder)
    for stage in Pipeline.STAGES:  # as an earlier version wrote them
        marker = old.stage_dir(stage) / "done.json"
        info = json.loads(marker.read_text())
        info["fingerprint"] = old.fingerprint(stage, fmt=FormatV1())
        marker.write_text(json.dumps(info))
    project = Project.open(folder)
    assert all(project.stage_done(s) for s in Pipeline.STAGES)
    for stage in Pipeline.STAGES:  # and rewritten in today's terms
        info = json.loads((project.stage_dir(stage) / "done.json").read_text())
        assert info["fingerprint"] == project.fingerprint(stage)
    project.set_config(project.config.replace(threshold=0.7))  # a real change still tells
    assert not project.stage_done("output") and project.stage_done("classifier")


@pytest.mark.slow
def test_refine_writes_asap_xml_too(refined, case, tmp_path):
    """``--asap-xml``: the same outline as ASAP XML, for CAMELYON-style workflows."""
    from protorefine.annotations import read_asap_xml

    out = tmp_path / "out"
    args = refine_args(case["slide"], case["coarse"], out, *FAST, "--asap-xml")
    assert main([*args, "--project", str(refined / "project")]) == 0
    from protorefine.annotations import tumour_geometry

    geo = tumour_geometry(read_geojson(out / "s1.geojson"))
    xml = tumour_geometry(read_asap_xml(out / "s1.xml"))  # holes are Exclusion polygons there
    assert geo.symmetric_difference(xml).area < 1e-3 * geo.area
    project = Project.open(refined / "project")
    with pytest.raises(ProtorefineError, match=r"s1\.txt: an outline is exported as \.geojson"):
        project.export_outline("s1", tmp_path / "s1.txt")
    assert not (tmp_path / "s1.txt").exists()


@pytest.mark.slow
def test_slide_mpp_for_files_that_record_none(case, tmp_path, capsys):
    """``--slide-mpp``: a PNG's pixel size given on the command line; figures come in microns.
    A value no scanner makes is refused before anything runs."""
    out = tmp_path / "out"
    args = refine_args(case["slide"], case["coarse"], out, *FAST)
    assert main([*args, "--slide-mpp", "-0.5"]) == 2
    assert "-0.5: microns per pixel must be between 0.01 and 100" in one_error_line(capsys)
    assert not (out / "project").exists()
    assert main([*args, "--slide-mpp", "0.5", "--mpp", "0.5"]) == 0
    said = capsys.readouterr().out
    assert re.search(r"^s1: tumour .* (µm|mm) across \(coarse: ", said, re.M), said
    report = json.loads((out / "report.json").read_text())
    slide = report["slides"]["s1"]
    assert slide["mpp"] == 0.5 and slide["tumour"]["refined"]["area_um2"] > 0
    geo = json.loads((out / "s1.geojson").read_text())
    assert geo["features"][0]["properties"]["measurements"][0]["name"] == "Area µm^2"
    (row,) = csv.DictReader((out / "tumour_measurements.csv").open())
    assert row["mpp"] == "0.5" and row["mpp_set_by_hand"] == "True"
    assert float(row["area_mm2"]) == pytest.approx(float(row["area_px2"]) * 0.25e-6, rel=1e-5)


@pytest.mark.slow
def test_slide_mpp_leaves_a_recorded_pixel_size_alone(case, tmp_path, capsys):
    """A file that records its pixel size keeps it; ``--slide-mpp`` says it was not used."""
    import tifffile

    image = iio.imread(case["slide"])[..., :3]
    slide = tmp_path / "s1.tif"
    tifffile.imwrite(slide, image, resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    out = tmp_path / "out"
    assert main([*refine_args(slide, case["coarse"], out, *FAST), "--slide-mpp", "0.5"]) == 0
    assert "records 0.25 µm/px; --slide-mpp 0.5 is for files that record none" in (
        capsys.readouterr().err
    )
    assert json.loads((out / "report.json").read_text())["slides"]["s1"]["mpp"] == 0.25


@pytest.mark.slow
def test_export_writes_the_accepted_outline_with_hand_edits(refined, case, tmp_path, capsys):
    """``export``: a project's outlines as refine writes them, hand edits included, plus a mask."""
    from shapely.geometry import box

    from protorefine.annotations import Annotation, AnnotationSet
    from protorefine.annotations.masks import read_mask_array

    project_dir = tmp_path / "project"
    shutil.copytree(refined / "project", project_dir)
    project = Project.open(project_dir)
    edit = AnnotationSet([Annotation(box(100, 200, 400, 600), "Tumor")])
    project.set_outline_edit("s1", edit)  # as the Review pane keeps a hand edit
    capsys.readouterr()

    out = tmp_path / "out"
    args = ["export", str(project_dir), "--out", str(out), "--asap-xml", "--mask-downsample", "8"]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "s1: tumour 1 region" in said and "exported 1 slide(s)" in said
    assert read_geojson(out / "s1.geojson").union().equals_exact(box(100, 200, 400, 600), 1e-6)
    assert (out / "s1.xml").exists() and (out / "tumour_measurements.csv").exists()
    assert (out / "s1_refined.png").exists()
    mask, d, _ = read_mask_array(out / "s1_mask.tif")
    assert d == 8 and mask.shape == (128, 128)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (25, 74, 12, 49)
    assert not (out / "report.json").exists()  # nothing was run


@pytest.mark.slow
def test_export_bad_input(refined, case, tmp_path, capsys):
    """Not a project, a project not refined yet: one line each."""
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a protorefine project" in one_error_line(capsys)

    fresh = Project.create(tmp_path / "fresh")
    fresh.add_slide(case["slide"])
    assert main(["export", str(fresh.folder), "--out", str(tmp_path / "o")]) == 2
    assert "no slide has a refined outline yet" in one_error_line(capsys)


def test_a_mask_too_large_for_memory_is_refused_with_the_downsample_that_fits(tmp_path):
    from shapely.geometry import box

    from protorefine.annotations import Annotation, AnnotationSet, write_mask

    big = AnnotationSet([Annotation(box(0, 0, 10, 10), "Tumor")])
    with pytest.raises(
        ProtorefineError, match=r"m\.tif: .* 100000x80000 slide .*use downsample 4 or more"
    ):
        write_mask(big, tmp_path / "m.tif", (80000, 100000), 1)
    assert not (tmp_path / "m.tif").exists()


def test_an_output_folder_that_cannot_be_made_is_refused_before_the_run(case, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = refine_args(case["slide"], case["coarse"], blocker / "out", *FAST)
    assert main([*args, "--project", str(tmp_path / "p")]) == 2
    assert "a-file/out: cannot create the output folder" in one_error_line(capsys)
    assert not (tmp_path / "p").exists()  # refused before anything ran


@pytest.mark.slow
def test_a_full_disk_while_writing_is_one_line(refined, tmp_path, capsys, monkeypatch):
    import protorefine.cli.refine as run

    def full(*_args, **_kwargs):
        raise OSError(28, "No space left on device", str(tmp_path / "o" / "s1.geojson"))

    monkeypatch.setattr(run, "write_outputs", full)
    assert main(["export", str(refined / "project"), "--out", str(tmp_path / "o")]) == 2
    assert one_error_line(capsys).endswith("o/s1.geojson: No space left on device")


@pytest.mark.slow
def test_export_reviewed_only_takes_the_ticked_outlines(refined, tmp_path, capsys):
    project_dir = tmp_path / "project"
    shutil.copytree(refined / "project", project_dir)
    args = ["export", str(project_dir), "--out", str(tmp_path / "o"), "--reviewed-only"]
    assert main(args) == 2
    assert "no outline is ticked as reviewed" in one_error_line(capsys)
    assert not (tmp_path / "o" / "s1.geojson").exists()
    Project.open(project_dir).set_reviewed("s1", True)  # the pathologist's tick
    assert main(args) == 0
    assert (tmp_path / "o" / "s1.geojson").exists()


@pytest.mark.slow
def test_results_never_overwrite_the_coarse_file(refined, case, tmp_path, capsys):
    """``--out`` the folder of the coarse files: refine and export stop before writing over
    the pathologist's outline (a rerun or re-export over earlier results is fine)."""
    work = tmp_path / "work"
    work.mkdir()
    coarse = work / "s1.geojson"
    shutil.copy(case["coarse"], coarse)
    before = coarse.read_bytes()
    args = refine_args(case["slide"], coarse, work, *FAST)
    assert main([*args, "--project", str(tmp_path / "p")]) == 2
    assert "would overwrite the coarse annotation s1.geojson" in one_error_line(capsys)
    assert coarse.read_bytes() == before and not (tmp_path / "p").exists()

    assert main(["export", str(refined / "project"), "--out", str(work)]) == 2
    assert "holds the coarse outline of slide 's1'" in one_error_line(capsys)
    assert coarse.read_bytes() == before

    again = tmp_path / "again"
    for _ in range(2):
        assert main(["export", str(refined / "project"), "--out", str(again)]) == 0


@pytest.mark.slow
def test_colour_prototypes_off_redraws_only_the_outline(refined, case, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(refined, out)
    before = read_geojson(out / "s1.geojson").union()
    args = refine_args(case["slide"], case["coarse"], out, *FAST, "--colour-prototypes", "0")
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert [k for k, s in report["stages"].items() if s["ran_now"]] == ["output", "pixels"]
    assert report["config"]["colour_prototypes"] == 0
    after = read_geojson(out / "s1.geojson").union()
    assert after.symmetric_difference(before).area > 0.01 * before.area


def _user_folder(path):
    path.mkdir(parents=True)
    (path / "keep.txt").write_text("the user's work")
    return path


@pytest.mark.slow
def test_evaluate_json_into_an_existing_folder_is_refused_and_keeps_it(
    refined, case, capsys, tmp_path
):
    folder = _user_folder(tmp_path / "results")
    args = ["evaluate", "--pred", str(refined), "--gt", str(case["gt"].parent)]
    args += ["--slides", str(case["slide"].parent), "--json", str(folder)]
    assert main(args) == 2
    assert "results: is a folder" in one_error_line(capsys)
    assert (folder / "keep.txt").read_text() == "the user's work"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["s1.geojson", "tumour_measurements.csv", "s1_refined.png"])
def test_export_never_deletes_a_folder_named_like_a_result(refined, tmp_path, capsys, name):
    out = tmp_path / "o"
    folder = _user_folder(out / name)
    assert main(["export", str(refined / "project"), "--out", str(out)]) == 2
    assert f"{name}: is a folder" in one_error_line(capsys)
    assert (folder / "keep.txt").read_text() == "the user's work"
    assert sorted(p.name for p in out.iterdir()) == [name]  # refused before anything was written


@pytest.mark.slow
def test_refine_refuses_a_folder_named_like_a_result_before_the_run(case, tmp_path, capsys):
    out = tmp_path / "o"
    folder = _user_folder(out / "report.json")
    args = refine_args(case["slide"], case["coarse"], out, *FAST)
    assert main([*args, "--project", str(tmp_path / "p")]) == 2
    assert "report.json: is a folder" in one_error_line(capsys)
    assert (folder / "keep.txt").exists() and not (tmp_path / "p").exists()


@pytest.mark.slow
def test_a_same_stem_geojson_protorefine_did_not_write_is_never_overwritten(
    refined, case, tmp_path, capsys
):
    """``--out`` holding ``s1.geojson`` that is not an earlier result (here the ground
    truth): refine (before the run) and export stop and name it; earlier results are
    recognised by what protorefine writes into them and are replaced as before."""
    out = tmp_path / "o"
    out.mkdir()
    truth = out / "s1.geojson"
    shutil.copy(case["gt"], truth)
    before = truth.read_bytes()
    args = refine_args(case["slide"], case["coarse"], out, *FAST)
    assert main([*args, "--project", str(tmp_path / "p")]) == 2
    line = one_error_line(capsys)
    assert "o/s1.geojson: protorefine did not write this file" in line
    assert truth.read_bytes() == before and not (tmp_path / "p").exists()

    assert main(["export", str(refined / "project"), "--out", str(out)]) == 2
    assert "o/s1.geojson: protorefine did not write this file" in one_error_line(capsys)
    assert truth.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["s1.geojson"]

    # an earlier result (the same outline, written by protorefine) is replaced
    assert main(["export", str(refined / "project"), "--out", str(out / "again")]) == 0
    assert main(["export", str(refined / "project"), "--out", str(out / "again")]) == 0
    assert main(refine_args(case["slide"], case["coarse"], refined, *FAST)) == 0


@pytest.mark.parametrize("value", ["1", "0"])
def test_a_threshold_that_cannot_draw_an_outline_is_refused_before_the_run(
    case, tmp_path, capsys, value
):
    args = refine_args(case["slide"], case["coarse"], tmp_path / "o", *FAST)
    assert main([*args, "--project", str(tmp_path / "p"), "--threshold", value]) == 2
    assert f"threshold={float(value)}: must be above 0 and below 1" in one_error_line(capsys)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize(
    ("option", "value", "allowed"),
    [
        ("--mpp", "inf", "between 0.01 and 100"),
        ("--mpp", "nan", "between 0.01 and 100"),
        ("--mpp", "0", "between 0.01 and 100"),
        ("--seed", str(2**70), "0 to 4294967295"),
        ("--seed", "-1", "0 to 4294967295"),
        ("--mask-downsample", "inf", "from 1 (full resolution) to 65536"),
        ("--mask-downsample", "nan", "from 1 (full resolution) to 65536"),
        ("--mask-downsample", "0.5", "from 1 (full resolution) to 65536"),
    ],
)
def test_out_of_range_numbers_are_refused_at_parsing(
    tmp_path, capsys, option, value, allowed
) -> None:
    """``--mpp inf``, ``--seed 2**70`` and ``--mask-downsample inf`` gave tracebacks mid-run
    (or after it): refused before anything runs."""
    args = refine_args(tmp_path / "s.png", tmp_path / "s.geojson", tmp_path / "out")
    with pytest.raises(SystemExit) as info:
        main([*args, option, value])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {option}" in err and allowed in err and value in err
    assert not (tmp_path / "out").exists()


def test_parser_mpp_range_is_the_projects() -> None:
    from protorefine.cli import _MPP_RANGE
    from protorefine.project.store import MPP_RANGE

    assert _MPP_RANGE == MPP_RANGE


def test_project_that_is_a_file_is_named_as_a_file(case, tmp_path, capsys) -> None:
    """``--project FILE``: it said "folder is not empty"; it says the path is a file."""
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    rc = main(
        refine_args(case["slide"], case["coarse"], tmp_path / "out", *FAST, "--project", str(f))
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert str(f) in err and "is a file, not a folder" in err and "not empty" not in err
    assert f.read_text() == "mine"


def test_torchscript_encoders_are_documented_as_code_to_trust() -> None:
    """A TorchScript file runs code by design: said where ``--encoder FILE`` is documented."""
    from pathlib import Path

    from protorefine.cli import build_parser

    root = Path(__file__).resolve().parents[1]
    helps = build_parser()._subparsers._group_actions[0].choices["refine"].format_help()  # type: ignore[union-attr]
    for text in (
        " ".join(helps.split()),
        " ".join((root / "README.md").read_text().split()),
        " ".join((root / "docs" / "user-guide.md").read_text().split()),
    ):
        assert "TorchScript file runs code" in text and "only files you trust" in text
