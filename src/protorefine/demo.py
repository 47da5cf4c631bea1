"""The demo's sample cohort: synthetic slides (OME-Zarr), their true outlines and a project
with coarse outlines; an overlay PNG of a slide's outlines; the headless demo.

``protorefine demo`` (:mod:`protorefine.cli.demo`) runs it; the napari window is built
in :mod:`protorefine.napari.demo`. Nothing here imports Qt or napari.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protorefine._atomic import atomic_path
from protorefine.annotations import rasterize, vectorize, write_geojson
from protorefine.errors import ProtorefineError
from protorefine.project import Project
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


def _usable(path: Path, shape: tuple[int, int]) -> bool:
    """True when ``path`` is an OME-Zarr slide of ``shape`` left by an earlier run."""
    if not path.is_dir():
        return False
    try:
        return open_slide(path).shape == tuple(shape)
    except ProtorefineError:
        return False


def overlay_png(
    project, slide_id: str, path: str | os.PathLike[str], *, max_size: int = 1024
) -> Path:
    """Write a PNG of the slide thumbnail with its coarse outline (yellow) and refined outline (red)."""
    from skimage.io import imsave
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    slide = project.open_slide(slide_id)
    h0, w0 = slide.shape
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
    ds = w0 / thumb.shape[1]
    out = thumb.copy()
    outlines = [(project.coarse(slide_id), (255, 212, 0))]
    if project.has_results(slide_id):
        outlines.append((project.refined_annotations(slide_id), (230, 30, 30)))
    width = max(1, round(max(thumb.shape[:2]) / 400))
    for annset, colour in outlines:
        if annset is None or not len(annset):
            continue
        mask = rasterize(annset, (h0, w0), ds)
        mask = mask[: out.shape[0], : out.shape[1]]
        edge = find_boundaries(mask, mode="inner")
        if width > 1:
            from scipy.ndimage import binary_dilation

            edge = binary_dilation(edge, iterations=width - 1)
        pad = np.zeros(out.shape[:2], bool)
        pad[: edge.shape[0], : edge.shape[1]] = edge
        out[pad] = colour
    with atomic_path(path) as tmp:
        imsave(tmp, out, check_contrast=False)
    return Path(path)


def headless_demo(out: Path, slides_dir: Path | None = None) -> int:
    """Build the sample cohort (slides converted to OME-Zarr) and write an overlay PNG."""
    project, cohort = make_sample_cohort(out, COHORT_SHAPES[:1], slides_dir=slides_dir)
    sid = project.slides[0].id
    png = overlay_png(project, sid, out / f"{sid}_overlay.png")
    print(f"OME-Zarr: {cohort.slide_paths[0]}")
    print(f"overlay:  {png}")
    return 0
