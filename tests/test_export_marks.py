"""``--out`` holding a same-stem ASAP ``.xml`` or ``_mask.tif`` that protorefine did not write
(a ground truth, a mask of the user's): refine (before the run) and export refuse it by
name; files protorefine wrote carry its mark and are replaced as before."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from protorefine.annotations import read_annotations, read_geojson, write_asap_xml
from protorefine.annotations.asap import WRITER_ATTR, to_asap_bytes, written_by_protorefine
from protorefine.cli import main
from refine_synth import write_slide_case

FAST = ["--patch-size", "64", "--encoder", "colour-texture", "--device", "cpu"]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_slide_case(tmp_path_factory.mktemp("case"), size=1024)


@pytest.fixture(scope="module")
def refined(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    args = ["refine", str(case["slide"]), "--coarse", str(case["coarse"]), "--out", str(out)]
    assert main([*args, *FAST, "--asap-xml", "--mask-downsample", "8"]) == 0
    return out


def _error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("protorefine: error:")]
    assert len(lines) == 1 and "Traceback" not in err
    return lines[0]


def test_asap_exports_carry_a_mark_that_reads_back_the_same(case, tmp_path) -> None:
    """The mark is one attribute of the root, which ASAP's reader (XmlRepository::loadFromRepo
    reads the Annotations and AnnotationGroups children only) ignores and its writer drops."""
    truth = read_geojson(case["gt"])
    plain, marked = tmp_path / "plain.xml", tmp_path / "marked.xml"
    write_asap_xml(truth, plain)
    write_asap_xml(truth, marked, writer="0.1.0")
    assert f'<ASAP_Annotations {WRITER_ATTR}="0.1.0">' in marked.read_text()
    assert written_by_protorefine(marked) and not written_by_protorefine(plain)
    assert to_asap_bytes(truth, "0.1.0").replace(f' {WRITER_ATTR}="0.1.0"'.encode(), b"") == (
        plain.read_bytes()
    )
    a, b = read_annotations(plain), read_annotations(marked)
    assert a.union().equals(b.union()) and a.classes() == b.classes()
    (tmp_path / "broken.xml").write_text("<ASAP_Annotations")
    assert not written_by_protorefine(tmp_path / "broken.xml")


@pytest.mark.slow
def test_a_same_stem_asap_xml_protorefine_did_not_write_is_never_overwritten(
    refined, case, tmp_path, capsys
) -> None:
    out = tmp_path / "o"
    out.mkdir()
    truth = out / "s1.xml"
    write_asap_xml(read_geojson(case["gt"]), truth)  # the ground truth, as ASAP saved it
    before = truth.read_bytes()
    args = ["refine", str(case["slide"]), "--coarse", str(case["coarse"]), "--out", str(out)]
    args += [*FAST, "--asap-xml", "--project", str(tmp_path / "p")]
    assert main(args) == 2
    assert "o/s1.xml: protorefine did not write this file" in _error(capsys)
    assert truth.read_bytes() == before and not (tmp_path / "p").exists()  # before the run

    export = ["export", str(refined / "project"), "--out", str(out), "--asap-xml"]
    assert main(export) == 2
    assert "o/s1.xml: protorefine did not write this file" in _error(capsys)
    assert truth.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["s1.xml"]  # nothing written

    # protorefine's own export (refine wrote refined/s1.xml) is replaced, again and again
    assert written_by_protorefine(refined / "s1.xml")
    assert main(["export", str(refined / "project"), "--out", str(refined), "--asap-xml"]) == 0
    assert main(["export", str(refined / "project"), "--out", str(refined), "--asap-xml"]) == 0


@pytest.mark.slow
def test_a_same_stem_mask_protorefine_did_not_write_is_never_overwritten(
    refined, case, tmp_path, capsys
) -> None:
    out = tmp_path / "o"
    out.mkdir()
    theirs = out / "s1_mask.tif"
    tifffile.imwrite(theirs, np.zeros((128, 128), np.uint8))  # a mask of the user's
    before = theirs.read_bytes()
    args = ["refine", str(case["slide"]), "--coarse", str(case["coarse"]), "--out", str(out)]
    args += [*FAST, "--mask-downsample", "8", "--project", str(tmp_path / "p")]
    assert main(args) == 2
    assert "o/s1_mask.tif: protorefine did not write this file" in _error(capsys)
    assert theirs.read_bytes() == before and not (tmp_path / "p").exists()

    export = ["export", str(refined / "project"), "--out", str(out), "--mask-downsample", "8"]
    assert main(export) == 2
    assert "o/s1_mask.tif: protorefine did not write this file" in _error(capsys)
    assert theirs.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["s1_mask.tif"]

    again = tmp_path / "again"  # protorefine's own masks are replaced
    shutil.copytree(refined, again)
    export = ["export", str(refined / "project"), "--out", str(again), "--mask-downsample", "8"]
    assert main(export) == 0 and main(export) == 0
