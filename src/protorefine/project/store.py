"""The on-disk project store: a folder holding slides, annotations, config and stage outputs.

Layout::

    config.json              RefineConfig + encoder name and weight hash
    slides.json              the slides (id, path, shape, levels, mpp, whether set by hand)
    coarse/<id>.geojson      coarse annotations
    corrections/<id>.npz     painted corrections, (rows, cols) int8 + the grid's cell size
    prototype_labels.json    pathologist's marks of global prototypes (of one build of them)
    edited/, reviewed.json   hand edits and review ticks (``project.review``)
    ui_state.json            free-form widget state
    features/<key>/<id>.npy  feature cache, keyed by encoder + weight hash + grid settings
                             (+ <id>.cells: which cells its rows belong to)
    colour/<id>-f<k>.npy     stain statistics per fine cell for colour prototypes
                             (+ .cells: the grid they were read on)
    stages/<stage>/          each stage's output, moved in atomically with done.json
    run.lock                 while a run writes to the project: who runs it (``project.lock``)

The stages' files, their fingerprints and the formats of earlier versions are in
``project.stages``; the review of the refined outlines and the exports in ``project.review``.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import ArrayLike

from protorefine._atomic import atomic_path, atomic_write_bytes, atomic_write_text, is_leftover
from protorefine.annotations import read_geojson, tumour_geometry, write_geojson
from protorefine.annotations.model import AnnotationSet
from protorefine.errors import ProtorefineError
from protorefine.features import coarse_labels, make_grid
from protorefine.features.grid import PatchGrid
from protorefine.project.lock import LOCK_FILE, lock_holder
from protorefine.project.pyramid import read_pyramid
from protorefine.project.review import (
    MEASUREMENTS_CSV,
    MIN_PART_AREA,
    ReviewMixin,
    same_annotations,
)
from protorefine.project.stages import (
    CONFIG_FILE,
    FORMATS,
    GRID_FILE,
    HISTORY_FILE,
    MARKS_FILE,
    OUTLINE_FILE,
    PIXEL_GRID_FILE,
    PIXEL_PROB_FILE,
    PIXEL_PSEUDO_FILE,
    PROB_FILE,
    PROTOTYPES_FILE,
    PSEUDO_FILE,
    REFINED_GRID_FILE,
    DamagedFileError,
    FormatV1,
    SlideEntry,
    marks_format,
    slide_file,
    slide_id_problem,
)
from protorefine.refine.config import RefineConfig
from protorefine.refine.pseudolabels import MARKS
from protorefine.slides import Slide, open_slide

__all__ = [
    "MEASUREMENTS_CSV",
    "MIN_PART_AREA",
    "MPP_RANGE",
    "MARKS",
    "RESULT_KEYS",
    "Project",
    "SlideEntry",
    "checked_mpp",
    "same_annotations",
    "slide_stem",
    "write_json",
    "write_npz",
]

FORMAT = "protorefine-project"
#: The temporary folders ``protorefine._atomic.atomic_path`` makes beside a target
#: (``tempfile.mkdtemp(prefix=".<name>.", suffix=".tmp")``: 8 random characters of
#: ``a-z0-9_``); a run killed mid-write leaves them behind.
RESULT_KEYS = ("local_proto", "global_proto", "pseudo", "confidence", "prob", "refined", "coarse")
#: Microns per pixel a slide can be given by hand (0.01: beyond any light microscope; 100: a thumbnail).
MPP_RANGE = (0.01, 100.0)


class Project(ReviewMixin):
    """A refinement project stored in a folder; every write is atomic."""

    def __init__(self, folder: str | Path, config: RefineConfig, slides: list[SlideEntry]) -> None:
        self.folder = Path(folder)
        self.config = config
        self.slides = slides
        self.encoder_info: dict[str, Any] = {}
        self.ui_state: dict = _ui_state(self.folder / "ui_state.json")
        self._grids: dict[tuple[str, str], PatchGrid] = {}
        self._outlined: dict[str, tuple[tuple[int, int, int], bool]] = {}
        self._reading = threading.local()  # fingerprints remembered by :meth:`reading`

    # ---- create / open -------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | Path, config: RefineConfig | None = None) -> Project:
        """Make a new project folder (it must be empty or absent)."""
        folder = Path(folder)
        if folder.exists() and (
            not folder.is_dir() or any(p.name != LOCK_FILE for p in folder.iterdir())
        ):
            if (folder / CONFIG_FILE).exists():
                raise ProtorefineError(f"{folder}: a project already exists here; open it instead")
            raise ProtorefineError(
                f"{folder}: folder is not empty; pick a new folder for the project"
            )
        folder.mkdir(parents=True, exist_ok=True)
        project = cls(folder, config or RefineConfig(), [])
        project._save_config()
        project._save_slides()
        return project

    @classmethod
    def open(cls, folder: str | Path) -> Project:
        """Open an existing project folder; ProtorefineError if it is not one."""
        folder = Path(folder)
        cfg_path = folder / CONFIG_FILE
        if not cfg_path.is_file():
            raise ProtorefineError(f"{folder}: not a protorefine project (no config.json)")
        try:
            data = _read_json(cfg_path)
            if data.get("format") != FORMAT:
                raise ProtorefineError(f"{cfg_path}: not a protorefine project config")
            try:
                config = RefineConfig.from_dict(data["refine"])
            except ProtorefineError as exc:  # name the file: "config ..." alone is ambiguous
                raise ProtorefineError(f"{cfg_path}: {exc}") from exc
            slides = [
                SlideEntry(
                    id=s["id"],
                    path=s["path"],
                    shape=tuple(s["shape"]),
                    levels=int(s["levels"]),
                    mpp=s.get("mpp"),
                    mpp_by_user=bool(s.get("mpp_by_user", False)),
                )
                for s in _read_json(folder / "slides.json")
            ]
        except (
            json.JSONDecodeError,
            KeyError,
            TypeError,
            AttributeError,
            FileNotFoundError,
        ) as exc:
            raise ProtorefineError(f"{folder}: damaged project files ({exc})") from exc
        for entry in slides:
            problem = slide_id_problem(entry.id)
            if problem is not None:  # ids are joined into paths: none may lead outside
                raise ProtorefineError(
                    f"{folder / 'slides.json'}: slide id {entry.id!r} {problem}; "
                    "the project's slides.json is damaged"
                )
        project = cls(folder, config, slides)
        project.encoder_info = dict(data.get("encoder") or {})
        return project

    @classmethod
    def open_or_create(cls, folder: str | Path, config: RefineConfig | None = None) -> Project:
        """Open the project in ``folder`` if there is one (applying ``config``), else create it."""
        folder = Path(folder)
        if (folder / CONFIG_FILE).exists():
            project = cls.open(folder)
            project.remove_leftovers()  # opened for writing: a killed run's temp folders go
            if config is not None:
                project.set_config(config)
            return project
        return cls.create(folder, config)

    def remove_leftovers(self) -> list[Path]:
        """Remove the temporary folders that runs killed mid-write left in the project (only
        folders ``protorefine._atomic`` makes, :func:`~protorefine._atomic.is_leftover`); return
        them. Nothing while another process holds the project's lock: its run's temp folders
        look the same while it writes them."""
        if lock_holder(self.folder) is not None:
            return []
        removed = []
        for root, dirs, _files in os.walk(self.folder):
            for name in list(dirs):
                path = Path(root) / name
                if is_leftover(path):
                    dirs.remove(name)
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        return removed

    def _save_config(self) -> None:
        data = {"format": FORMAT, "version": 1, "refine": self.config.to_dict()}
        data["encoder"] = self.encoder_info
        atomic_write_text(self.folder / CONFIG_FILE, json.dumps(data, indent=2, sort_keys=True))

    def _save_slides(self) -> None:
        data = [asdict(s) for s in self.slides]
        atomic_write_text(self.folder / "slides.json", json.dumps(data, indent=2))

    def set_config(self, config: RefineConfig) -> None:
        """Replace the config; stages whose inputs changed are no longer done."""
        config.validate()
        self.config = config
        self._grids.clear()
        self._save_config()

    def set_encoder_info(
        self, name: str, weight_hash: str, blocks: Sequence[int] | None = None
    ) -> None:
        """Record the encoder that made the features (name, weight hash, and the widths of
        its feature blocks when it combines several encoders)."""
        self.encoder_info = {"name": name, "weight_hash": weight_hash}
        if blocks is not None and len(blocks) > 1:
            self.encoder_info["blocks"] = [int(b) for b in blocks]
        self._save_config()

    @property
    def feature_blocks(self) -> list[int] | None:
        """Widths of the feature blocks of a combined encoder (None for a single encoder)."""
        return self.encoder_info.get("blocks")

    def save_ui_state(self) -> None:
        """Write ``ui_state`` (the widgets' free-form state)."""
        atomic_write_text(
            self.folder / "ui_state.json", json.dumps(self.ui_state, indent=2, default=str)
        )

    # ---- slides ---------------------------------------------------------------------
    def slide(self, slide_id: str) -> SlideEntry:
        """The entry of ``slide_id``; ProtorefineError naming the known ids if absent."""
        for s in self.slides:
            if s.id == slide_id:
                return s
        known = ", ".join(s.id for s in self.slides) or "none"
        raise ProtorefineError(f"slide {slide_id!r} is not in the project (slides: {known})")

    def add_slide(self, path: str | Path) -> SlideEntry:
        """Add a slide file (validated by opening it); its id is its unique file stem."""
        path = Path(path).resolve()
        slide = open_slide(path)
        for s in self.slides:
            if Path(s.path) == path:
                return s
        base = slide_stem(path)
        sid, i = base, 2
        ids = {s.id for s in self.slides}
        problem = slide_id_problem(base)
        if problem is not None:
            raise ProtorefineError(
                f"{path}: its file name gives slide id {base!r}, which {problem}; rename the file"
            )
        while sid in ids:
            sid, i = f"{base}-{i}", i + 1
        entry = SlideEntry(
            id=sid, path=str(path), shape=slide.shape, levels=len(slide.levels), mpp=slide.mpp
        )
        self.slides.append(entry)
        self._save_slides()
        return entry

    def relocate_slide(self, slide_id: str, path: str | Path) -> SlideEntry:
        """Point ``slide_id`` at its file's new place (moved, renamed, another computer).

        The file must hold the same slide: same level-0 size and, when both record one,
        the same mpp. Outlines, corrections and every finished stage are kept (stages
        from the patch grid on rerun only when the new file brings other pyramid levels
        or an mpp the old one lacked, which the grid depends on).
        """
        entry = self.slide(slide_id)
        path = Path(path).resolve()
        slide = open_slide(path)
        h, w = entry.shape
        if tuple(slide.shape) != (h, w):
            sh, sw = slide.shape
            raise ProtorefineError(
                f"{path}: {sw} × {sh} px, but slide {slide_id!r} is {w} × {h} px: not the same slide"
            )
        if (
            not entry.mpp_by_user
            and entry.mpp
            and slide.mpp
            and abs(slide.mpp - entry.mpp) > 0.01 * entry.mpp
        ):
            raise ProtorefineError(
                f"{path}: {slide.mpp:.3f} µm/px, but slide {slide_id!r} has {entry.mpp:.3f}: not the same slide"
            )
        other = next((s for s in self.slides if s.id != slide_id and Path(s.path) == path), None)
        if other is not None:
            raise ProtorefineError(f"{path}: already in the project as slide {other.id!r}")
        entry.path, entry.levels = str(path), len(slide.levels)
        entry.mpp = entry.mpp or slide.mpp
        self._save_slides()
        return entry

    def set_slide_mpp(self, slide_id: str, mpp: float | None) -> SlideEntry:
        """Set the microns per pixel of ``slide_id`` at full resolution by hand, for files that
        do not record it (PNG, JPEG, some TIFFs) or record it wrong; None: as the file says.

        Everything that measures in microns follows: the viewer's scale, a patch grid in
        microns per pixel, tumour measurements, OME-Zarr exports. Stages from the patch grid
        on rerun (cached features are reused where the grid's cells did not move).
        """
        entry = self.slide(slide_id)
        if mpp is None:
            entry.mpp, entry.mpp_by_user = self.open_slide(slide_id, as_filed=True).mpp, False
        else:
            entry.mpp, entry.mpp_by_user = checked_mpp(mpp), True
        self._grids.clear()
        self._save_slides()
        return entry

    def slide_missing(self, slide_id: str) -> bool:
        """True when the slide file of ``slide_id`` is not where the project says."""
        return not Path(self.slide(slide_id).path).exists()

    def remove_slide(self, slide_id: str) -> None:
        """Drop a slide from the project (its coarse annotation and corrections are kept on disk)."""
        entry = self.slide(slide_id)
        self.slides.remove(entry)
        self._save_slides()

    def open_slide(self, slide_id: str, *, as_filed: bool = False) -> Slide:
        """Open the slide file of ``slide_id``, with the pixel size set by hand unless ``as_filed``."""
        entry = self.slide(slide_id)
        if not Path(entry.path).exists():
            raise ProtorefineError(f"{entry.path}: slide file of {slide_id!r} is missing")
        slide = open_slide(entry.path)
        if entry.mpp_by_user and not as_filed:
            slide.mpp = entry.mpp
        return slide

    # ---- annotations and corrections -----------------------------------------------
    def set_coarse(self, slide_id: str, annset: AnnotationSet) -> None:
        """Save the coarse annotation of a slide as ``coarse/<id>.geojson`` (with the ASAP
        groups it was read from, which the ASAP export of the refined outline keeps)."""
        self.slide(slide_id)
        target = self.coarse_path(slide_id)
        target.parent.mkdir(exist_ok=True)
        write_geojson(annset, target, keep_asap_group=True)

    def coarse(self, slide_id: str) -> AnnotationSet | None:
        """The coarse annotation of a slide, or None when it has none."""
        self.slide(slide_id)
        path = self.coarse_path(slide_id)
        return read_geojson(path, allow_empty=True) if path.exists() else None

    def coarse_path(self, slide_id: str) -> Path:
        """Where the coarse annotation of a slide is stored."""
        return Path(self._coarse_file(slide_id))

    def _coarse_file(self, slide_id: str) -> str:
        """:meth:`coarse_path` as a plain string (fingerprints build it for every slide)."""
        return os.path.join(self.folder, "coarse", f"{slide_id}.geojson")

    def has_outline(self, slide_id: str) -> bool:
        """True when the slide's coarse annotation holds a tumour region (remembered per
        file version: fingerprints ask often)."""
        try:
            st = os.stat(self._coarse_file(slide_id))
        except FileNotFoundError:
            return False
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        known = self._outlined.get(slide_id)
        if known is None or known[0] != key:
            try:
                coarse = self.coarse(slide_id)
                found = coarse is not None and not tumour_geometry(coarse).is_empty
            except ProtorefineError:  # a damaged file: the run's own check names it
                found = False
            known = self._outlined[slide_id] = (key, found)
        return known[1]

    def run_slides(self) -> list[SlideEntry]:
        """The slides a run refines: those with a coarse tumour outline (the others wait
        until they get one; a run with them left out says so)."""
        return [s for s in self.slides if self.has_outline(s.id)]

    def slides_in_run(self) -> list[SlideEntry]:
        """The slides the stored prototypes (and later stages) were built from."""
        if not self.stage_done("prototypes"):
            return []
        index = self._run_index()
        return [s for s in self.slides if s.id in index]

    def has_results(self, slide_id: str) -> bool:
        """True when the last finished run refined ``slide_id`` (results match the inputs)."""
        # a done output stage implies done prototypes: its fingerprint chains through them
        return self.stage_done("output") and slide_id in self._run_index()

    def _corrections_files(self, slide_id: str) -> list[tuple[FormatV1, Path]]:
        """Where a slide's painted corrections lie in each format, newest first."""
        folder = self.folder / "corrections"
        return [(fmt, folder / f"{slide_id}{fmt.corrections_suffix}") for fmt in FORMATS]

    def set_corrections(self, slide_id: str, labels: np.ndarray | None) -> None:
        """Save painted corrections, a (rows, cols) int8 grid: -1 none, 0 normal, 1 tumour.

        They are stored with the grid's cell size, so a later grid (another patch size,
        level or stride) reads them back resampled by position instead of losing them.
        """
        self.slide(slide_id)
        (_, path), *older = self._corrections_files(slide_id)
        if labels is None:
            for _, p in self._corrections_files(slide_id):
                p.unlink(missing_ok=True)
            return
        arr = np.asarray(labels)
        if arr.ndim != 2:
            raise ProtorefineError(f"corrections of {slide_id!r}: expected a (rows, cols) grid")
        if not np.isin(arr, (-1, 0, 1)).all():
            raise ProtorefineError(f"corrections of {slide_id!r}: values must be -1, 0 or 1")
        grid = self.grid(slide_id)
        if arr.shape != (grid.rows, grid.cols):
            raise ProtorefineError(
                f"corrections of {slide_id!r}: shape {arr.shape}, grid is ({grid.rows}, {grid.cols})"
            )
        write_npz(path, labels=arr.astype(np.int8), downsample=np.float64(grid.downsample))
        for _, p in older:
            p.unlink(missing_ok=True)

    def corrections(self, slide_id: str) -> np.ndarray | None:
        """The painted corrections on the slide's current grid (resampled by position), or None."""
        found = [(fmt, p) for fmt, p in self._corrections_files(slide_id) if p.exists()]
        if not found:
            return None
        labels, ds = found[0][0].read_corrections(found[0][1])
        if ds is None:
            return labels  # saved on the current grid
        grid = self.grid(slide_id)
        if labels.shape == (grid.rows, grid.cols) and abs(ds - grid.downsample) < 1e-6 * ds:
            return labels
        centre_r = ((np.arange(grid.rows) + 0.5) * grid.downsample / ds).astype(np.int64)
        centre_c = ((np.arange(grid.cols) + 0.5) * grid.downsample / ds).astype(np.int64)
        out = np.full((grid.rows, grid.cols), -1, dtype=np.int8)
        rr, cc = centre_r < labels.shape[0], centre_c < labels.shape[1]
        out[np.ix_(rr, cc)] = labels[np.ix_(centre_r[rr], centre_c[cc])]
        return out

    def set_mark(self, global_id: int, label: str | None) -> None:
        """Relabel a global prototype: "tumour", "normal", "ignore", or None to clear."""
        if label is not None and label not in MARKS:
            raise ProtorefineError(f"prototype label {label!r}: must be one of {', '.join(MARKS)}")
        labels = self.marks()
        if label is None:
            labels.pop(int(global_id), None)
        else:
            labels[int(global_id)] = label
        data = {  # tied to this build of the prototypes (stages.FormatV2)
            "run": self.stage_info("prototypes").get("run"),
            "labels": {str(k): v for k, v in sorted(labels.items())},
        }
        atomic_write_text(self.folder / "prototype_labels.json", json.dumps(data, indent=2))

    def marks(self) -> dict[int, str]:
        """The pathologist's marks of the current global prototypes, {global id: label}.

        Marks belong to one build of the prototypes (ids change when they are rebuilt);
        after a rebuild the marks carried over to the new prototypes by the tissue they
        cover (``stages/prototypes/marks.json``) apply until the pathologist marks again.
        """
        run = self.stage_info("prototypes").get("run")
        path = self.folder / "prototype_labels.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        mine = marks_format(data).marks_of_build(data, run)
        if mine is None:
            carried = self.stage_dir("prototypes") / MARKS_FILE
            mine = json.loads(carried.read_text()) if carried.exists() else {}
        return {int(k): v for k, v in mine.items()}

    # ---- grids and results -------------------------------------------------------
    def grid(self, slide_id: str) -> PatchGrid:
        """The patch grid of a slide (stored by the grid stage, computed on demand before that)."""
        fp = self.fingerprint("grid")
        key = (slide_id, fp)
        if key in self._grids:
            return self._grids[key]
        path = self.stage_dir("grid") / slide_file(GRID_FILE, slide_id)
        if self.stage_done("grid") and path.exists():
            grid = PatchGrid.from_dict(self.stage_arrays("grid", GRID_FILE, slide_id=slide_id))
        else:
            grid = self.compute_grid(slide_id)
        self._grids[key] = grid
        return grid

    def compute_grid(self, slide_id: str) -> PatchGrid:
        """Lay the patch grid of a slide from the config (no caching)."""
        cfg = self.config
        slide = self.open_slide(slide_id)
        return make_grid(
            slide,
            patch_size=cfg.patch_size,
            level=cfg.level,
            mpp=cfg.mpp,
            stride=cfg.stride,
            min_tissue=cfg.tissue_threshold,
        )

    def coarse_patch_labels(self, slide_id: str) -> tuple[np.ndarray, np.ndarray]:
        """Per patch (all N): inside fraction and signed distance (patches) of the coarse outline."""
        ann = self.coarse(slide_id)
        if ann is None:
            raise ProtorefineError(f"slide {slide_id!r} has no coarse annotation")
        return coarse_labels(self.grid(slide_id), ann)

    def _slide_slice(self, slide_id: str) -> slice:
        """Rows of the cohort arrays (tissue patches, slides in order) that belong to a slide."""
        self._require("prototypes")
        index = self._run_index()
        if slide_id not in index:
            raise ProtorefineError(f"slide {slide_id!r} was not part of the last run")
        a, b = index[slide_id]
        return slice(a, b)

    def result_grid(self, slide_id: str, key: str) -> np.ndarray:
        """A (rows, cols) grid of one result: local_proto, global_proto (-1 off tissue), pseudo,
        confidence, prob (float; the final one once the output stage ran, else the head's),
        refined (bool), coarse (inside fraction)."""
        if key not in RESULT_KEYS:
            raise ProtorefineError(f"result {key!r}: known are {', '.join(RESULT_KEYS)}")
        grid = self.grid(slide_id)
        if key == "coarse":
            frac, _ = self.coarse_patch_labels(slide_id)
            return grid.to_image(np.where(grid.tissue, frac, 0).astype(np.float32), fill=0.0)
        if key == "refined":
            return self.stage_array("output", REFINED_GRID_FILE, slide_id)
        sl = self._slide_slice(slide_id)
        if key in ("local_proto", "global_proto"):
            values = self.stage_arrays("prototypes", PROTOTYPES_FILE, (key,))[key][sl]
            return grid.to_image(values.astype(np.int64), fill=-1)
        if key in ("pseudo", "confidence"):
            stage = "classifier" if self.stage_done("classifier") else "pseudo_labels"
            values = self.stage_arrays(stage, PSEUDO_FILE, (key,))[key][sl]
            if key == "pseudo":
                return grid.to_image(values.astype(np.int8), fill=-1)
            return grid.to_image(values.astype(np.float32), fill=0.0)
        stage = "output" if self.stage_done("output") else "classifier"
        values = self.stage_arrays(stage, PROB_FILE, ("prob",))["prob"][sl]
        return grid.to_image(values.astype(np.float32), fill=0.0)

    def global_scores(self) -> np.ndarray:
        """Tumour score of each global prototype (before the pathologist's relabels)."""
        return self.stage_arrays("prototypes", PROTOTYPES_FILE, ("global_scores",))["global_scores"]

    def history(self) -> list[dict]:
        """Loss and agreement per round of the last classifier run."""
        return json.loads(self.stage_file("classifier", HISTORY_FILE).read_text())

    def pixel_pyramid(
        self, slide_id: str, *, pseudo: bool = False
    ) -> tuple[list[zarr.Array], float] | None:
        """The pixel stage's tumour probability of a slide as its stored pyramid (lazy levels,
        finest first: (rows, cols) cells, then halves; ``pseudo``: the first pass it was
        self-trained from) and the level-0 pixels per cell; None when the stage has not run
        (or is off). A damaged pyramid makes the stage not done (a rerun recomputes it)."""
        if not (self.config.pixel_level and self.stage_done("pixels")):
            return None
        if not self.stage_dir("pixels").joinpath(slide_file(PIXEL_GRID_FILE, slide_id)).exists():
            return None
        info = json.loads(self.stage_file("pixels", PIXEL_GRID_FILE, slide_id).read_text())
        path = self.stage_file("pixels", PIXEL_PSEUDO_FILE if pseudo else PIXEL_PROB_FILE, slide_id)
        try:
            levels = read_pyramid(path)
        except ProtorefineError as err:
            self.forget_stage("pixels")
            raise DamagedFileError(f"{err}; {self._rerun_remedy('pixels')}") from None
        return levels, float(info["cell0"])

    def pixel_probability(
        self, slide_id: str, *, pseudo: bool = False
    ) -> tuple[np.ndarray, float] | None:
        """The finest level of :meth:`pixel_pyramid` in memory (rows, cols) float32."""
        stored = self.pixel_pyramid(slide_id, pseudo=pseudo)
        if stored is None:
            return None
        levels, cell0 = stored
        return np.asarray(levels[0][:], np.float32), cell0

    def refined_annotations(self, slide_id: str) -> AnnotationSet:
        """The refined tumour polygons of a slide (level-0 pixels)."""
        return read_geojson(self._refined_path(slide_id), allow_empty=True)

    def _refined_path(self, slide_id: str) -> Path:
        """The pixel stage's outline when it ran (and is on), else the patch-level one."""
        if self.config.pixel_level and self.stage_done("pixels"):
            return self.stage_file("pixels", OUTLINE_FILE, slide_id)
        return self.stage_file("output", OUTLINE_FILE, slide_id)


def _read_json(path: Path) -> Any:
    """The JSON in one of the project's own files; a file that is empty, not text or not
    JSON is a one-line error naming it (a missing one raises FileNotFoundError)."""
    data = path.read_bytes()
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = "the file is empty" if not data.strip() else str(exc).splitlines()[0]
        raise ProtorefineError(
            f"{path}: damaged project files (not valid JSON: {reason})"
        ) from None


def _ui_state(path: Path) -> dict:
    """The widgets' saved state, {} when absent or damaged: it only restores how the
    widgets looked, so a damaged file must not keep the project from opening."""
    try:
        state = _read_json(path)
    except (FileNotFoundError, ProtorefineError):
        return {}
    return state if isinstance(state, dict) else {}


def checked_mpp(mpp: float) -> float:
    """``mpp`` as a float when it is a plausible pixel size, else a one-line error."""
    value = float(mpp)
    if not math.isfinite(value) or not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
        raise ProtorefineError(
            f"{mpp}: microns per pixel must be between {MPP_RANGE[0]} and {MPP_RANGE[1]} "
            "(a 40x scan is about 0.25, 20x about 0.5)"
        )
    return value


def slide_stem(path: Path) -> str:
    """File stem without slide suffixes (``a.ome.tif`` -> ``a``, ``b.zarr`` -> ``b``)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def write_npz(path: Path, **arrays: ArrayLike) -> None:
    """Write arrays to an .npz file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, allow_pickle=True, **arrays)  # numpy's default, named: not an array


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    atomic_write_bytes(path, json.dumps(data, indent=2, default=str).encode())
