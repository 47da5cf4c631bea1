"""The demo's samples and the headless demo.

Two samples: the synthetic cohort (slides written as OME-Zarr, their true outlines and a
project with simulated coarse outlines) and the real H&E sample shipped in
``protorefine/data`` (a canvas of CAMELYON tissue with its coarse outline and truth).
The headless demo refines one of them with the product's pipeline at default settings
and writes the before/after picture (coarse and refined outlines, Dice of each against
the truth) and ``result.json``. ``protorefine demo`` (:mod:`protorefine.cli.demo`) runs
it; the napari window is built in :mod:`protorefine.napari.demo`. Nothing here imports
Qt or napari.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protorefine._atomic import atomic_path, atomic_write_text
from protorefine._types import Progress
from protorefine.annotations import rasterize, read_annotations, vectorize, write_geojson
from protorefine.errors import ProtorefineError
from protorefine.evaluate import score_slide
from protorefine.project import Project
from protorefine.project.pipeline import Pipeline
from protorefine.refine.config import RefineConfig
from protorefine.slides import convert_to_ome_zarr, open_slide
from protorefine.slides.base import compute
from protorefine.synthetic import simulate_coarse, synthetic_slide

#: Patch size of the demo project, in level-0 pixels (the default, 32 µm at the demo's
#: 0.5 µm/px): the synthetic tumour borders are smooth at this scale, so refinement visibly
#: improves the coarse outline (224 px patches on 3072 px slides are too coarse a grid).
DEMO_PATCH_SIZE = 64
#: Sizes (height, width) of the demo cohort's synthetic slides, in level-0 pixels.
COHORT_SHAPES: tuple[tuple[int, int], ...] = ((3072, 3072), (2560, 3072), (3072, 2560))
#: Size of the synthetic slide the headless demo refines (one slide: about a minute on 2 cores).
HEADLESS_SHAPES: tuple[tuple[int, int], ...] = ((1536, 1536),)
#: The samples ``protorefine demo --sample`` offers; the real one is the headless default.
SAMPLES = ("real", "synthetic")
#: Where the real sample lies in the package, and its name (see ``data/README.md``).
DATA_DIR = Path(__file__).resolve().parent / "data"
REAL_SAMPLE = "camelyon_sample"
#: Outline colours of the pictures, as napari shows them: coarse yellow, refined red.
COARSE_COLOUR = (255, 212, 0)
REFINED_COLOUR = (255, 26, 26)


@dataclass
class SampleCohort:
    """A demo project and where its sample files lie."""

    project_folder: Path
    slide_paths: list[Path]
    truth_paths: list[Path]


def cache_dir() -> Path:
    """Where converted demo slides are kept between runs (``$XDG_CACHE_HOME/protorefine``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "protorefine" / "demo-slides"


def make_sample_cohort(
    folder: str | os.PathLike[str],
    shapes: tuple[tuple[int, int], ...] = COHORT_SHAPES,
    *,
    slides_dir: str | os.PathLike[str] | None = None,
    strength: float = 1.0,
    progress=None,
):
    """Write synthetic slides (OME-Zarr), their true outlines, and a project with coarse outlines.

    Returns ``(project, cohort)``. Slides go to ``slides_dir/<id>.zarr`` (default
    ``folder/slides``) and are reused when already there, ground truth to
    ``folder/truth/<id>.geojson``, the project to ``folder/project`` (reopened
    when it exists).
    """
    folder = Path(folder)
    slides_dir = Path(slides_dir) if slides_dir is not None else folder / "slides"
    project_folder = folder / "project"
    if project_folder.exists():
        project = Project.open(project_folder)
        truth = project.ui_state.get("truth", {})
        return project, SampleCohort(
            project_folder,
            [Path(s.path) for s in project.slides],
            [Path(truth[s.id]) for s in project.slides if s.id in truth],
        )
    slide_paths: list[Path] = []
    truth_paths: list[Path] = []
    coarse_sets = []
    for i, shape in enumerate(shapes):
        name = f"synthetic_{i + 1:02d}"
        slide, truth, truth_ds = synthetic_slide(shape, seed=i)
        slide.name = name
        path = slides_dir / f"{name}.zarr"
        if not _usable(path, shape):
            path = convert_to_ome_zarr(slide, path, progress=progress)
        slide_paths.append(Path(path))
        truth_path = folder / "truth" / f"{name}.geojson"
        truth_path.parent.mkdir(parents=True, exist_ok=True)
        write_geojson(vectorize(truth, truth_ds), truth_path)
        truth_paths.append(truth_path)
        coarse_sets.append(simulate_coarse(truth, truth_ds, strength=strength, seed=i))
    project = Project.create(project_folder, RefineConfig(patch_size=DEMO_PATCH_SIZE))
    truth_by_id = {}
    for path, coarse, truth_path in zip(slide_paths, coarse_sets, truth_paths, strict=True):
        entry = project.add_slide(path)
        project.set_coarse(entry.id, coarse)
        truth_by_id[entry.id] = str(truth_path)
    project.ui_state["truth"] = truth_by_id
    project.ui_state["current_slide"] = project.slides[0].id
    project.save_ui_state()
    return project, SampleCohort(project_folder, slide_paths, truth_paths)


@dataclass(frozen=True)
class RealSample:
    """The real H&E sample's files: the slide (tiled JPEG TIFF), its coarse outline and truth."""

    slide: Path
    coarse: Path
    truth: Path


def real_sample() -> RealSample:
    """The packaged real sample; one-line error naming the file if the install lacks it."""
    sample = RealSample(
        DATA_DIR / f"{REAL_SAMPLE}.tif",
        DATA_DIR / f"{REAL_SAMPLE}_coarse.geojson",
        DATA_DIR / f"{REAL_SAMPLE}_truth.geojson",
    )
    for path in (sample.slide, sample.coarse, sample.truth):
        if not path.is_file():
            raise ProtorefineError(f"{path}: the real sample is missing from this install")
    return sample


def make_real_project(folder: str | os.PathLike[str]) -> tuple[Project, SampleCohort]:
    """A project on the real sample (default settings) in ``folder/project`` (reopened when
    it exists); the slide is read where the package keeps it, nothing is copied."""
    sample = real_sample()
    project_folder = Path(folder) / "project"
    if project_folder.exists():
        project = Project.open(project_folder)
    else:
        project = Project.create(project_folder)
        entry = project.add_slide(sample.slide)
        project.set_coarse(entry.id, read_annotations(sample.coarse, slide_shape=entry.shape))
        project.ui_state["truth"] = {entry.id: str(sample.truth)}
        project.ui_state["current_slide"] = entry.id
        project.save_ui_state()
    return project, SampleCohort(project_folder, [sample.slide], [sample.truth])


def _usable(path: Path, shape: tuple[int, int]) -> bool:
    """True when ``path`` is an OME-Zarr slide of ``shape`` left by an earlier run."""
    if not path.is_dir():
        return False
    try:
        return open_slide(path).shape == tuple(shape)
    except ProtorefineError:
        return False


def thumbnail(project, slide_id: str, max_size: int = 1024) -> tuple[np.ndarray, float]:
    """The slide as an RGB array at most ``max_size`` px on its longer side, and its
    downsample (level-0 pixels per thumbnail pixel)."""
    from skimage.transform import resize

    slide = project.open_slide(slide_id)
    level = len(slide.levels) - 1
    for i, lvl in enumerate(slide.levels):
        if max(lvl.shape[:2]) <= max_size:
            level = i
            break
    thumb = compute(slide.levels[level][..., :3], "threads").astype(np.uint8)
    if max(thumb.shape[:2]) > max_size:
        f = max_size / max(thumb.shape[:2])
        size = (round(thumb.shape[0] * f), round(thumb.shape[1] * f))
        thumb = (resize(thumb, size, anti_aliasing=True, preserve_range=True)).astype(np.uint8)
    return thumb, slide.shape[1] / thumb.shape[1]


def draw_outline(
    image: np.ndarray, annset, slide_shape: tuple[int, int], ds: float, colour, width: int
) -> None:
    """Draw the border of ``annset`` (level-0 pixels) on ``image`` (at downsample ``ds``)."""
    from scipy.ndimage import binary_dilation
    from skimage.segmentation import find_boundaries

    if annset is None or not len(annset):
        return
    mask = rasterize(annset, slide_shape, ds)[: image.shape[0], : image.shape[1]]
    edge = find_boundaries(mask, mode="inner")
    if width > 1:
        edge = binary_dilation(edge, iterations=width - 1)
    pad = np.zeros(image.shape[:2], bool)
    pad[: edge.shape[0], : edge.shape[1]] = edge
    image[pad] = colour


def _write_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    from skimage.io import imsave

    with atomic_path(path) as tmp:
        imsave(tmp, image, check_contrast=False)
    return Path(path)


def overlay_png(
    project, slide_id: str, path: str | os.PathLike[str], *, max_size: int = 1024
) -> Path:
    """Write a PNG of the slide thumbnail with its coarse outline (yellow) and refined outline (red)."""
    thumb, ds = thumbnail(project, slide_id, max_size)
    shape = project.slide(slide_id).shape
    out = thumb.copy()
    width = max(1, round(max(thumb.shape[:2]) / 400))
    draw_outline(out, project.coarse(slide_id), shape, ds, COARSE_COLOUR, width)
    if project.has_results(slide_id):
        draw_outline(out, project.refined_annotations(slide_id), shape, ds, REFINED_COLOUR, width)
    return _write_png(path, out)


def before_after_png(
    project,
    slide_id: str,
    path: str | os.PathLike[str],
    dice: dict[str, float],
    *,
    title: str = "",
    max_size: int = 1024,
) -> Path:
    """The slide thumbnail with the coarse (yellow) and refined (red) outlines, under a
    legend that gives each outline's Dice against the truth."""
    from PIL import Image, ImageDraw, ImageFont

    thumb, ds = thumbnail(project, slide_id, max_size)
    shape = project.slide(slide_id).shape
    picture = thumb.copy()
    width = max(2, round(max(thumb.shape[:2]) / 300))
    draw_outline(picture, project.coarse(slide_id), shape, ds, COARSE_COLOUR, width)
    draw_outline(picture, project.accepted_outline(slide_id), shape, ds, REFINED_COLOUR, width)
    size = max(14, round(picture.shape[1] / 45))
    try:
        font = ImageFont.load_default(size=size)
    except TypeError:  # Pillow before 10.1: the small bitmap font only
        font = ImageFont.load_default()
    lines = [
        (None, title or slide_id),
        (COARSE_COLOUR, f"coarse outline: Dice {dice['coarse']:.3f} against the truth"),
        (REFINED_COLOUR, f"refined outline: Dice {dice['refined']:.3f} against the truth"),
    ]
    step = round(size * 1.5)
    band = step * len(lines) + size // 2
    canvas = Image.new("RGB", (picture.shape[1], picture.shape[0] + band), "white")
    canvas.paste(Image.fromarray(picture), (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, (colour, text) in enumerate(lines):
        y = size // 4 + i * step
        x = size // 2
        if colour is not None:
            draw.rectangle((x, y + size // 4, x + 2 * size, y + size // 4 + width * 2), fill=colour)
            x += 3 * size
        draw.text((x, y), text, fill="black", font=font)
    return _write_png(path, np.asarray(canvas))


def headless_demo(
    out: Path,
    slides_dir: Path | None = None,
    sample: str = "real",
    *,
    progress: Progress | None = None,
) -> int:
    """Refine a sample with the pipeline at default settings, then write the before/after
    picture and ``result.json`` (Dice of the coarse and refined outlines against the truth,
    seconds taken) to ``out``; print where they are."""
    if sample == "real":
        project, cohort = make_real_project(out)
        title = "real H&E (CAMELYON tiles, CC0): coarse outline refined by protorefine"
    elif sample == "synthetic":
        project, cohort = make_sample_cohort(out, HEADLESS_SHAPES, slides_dir=slides_dir)
        title = "synthetic slide: coarse outline refined by protorefine"
    else:
        raise ProtorefineError(f"--sample {sample}: unknown sample (one of {', '.join(SAMPLES)})")
    sid = project.slides[0].id
    truth = Path(project.ui_state["truth"][sid])
    t0 = time.perf_counter()
    Pipeline(project).run(progress=progress)
    seconds = time.perf_counter() - t0
    scores = score_slide(project, sid, truth)
    dice = {kind: scores[kind]["dice"] for kind in ("coarse", "refined")}
    png = before_after_png(project, sid, out / f"{sid}_before_after.png", dice, title=title)
    result = {
        "sample": sample,
        "slide": sid,
        "slide_path": str(cohort.slide_paths[0]),
        "truth": str(truth),
        "project": str(project.folder),
        "picture": str(png),
        "seconds": round(seconds, 1),
        "config": project.config.to_dict(),
        "scores": scores,
    }
    atomic_write_text(out / "result.json", json.dumps(result, indent=2))
    print(
        f"{sid}: Dice against the truth {dice['coarse']:.3f} (coarse) -> "
        f"{dice['refined']:.3f} (refined), refined in {seconds:.0f} s"
    )
    print(f"picture: {png}")
    print(f"result:  {out / 'result.json'}")
    return 0
