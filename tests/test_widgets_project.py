"""GUI tests of the "Project and slides" and "Coarse annotation" dock widgets, driven as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gui

MPP = 0.25


def _pyramid_tiff(path: Path, size: tuple[int, int] = (1024, 768), seed: int = 0) -> Path:
    """A small tiled pyramidal RGB TIFF with microns per pixel."""
    import tifffile

    rng = np.random.default_rng(seed)
    img = rng.integers(120, 255, (*size, 3), dtype=np.uint8)
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            img,
            tile=(256, 256),
            subifds=1,
            resolution=(1e4 / MPP, 1e4 / MPP),
            resolutionunit="CENTIMETER",
            photometric="rgb",
        )
        tif.write(img[::2, ::2], tile=(256, 256), subfiletype=1, photometric="rgb")
    return path


def _geojson(path: Path, x0: float, y0: float, x1: float, y1: float) -> Path:
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    feature = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {"objectType": "annotation", "classification": {"name": "Tumor"}},
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    return path


@pytest.fixture(autouse=True)
def _keep_reader_preferences():
    """The widget sets napari's reader preferences; put the user's back afterwards."""
    from napari.settings import get_settings

    before = dict(get_settings().plugins.extension2reader)
    yield
    get_settings().plugins.extension2reader = before


@pytest.fixture
def notes():
    """Collects napari notifications shown during the test as (severity, message)."""
    from napari.utils.notifications import notification_manager

    seen: list[tuple[str, str]] = []

    def record(event) -> None:
        seen.append((str(event.severity), str(event.message)))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def slides(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "slides"
    folder.mkdir()
    return [
        _pyramid_tiff(folder / "case_a.tif", (1024, 768), 0),
        _pyramid_tiff(folder / "case_b.tif", (512, 1024), 1),
    ]


@pytest.fixture
def widgets(make_napari_viewer):
    from protorefine.napari.widgets.coarse import CoarseWidget
    from protorefine.napari.widgets.project import ProjectWidget

    viewer = make_napari_viewer()
    project_widget = ProjectWidget(viewer)
    coarse_widget = CoarseWidget(viewer)
    viewer.window.add_dock_widget(project_widget, name="Project and slides")
    viewer.window.add_dock_widget(coarse_widget, name="Coarse annotation")
    return viewer, project_widget, coarse_widget


def _images(viewer) -> list:
    from napari.layers import Image

    return [layer for layer in viewer.layers if isinstance(layer, Image)]


def test_create_add_list_and_show(widgets, slides, tmp_path: Path) -> None:
    viewer, pw, _ = widgets
    pw.create_project(tmp_path / "proj")
    added = pw.add_slides(slides)
    assert added == ["case_a", "case_b"]
    rows = [
        [pw.table.item(r, c).text() for c in range(pw.table.columnCount())]
        for r in range(pw.table.rowCount())
    ]
    assert rows == [  # nothing refined yet: no tumour area, nothing reviewed, no cluster task
        ["case_a", "0.250", "", "", "", ""],
        ["case_b", "0.250", "", "", "", ""],
    ]
    assert pw.table.isColumnHidden(pw.table.columnCount() - 1)  # no cluster set: not shown
    assert "768 × 1024 px, 2 level(s)" in pw.table.item(0, 0).toolTip()  # size on hovering
    assert "768 × 1024 px, 2 level(s)" in pw.status.text()  # and under the list
    # the first slide is on screen, as one multiscale image with its coarse layer over it
    (image,) = _images(viewer)
    assert image.name == "case_a" and image.multiscale
    assert tuple(image.scale) == pytest.approx((MPP, MPP))
    assert "coarse" in viewer.layers
    assert tuple(viewer.layers["coarse"].scale) == pytest.approx((MPP, MPP))


def test_switching_slides_swaps_layers(widgets, slides, tmp_path: Path) -> None:
    viewer, pw, _ = widgets
    pw.create_project(tmp_path / "proj")
    pw.add_slides(slides)
    pw.table.selectRow(1)  # as a click on the second row
    (image,) = _images(viewer)
    assert image.name == "case_b"
    assert image.data[0].shape[:2] == (512, 1024)
    assert [layer.name for layer in viewer.layers].count("coarse") == 1
    saved = json.loads((tmp_path / "proj" / "ui_state.json").read_text())
    assert saved["current_slide"] == "case_b"


def test_switching_between_pyramid_and_plain_image(
    widgets, slides, tmp_path: Path, notes, qtbot
) -> None:
    """A plain image (one level, no mpp) after a pyramid and back: the image layer is
    replaced in place, and every layer of the slide moves between micrometres and pixels
    together (napari otherwise warns about mixed units and ignores them)."""
    from skimage.io import imsave

    viewer, pw, _ = widgets
    plain = tmp_path / "slides" / "plain.png"
    imsave(plain, np.random.default_rng(2).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    pw.create_project(tmp_path / "proj")
    pw.add_slides([slides[0], plain])
    steps = ((1, "plain", False, 1.0, "pixel"), (0, "case_a", True, MPP, "micrometer"))
    for row, name, multiscale, scale, unit in steps * 2:
        pw.table.selectRow(row)
        qtbot.waitUntil(lambda: not pw.state.placeholders_pending, timeout=10_000)
        (image,) = [layer for layer in _images(viewer) if layer.rgb]
        assert (image.name, image.multiscale) == (name, multiscale)
        assert viewer.layers.index(image) == 0  # still under the outline
        for layer in (image, viewer.layers["coarse"]):
            assert tuple(layer.scale) == pytest.approx((scale, scale))
        assert len(viewer.layers) > 2  # the result placeholders are there too
        assert {str(u) for layer in viewer.layers for u in layer.units} == {unit}
    assert not [m for _, m in notes if "units" in m.lower()]


def test_reopen_restores_slide_and_view(
    make_napari_viewer, widgets, slides, tmp_path: Path
) -> None:
    from protorefine.napari.widgets.project import ProjectWidget

    viewer, pw, _ = widgets
    pw.create_project(tmp_path / "proj")
    pw.add_slides(slides)
    pw.select_slide("case_b")
    viewer.scene.camera.center = (60.0, 90.0)
    viewer.scene.camera.zoom = 3.0
    pw.save_view()

    viewer2 = make_napari_viewer()
    pw2 = ProjectWidget(viewer2)
    pw2.open_project(tmp_path / "proj")
    assert pw2.state.slide_id == "case_b"
    assert [im.name for im in _images(viewer2)] == ["case_b"]
    assert tuple(viewer2.scene.camera.center[-2:]) == pytest.approx((60.0, 90.0))
    assert viewer2.scene.camera.zoom == pytest.approx(3.0)
    assert pw2.table.rowCount() == 2


def test_adding_a_file_that_is_not_a_slide_is_refused(
    widgets, slides, tmp_path: Path, notes
) -> None:
    viewer, pw, _ = widgets
    pw.create_project(tmp_path / "proj")
    pw.add_slides(slides[:1])
    bad = tmp_path / "notes.svs"
    bad.write_bytes(b"this is not a slide at all")
    before = [layer.name for layer in viewer.layers]
    assert pw.add_slides([bad]) == []
    assert any(sev == "error" and "notes.svs" in msg for sev, msg in notes)
    assert [s.id for s in pw.state.project.slides] == ["case_a"]
    assert [layer.name for layer in viewer.layers] == before
    assert pw.table.rowCount() == 1


def test_opening_a_folder_that_is_not_a_project(widgets, tmp_path: Path, notes) -> None:
    _, pw, _ = widgets
    (tmp_path / "empty").mkdir()
    assert pw.open_project(tmp_path / "empty") is None
    assert pw.state.project is None
    assert any(sev == "error" and "not a protorefine project" in msg for sev, msg in notes)


def test_add_open_image_layers(widgets, slides, tmp_path: Path) -> None:
    viewer, pw, _ = widgets
    pw.create_project(tmp_path / "proj")
    # a file dropped on the viewer goes through napari's GUI open, which uses the
    # reader preference the widget set for slide files
    viewer.window._qt_viewer._qt_open([str(slides[1])], stack=False)
    (dropped,) = _images(viewer)
    assert dropped.metadata["protorefine_path"] == str(slides[1])
    assert dropped.multiscale
    assert pw.add_open_layers() == ["case_b"]
    assert [s.id for s in pw.state.project.slides] == ["case_b"]
    (image,) = _images(viewer)  # the dropped layer was replaced by the project's slide
    assert image is pw.state.image_layer


def test_coarse_autosave_on_every_edit(widgets, slides, tmp_path: Path, qtbot) -> None:
    from protorefine.napari.widgets.project import NO_OUTLINE, TUMOUR_COLUMN
    from protorefine.project import Project

    viewer, pw, cw = widgets
    pw.create_project(tmp_path / "proj")
    pw.add_slides(slides[:1])
    tumour_cell = pw.table.item(0, TUMOUR_COLUMN)
    assert Project.open(tmp_path / "proj").coarse("case_a") is None
    qtbot.waitUntil(lambda: tumour_cell.text() == NO_OUTLINE)  # the list says what to do
    assert pw.batch.text() == "1 slide(s) with no outline yet"
    cw.set_mode("add_polygon_lasso")
    assert viewer.layers["coarse"].mode == "add_polygon_lasso"
    layer = cw.layer
    layer.add_polygons([np.array([[100.0, 200.0], [100.0, 400.0], [300.0, 400.0], [300.0, 200.0]])])
    saved = Project.open(tmp_path / "proj").coarse("case_a")
    assert saved is not None and len(saved) == 1
    assert saved.annotations[0].geometry.bounds == pytest.approx((200, 100, 400, 300))
    qtbot.waitUntil(lambda: tumour_cell.text() == "")  # outlined now: ready to refine
    assert pw.batch.text() == ""
    # moving a vertex is an edit too
    data = [d.copy() for d in layer.data]
    data[0][0] = [50.0, 150.0]
    layer.data = data
    saved = Project.open(tmp_path / "proj").coarse("case_a")
    assert saved.annotations[0].geometry.bounds[:2] == pytest.approx((150, 50))


def test_exclude_draws_a_hole_in_the_coarse_outline(widgets, slides, tmp_path: Path) -> None:
    """A follicle inside the tumour outline, drawn with "Exclude": saved as a hole."""
    from protorefine.annotations import tumour_geometry
    from protorefine.napari.layers import CLASS_EDGE_COLORS
    from protorefine.project import Project

    viewer, pw, cw = widgets
    pw.create_project(tmp_path / "proj")
    pw.add_slides(slides[:1])
    layer = cw.layer
    cw.lasso_button.click()
    layer.add_polygons([np.array([[100.0, 100.0], [100.0, 500.0], [500.0, 500.0], [500.0, 100.0]])])
    cw.exclude_button.click()
    assert layer.mode == "add_polygon_lasso"
    assert layer.feature_defaults["classification"][0] == "Exclusion"
    layer.add_polygons([np.array([[200.0, 200.0], [200.0, 300.0], [300.0, 300.0], [300.0, 200.0]])])
    saved = Project.open(tmp_path / "proj").coarse("case_a")
    region = tumour_geometry(saved)
    assert region.area == pytest.approx(400 * 400 - 100 * 100) and len(region.interiors) == 1
    assert list(layer.edge_color[-1]) == pytest.approx(
        list(
            np.array(
                [int(CLASS_EDGE_COLORS["Exclusion"][i : i + 2], 16) / 255 for i in (1, 3, 5)]
                + [1.0]
            )
        )
    )
    cw.polygon_button.click()  # back to drawing tumour
    assert layer.feature_defaults["classification"][0] == "Tumor"


def test_coarse_import_export_geojson_and_xml(widgets, slides, tmp_path: Path) -> None:
    from protorefine.annotations import read_annotations

    viewer, pw, cw = widgets
    pw.create_project(tmp_path / "proj")
    pw.add_slides(slides[:1])
    assert cw.import_file(_geojson(tmp_path / "in.geojson", 100, 50, 500, 700))
    layer = viewer.layers["coarse"]
    assert len(layer.data) == 1
    yx = np.asarray(layer.data[0])
    assert (yx[:, 0].min(), yx[:, 1].min(), yx[:, 0].max(), yx[:, 1].max()) == pytest.approx(
        (50, 100, 700, 500)
    )
    assert pw.state.project.coarse("case_a").annotations[0].geometry.bounds == pytest.approx(
        (100, 50, 500, 700)
    )
    for name in ("out.geojson", "out.xml"):
        out = cw.export_file(tmp_path / name)
        assert out is not None
        back = read_annotations(out)
        assert back.annotations[0].geometry.bounds == pytest.approx((100, 50, 500, 700))


def test_coarse_asap_export_keeps_camelyon_groups(widgets, slides, tmp_path: Path) -> None:
    """A CAMELYON16 file (tumour in ``_0``, a hole in ``_2``) imported in napari exports
    back as ``_0`` / ``_2``, not ``Tumor`` / ``Exclusion``."""
    import xml.etree.ElementTree as ET

    from protorefine.annotations import read_annotations, tumour_geometry

    def coords(points):
        return "".join(
            f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(points)
        )

    src = tmp_path / "tumor_001.xml"
    src.write_text(
        "<ASAP_Annotations><Annotations>"
        '<Annotation Name="a" Type="Polygon" PartOfGroup="_0">'
        f"<Coordinates>{coords([(100, 50), (500, 50), (500, 700), (100, 700)])}</Coordinates>"
        "</Annotation>"
        '<Annotation Name="b" Type="Polygon" PartOfGroup="_2">'
        f"<Coordinates>{coords([(200, 200), (300, 200), (300, 300), (200, 300)])}</Coordinates>"
        "</Annotation></Annotations></ASAP_Annotations>"
    )
    viewer, pw, cw = widgets
    pw.create_project(tmp_path / "proj")
    pw.add_slides(slides[:1])
    assert cw.import_file(src)
    out = cw.export_file(tmp_path / "out.xml")
    assert out is not None
    groups = [a.get("PartOfGroup") for a in ET.parse(out).getroot().iter("Annotation")]
    assert sorted(groups) == ["_0", "_2"]
    assert tumour_geometry(read_annotations(out)).equals(tumour_geometry(read_annotations(src)))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_coarse_import_mask_at_a_downsample(widgets, slides, tmp_path: Path, notes, suffix) -> None:
    """A plain mask from another tool (no metadata), 1/8 of the slide, lands where it belongs."""
    import tifffile
    from PIL import Image

    viewer, pw, cw = widgets
    pw.create_project(tmp_path / "proj")
    pw.add_slides(slides[:1])
    h, w = pw.state.slide.shape
    mask = np.zeros((-(-h // 8), -(-w // 8)), np.uint8)
    mask[6:88, 12:63] = 255  # level 0: x 96..504, y 48..704
    path = tmp_path / f"mask{suffix}"
    if suffix == ".png":
        Image.fromarray(mask).save(path)
    else:
        tifffile.imwrite(path, mask)
    from protorefine.napari.widgets.coarse import ANNOTATION_FILTER

    assert f"*{suffix}" in ANNOTATION_FILTER.split(";;")[0]  # the Import dialog offers masks
    assert cw.import_file(path)
    assert len(viewer.layers["coarse"].data) == 1
    bounds = pw.state.project.coarse("case_a").annotations[0].geometry.bounds
    assert bounds == pytest.approx((96, 48, 504, 704), abs=1)

    stored = pw.state.project.coarse_path("case_a").read_bytes()
    wrong = tmp_path / f"wrong{suffix}"
    if suffix == ".png":
        Image.fromarray(np.full((40, 200), 255, np.uint8)).save(wrong)
    else:
        tifffile.imwrite(wrong, np.full((40, 200), 255, np.uint8))
    assert not cw.import_file(wrong)
    assert any(f"wrong{suffix}" in m and "aspect ratio" in m for sev, m in notes if sev == "error")
    assert pw.state.project.coarse_path("case_a").read_bytes() == stored
    assert len(viewer.layers["coarse"].data) == 1


def test_coarse_import_for_another_slide_changes_nothing(
    widgets, slides, tmp_path: Path, notes
) -> None:
    viewer, pw, cw = widgets
    pw.create_project(tmp_path / "proj")
    pw.add_slides(slides[:1])
    cw.import_file(_geojson(tmp_path / "mine.geojson", 100, 50, 500, 700))
    before = [d.copy() for d in viewer.layers["coarse"].data]
    stored = pw.state.project.coarse_path("case_a").read_bytes()

    big = _geojson(tmp_path / "other_slide.geojson", 20000, 30000, 40000, 50000)
    assert not cw.import_file(big)
    garbage = tmp_path / "garbage.geojson"
    garbage.write_text("{ not json")
    assert not cw.import_file(garbage)

    errors = [msg for sev, msg in notes if sev == "error"]
    assert any("other_slide.geojson" in m and "another slide" in m for m in errors)
    assert any("garbage.geojson" in m for m in errors)
    after = viewer.layers["coarse"].data
    assert len(after) == len(before) and all(
        np.allclose(a, b) for a, b in zip(after, before, strict=True)
    )
    assert pw.state.project.coarse_path("case_a").read_bytes() == stored


def test_coarse_layer_follows_the_slide(widgets, slides, tmp_path: Path) -> None:
    viewer, pw, cw = widgets
    pw.create_project(tmp_path / "proj")
    pw.add_slides(slides)
    cw.import_file(_geojson(tmp_path / "a.geojson", 10, 10, 300, 300))
    pw.select_slide("case_b")
    assert len(viewer.layers["coarse"].data) == 0
    assert cw.layer is viewer.layers["coarse"]
    pw.select_slide("case_a")
    assert len(viewer.layers["coarse"].data) == 1


def test_a_moved_slide_file_is_found_again(widgets, slides, tmp_path: Path, notes, monkeypatch):
    """The project is opened after a slide file moved: the slide is marked, the others open;
    clicking it asks where it is now, and the answer brings back the slide with its outline."""
    from qtpy.QtWidgets import QFileDialog

    from protorefine.napari.widgets.project import MISSING_COLOUR

    viewer, pw, cw = widgets
    pw.create_project(tmp_path / "proj")
    pw.add_slides(slides)
    assert cw.import_file(_geojson(tmp_path / "a.geojson", 100, 100, 400, 400))
    third = _pyramid_tiff(tmp_path / "slides" / "case_c.tif", (512, 512), 2)
    pw.add_slides([third])
    moved = tmp_path / "moved" / "case_a.tif"
    moved.parent.mkdir()
    slides[0].rename(moved)
    third.rename(moved.parent / third.name)  # moved together with case_a
    pw.open_project(tmp_path / "proj")
    assert any("not found: case_a, case_c" in m for _, m in notes)
    (image,) = [layer for layer in _images(viewer) if layer.rgb]
    assert image.name == "case_b"  # the slide that is there
    item = pw.table.item(0, 0)
    assert item.text() == "case_a" and item.foreground().color().name() == MISSING_COLOUR
    assert "file missing" in item.toolTip()
    asked = []

    def answer(*args, **kwargs):
        asked.append(args[1])
        return (answers.pop(0), "")

    monkeypatch.setattr(QFileDialog, "getOpenFileName", answer)
    answers = ["", str(slides[1])]  # cancelled, then case_b's file: refused (not the same slide)
    pw.table.selectRow(0)
    assert asked == ["Where is the slide file of case_a?"] and pw.state.slide_id == "case_b"
    pw.table.selectRow(0)
    assert any("not the same slide" in m for _, m in notes) and pw.state.slide_id == "case_b"
    answers = [str(moved)]
    pw.table.selectRow(0)
    assert pw.state.slide_id == "case_a"
    (image,) = [layer for layer in _images(viewer) if layer.rgb]
    assert image.name == "case_a"
    assert len(viewer.layers["coarse"].data) == 1  # its outline came back with it
    assert pw.table.item(0, 0).foreground().color().name() != MISSING_COLOUR
    # case_c was found beside it, by name, without asking
    assert pw.state.project.slide("case_c").path == str((moved.parent / "case_c.tif").resolve())
    assert any("found beside it: case_c" in m for _, m in notes)
    assert pw.table.item(2, 0).foreground().color().name() != MISSING_COLOUR
    saved = json.loads((tmp_path / "proj" / "slides.json").read_text())
    assert str(moved.resolve()) in json.dumps(saved)


def test_pixel_size_given_by_hand(widgets, tmp_path: Path, notes, qtbot, monkeypatch) -> None:
    """A PNG records no pixel size: double-clicking its mpp asks for one; the slide is then
    shown in micrometres with a scale bar, its outline with it; 0 goes back to the file's."""
    from qtpy.QtWidgets import QInputDialog
    from skimage.io import imsave

    from protorefine.napari.widgets.project import MPP_COLUMN

    viewer, pw, cw = widgets
    plain = tmp_path / "plain.png"
    imsave(plain, np.random.default_rng(2).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    pw.create_project(tmp_path / "proj")
    pw.add_slides([plain])
    assert cw.import_file(_geojson(tmp_path / "a.geojson", 100, 100, 200, 200))
    assert pw.table.item(0, MPP_COLUMN).text() == "unknown"
    assert "no pixel size: double-click its mpp" in pw.status.text()
    asked = []

    def answer(parent, title, label, value, *args):
        asked.append((title, value))
        return answers.pop(0)

    monkeypatch.setattr(QInputDialog, "getDouble", answer)
    answers = [(0.5, True)]
    pw.table.cellDoubleClicked.emit(0, MPP_COLUMN)
    assert asked == [("Pixel size", 0.0)]
    assert pw.table.item(0, MPP_COLUMN).text() == "0.500 (set)"
    qtbot.waitUntil(lambda: not pw.state.placeholders_pending, timeout=10_000)
    (image,) = [layer for layer in _images(viewer) if layer.rgb]
    for layer in (image, viewer.layers["coarse"]):
        assert tuple(layer.scale) == pytest.approx((0.5, 0.5))
        assert {str(u) for u in layer.units} == {"micrometer"}
    assert viewer.scale_bar.visible and "no pixel size" not in pw.status.text()
    coarse = pw.state.project.coarse("plain").union()
    assert coarse.bounds == (100, 100, 200, 200)  # the outline stays where it was drawn
    assert any("pixel size of plain: 0.5 µm/px" in m for _, m in notes)
    answers = [(0.0, True)]  # back to what the file says: nothing
    pw.table.cellDoubleClicked.emit(0, MPP_COLUMN)
    assert asked[-1] == ("Pixel size", 0.5)
    assert pw.table.item(0, MPP_COLUMN).text() == "unknown"
    (image,) = [layer for layer in _images(viewer) if layer.rgb]
    assert tuple(image.scale) == pytest.approx((1.0, 1.0)) and not viewer.scale_bar.visible
