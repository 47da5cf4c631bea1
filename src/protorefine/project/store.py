"""The on-disk project store: a folder holding slides, annotations, config and stage outputs.

Layout::

    config.json              RefineConfig + encoder name and weight hash
    slides.json              the slides (id, path, shape, levels, mpp, whether set by hand)
    coarse/<id>.geojson      coarse annotations
    corrections/<id>.npz     painted corrections, (rows, cols) int8 + the grid's cell size
    prototype_labels.json    pathologist's marks of global prototypes (of one build of them)
    edited/<id>.geojson      pathologist's hand edits of a refined outline (+ <id>.json: the
                             refinement they were drawn on)
    reviewed.json            slides whose outline the pathologist checked: the outline's hash
                             and when
    ui_state.json            free-form widget state
    features/<key>/<id>.npy  feature cache, keyed by encoder + weight hash + grid settings
                             (+ <id>.cells: which cells its rows belong to)
    colour/<id>-f<k>.npy     stain statistics per fine cell for colour prototypes
                             (+ .cells: the grid they were read on)
    stages/<stage>/          each stage's output, moved in atomically with done.json

A stage counts as done when its folder holds ``done.json`` whose fingerprint
matches the current inputs (config fields of that stage and the ones before,
slides, annotations, corrections), so changed inputs invalidate it by themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import threading
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protorefine._atomic import atomic_path, atomic_write_bytes, atomic_write_text
from protorefine._types import Cancel, Progress
from protorefine.annotations.model import TUMOR, AnnotationSet
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.refine.config import STAGE_OF, STAGE_ORDER, RefineConfig

if TYPE_CHECKING:
    from shapely.geometry.base import BaseGeometry

    from protorefine.measure import Measurements

FORMAT = "protorefine-project"
RESULT_KEYS = ("local_proto", "global_proto", "pseudo", "confidence", "prob", "refined", "coarse")
PROTOTYPE_LABELS = ("tumour", "normal", "ignore")
#: File next to exported outlines with every slide's tumour measurements.
MEASUREMENTS_CSV = "tumour_measurements.csv"
#: Microns per pixel a slide can be given by hand (0.01: beyond any light microscope; 100: a thumbnail).
MPP_RANGE = (0.01, 100.0)
#: Level-0 px²: slivers smaller than this left by geometry operations on an outline are dropped.
MIN_PART_AREA = 1.0


@dataclass
class SlideEntry:
    """One slide of a project: unique ``id`` (file stem), ``path``, level-0 ``shape``, level count,
    mpp (from the file, or set by hand when ``mpp_by_user``)."""

    id: str
    path: str
    shape: tuple[int, int]
    levels: int
    mpp: float | None = None
    mpp_by_user: bool = False


def _hash(obj: Any) -> str:
    """Short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


#: _file_hash results by (path, inode, mtime, size): fingerprints hash every slide's coarse
#: and corrections files, and the panes ask for them often; writes are atomic renames, so a
#: changed file has a new inode.
_FILE_HASHES: dict[tuple[str, int, int, int], str] = {}


def _file_hash(path: Path | str) -> str | None:
    """Hash of a file's bytes (None when it does not exist)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    key = (os.fspath(path), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _FILE_HASHES:
        if len(_FILE_HASHES) > 100_000:
            _FILE_HASHES.clear()
        with open(path, "rb") as fh:
            _FILE_HASHES[key] = hashlib.sha256(fh.read()).hexdigest()[:16]
    return _FILE_HASHES[key]


class Project:
    """A refinement project stored in a folder; every write is atomic."""

    def __init__(self, folder: str | Path, config: RefineConfig, slides: list[SlideEntry]) -> None:
        self.folder = Path(folder)
        self.config = config
        self.slides = slides
        self.encoder_info: dict[str, Any] = {}
        ui = self.folder / "ui_state.json"
        self.ui_state: dict = json.loads(ui.read_text()) if ui.exists() else {}
        self._grids: dict[tuple[str, str], Any] = {}
        self._outlined: dict[str, tuple[tuple[int, int, int], bool]] = {}
        self._reading = threading.local()  # fingerprints remembered by :meth:`reading`

    # ---- create / open -------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | Path, config: RefineConfig | None = None) -> Project:
        """Make a new project folder (it must be empty or absent)."""
        folder = Path(folder)
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            if (folder / "config.json").exists():
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
        cfg_path = folder / "config.json"
        if not cfg_path.is_file():
            raise ProtorefineError(f"{folder}: not a protorefine project (no config.json)")
        try:
            data = json.loads(cfg_path.read_text())
            if data.get("format") != FORMAT:
                raise ProtorefineError(f"{cfg_path}: not a protorefine project config")
            config = RefineConfig.from_dict(data["refine"])
            slides = [
                SlideEntry(
                    id=s["id"],
                    path=s["path"],
                    shape=tuple(s["shape"]),
                    levels=int(s["levels"]),
                    mpp=s.get("mpp"),
                    mpp_by_user=bool(s.get("mpp_by_user", False)),
                )
                for s in json.loads((folder / "slides.json").read_text())
            ]
        except (json.JSONDecodeError, KeyError, TypeError, FileNotFoundError) as exc:
            raise ProtorefineError(f"{folder}: damaged project files ({exc})") from exc
        project = cls(folder, config, slides)
        project.encoder_info = dict(data.get("encoder") or {})
        return project

    @classmethod
    def open_or_create(cls, folder: str | Path, config: RefineConfig | None = None) -> Project:
        """Open the project in ``folder`` if there is one (applying ``config``), else create it."""
        folder = Path(folder)
        if (folder / "config.json").exists():
            project = cls.open(folder)
            if config is not None:
                project.set_config(config)
            return project
        return cls.create(folder, config)

    def _save_config(self) -> None:
        data = {"format": FORMAT, "version": 1, "refine": self.config.to_dict()}
        data["encoder"] = self.encoder_info
        atomic_write_text(self.folder / "config.json", json.dumps(data, indent=2, sort_keys=True))

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
        from protorefine.slides import open_slide

        path = Path(path).resolve()
        slide = open_slide(path)
        for s in self.slides:
            if Path(s.path) == path:
                return s
        base = _stem(path)
        sid, i = base, 2
        ids = {s.id for s in self.slides}
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
        from protorefine.slides import open_slide

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

    def open_slide(self, slide_id: str, *, as_filed: bool = False):
        """Open the slide file of ``slide_id``, with the pixel size set by hand unless ``as_filed``."""
        from protorefine.slides import open_slide

        entry = self.slide(slide_id)
        if not Path(entry.path).exists():
            raise ProtorefineError(f"{entry.path}: slide file of {slide_id!r} is missing")
        slide = open_slide(entry.path)
        if entry.mpp_by_user and not as_filed:
            slide.mpp = entry.mpp
        return slide

    # ---- annotations and corrections -----------------------------------------------
    def set_coarse(self, slide_id: str, annset: AnnotationSet) -> None:
        """Save the coarse annotation of a slide as ``coarse/<id>.geojson``."""
        from protorefine.annotations import write_geojson

        self.slide(slide_id)
        target = self.coarse_path(slide_id)
        target.parent.mkdir(exist_ok=True)
        write_geojson(annset, target)

    def coarse(self, slide_id: str) -> AnnotationSet | None:
        """The coarse annotation of a slide, or None when it has none."""
        from protorefine.annotations import read_geojson

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
        from protorefine.annotations import tumour_geometry

        try:
            st = os.stat(self._coarse_file(slide_id))
        except FileNotFoundError:
            return False
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        known = self._outlined.get(slide_id)
        if known is None or known[0] != key:
            try:
                found = not tumour_geometry(self.coarse(slide_id)).is_empty
            except ProtorefineError:  # a damaged file: the run's own check names it
                found = False
            known = self._outlined[slide_id] = (key, found)
        return known[1]

    def run_slides(self) -> list[SlideEntry]:
        """The slides a run refines: those with a coarse tumour outline (the others wait
        until they get one; a run with them left out says so)."""
        return [s for s in self.slides if self.has_outline(s.id)]

    def _run_index(self) -> dict[str, list[int]]:
        """Rows ``[start, stop)`` of each slide of the last run in the cohort arrays (tissue
        patches, slides in order), as the prototypes stage stored them; callers have checked
        that a stage from prototypes on is done (one fingerprint less per call)."""
        return json.loads((self.stage_dir("prototypes") / "index.json").read_text())

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

    def _corrections_path(self, slide_id: str) -> Path:
        return self.folder / "corrections" / f"{slide_id}.npz"

    def set_corrections(self, slide_id: str, labels: np.ndarray | None) -> None:
        """Save painted corrections, a (rows, cols) int8 grid: -1 none, 0 normal, 1 tumour.

        They are stored with the grid's cell size, so a later grid (another patch size,
        level or stride) reads them back resampled by position instead of losing them.
        """
        self.slide(slide_id)
        path = self._corrections_path(slide_id)
        legacy = path.with_suffix(".npy")
        if labels is None:
            path.unlink(missing_ok=True)
            legacy.unlink(missing_ok=True)
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
        legacy.unlink(missing_ok=True)

    def corrections(self, slide_id: str) -> np.ndarray | None:
        """The painted corrections on the slide's current grid (resampled by position), or None."""
        path = self._corrections_path(slide_id)
        legacy = path.with_suffix(".npy")
        if not path.exists():
            return np.load(legacy) if legacy.exists() else None  # saved on the current grid
        with np.load(path) as data:
            labels, ds = data["labels"], float(data["downsample"])
        grid = self.grid(slide_id)
        if labels.shape == (grid.rows, grid.cols) and abs(ds - grid.downsample) < 1e-6 * ds:
            return labels
        centre_r = ((np.arange(grid.rows) + 0.5) * grid.downsample / ds).astype(np.int64)
        centre_c = ((np.arange(grid.cols) + 0.5) * grid.downsample / ds).astype(np.int64)
        out = np.full((grid.rows, grid.cols), -1, dtype=np.int8)
        rr, cc = centre_r < labels.shape[0], centre_c < labels.shape[1]
        out[np.ix_(rr, cc)] = labels[np.ix_(centre_r[rr], centre_c[cc])]
        return out

    def set_prototype_label(self, global_id: int, label: str | None) -> None:
        """Relabel a global prototype: "tumour", "normal", "ignore", or None to clear."""
        if label is not None and label not in PROTOTYPE_LABELS:
            raise ProtorefineError(
                f"prototype label {label!r}: must be one of {', '.join(PROTOTYPE_LABELS)}"
            )
        labels = self.prototype_labels()
        if label is None:
            labels.pop(int(global_id), None)
        else:
            labels[int(global_id)] = label
        data = {
            "run": self.stage_info("prototypes").get("run"),
            "labels": {str(k): v for k, v in sorted(labels.items())},
        }
        atomic_write_text(self.folder / "prototype_labels.json", json.dumps(data, indent=2))

    def prototype_labels(self) -> dict[int, str]:
        """The pathologist's marks of the current global prototypes, {global id: label}.

        Marks belong to one build of the prototypes (ids change when they are rebuilt);
        after a rebuild the marks carried over to the new prototypes by the tissue they
        cover (``stages/prototypes/marks.json``) apply until the pathologist marks again.
        """
        run = self.stage_info("prototypes").get("run")
        path = self.folder / "prototype_labels.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        if "labels" in data:
            mine = data["run"] == run
        else:  # written before builds were recorded: valid only for such a build
            mine, data = run is None, {"labels": data}
        carried = self.stage_dir("prototypes") / "marks.json"
        if not mine:
            data = {"labels": json.loads(carried.read_text()) if carried.exists() else {}}
        return {int(k): v for k, v in data["labels"].items()}

    # ---- stages ---------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        """Folder of a stage's outputs."""
        return self.folder / "stages" / name

    @contextlib.contextmanager
    def reading(self) -> Iterator[Project]:
        """Read many slides' results with the inputs taken as fixed: this thread computes each
        stage's fingerprint once inside (a fingerprint covers every slide, so a loop over
        the slides would otherwise cost slides²). Change nothing inside."""
        outer = getattr(self._reading, "memo", None)
        if outer is None:
            self._reading.memo = {}
        try:
            yield self
        finally:
            if outer is None:
                self._reading.memo = None

    def fingerprint(self, name: str, *, legacy: bool = False) -> str:
        """Hash of everything a stage's output depends on (chained through earlier stages).

        ``legacy``: as projects made before session 7 computed it (with slide paths).
        """
        memo = getattr(self._reading, "memo", None)
        if memo is not None and not legacy:
            if name not in memo:
                memo[name] = self._fingerprint(name, legacy=False)
            return memo[name]
        return self._fingerprint(name, legacy=legacy)

    def _fingerprint(self, name: str, *, legacy: bool) -> str:
        fp = ""
        run = self.run_slides()
        for stage in STAGE_ORDER:
            own = {k: v for k, v in self.config.to_dict().items() if STAGE_OF.get(k) == stage}
            extra: Any = None
            if stage == "grid" and legacy:
                extra = [(s.id, s.path, list(s.shape)) for s in run]
            elif stage == "grid":
                # the slide, not where its file lies: a moved file keeps its results
                extra = [(s.id, list(s.shape), s.levels, s.mpp) for s in run]
            elif stage == "prototypes":
                extra = [_file_hash(self._coarse_file(s.id)) for s in run]
            elif stage == "pseudo_labels":
                corrections = os.path.join(self.folder, "corrections")
                extra = [
                    [
                        _file_hash(os.path.join(corrections, f"{s.id}{ext}"))
                        for ext in (".npz", ".npy")
                    ]
                    for s in run
                ]
                extra.append(sorted(self.prototype_labels().items()))
            fp = _hash([fp, stage, own, extra])
            if stage == name:
                return fp
        raise ProtorefineError(f"unknown stage {name!r}: stages are {', '.join(STAGE_ORDER)}")

    def stage_done(self, name: str) -> bool:
        """True when the stage's output is stored and matches the current inputs."""
        marker = self.stage_dir(name) / "done.json"
        if not marker.exists():
            return False
        try:
            info = json.loads(marker.read_text())
        except json.JSONDecodeError:
            return False
        stored = info.get("fingerprint")
        if stored == self.fingerprint(name):
            return True
        if stored is not None and stored == self.fingerprint(name, legacy=True):
            # a project made before fingerprints left out slide paths: its results still
            # match their inputs, so they are adopted rather than computed again
            info["fingerprint"] = self.fingerprint(name)
            atomic_write_text(marker, json.dumps(info, indent=2))
            return True
        return False

    def stage_info(self, name: str) -> dict:
        """The stage's ``done.json`` record (fingerprint, seconds, counts), {} when absent."""
        marker = self.stage_dir(name) / "done.json"
        return json.loads(marker.read_text()) if marker.exists() else {}

    def clear_stage(self, name: str) -> None:
        """Delete a stage's stored output."""
        shutil.rmtree(self.stage_dir(name), ignore_errors=True)

    def _require(self, name: str) -> Path:
        if not self.stage_done(name):
            raise ProtorefineError(
                f"stage {name!r} has not run (or its inputs changed) in project {self.folder}"
            )
        return self.stage_dir(name)

    # ---- grids and results -------------------------------------------------------
    def grid(self, slide_id: str):
        """The patch grid of a slide (stored by the grid stage, computed on demand before that)."""
        from protorefine.features.grid import PatchGrid

        fp = self.fingerprint("grid")
        key = (slide_id, fp)
        if key in self._grids:
            return self._grids[key]
        path = self.stage_dir("grid") / f"{slide_id}.npz"
        if self.stage_done("grid") and path.exists():
            with np.load(path) as data:
                grid = PatchGrid.from_dict(dict(data))
        else:
            grid = self.compute_grid(slide_id)
        self._grids[key] = grid
        return grid

    def compute_grid(self, slide_id: str):
        """Lay the patch grid of a slide from the config (no caching)."""
        from protorefine.features import make_grid

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
        from protorefine.features import coarse_labels

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
            path = self._require("output") / f"{slide_id}_refined.npy"
            return np.load(path)
        sl = self._slide_slice(slide_id)
        if key in ("local_proto", "global_proto"):
            with np.load(self._require("prototypes") / "prototypes.npz") as d:
                values = np.asarray(d[key])[sl]
            return grid.to_image(values.astype(np.int64), fill=-1)
        if key in ("pseudo", "confidence"):
            stage = "classifier" if self.stage_done("classifier") else "pseudo_labels"
            with np.load(self._require(stage) / "pseudo.npz") as d:
                values = np.asarray(d[key])[sl]
            if key == "pseudo":
                return grid.to_image(values.astype(np.int8), fill=-1)
            return grid.to_image(values.astype(np.float32), fill=0.0)
        stage = "output" if self.stage_done("output") else "classifier"
        with np.load(self._require(stage) / "prob.npz") as d:
            values = np.asarray(d["prob"])[sl]
        return grid.to_image(values.astype(np.float32), fill=0.0)

    def global_scores(self) -> np.ndarray:
        """Tumour score of each global prototype (before the pathologist's relabels)."""
        with np.load(self._require("prototypes") / "prototypes.npz") as d:
            return np.asarray(d["global_scores"])

    def history(self) -> list[dict]:
        """Loss and agreement per round of the last classifier run."""
        return json.loads((self._require("classifier") / "history.json").read_text())

    def refined_annotations(self, slide_id: str) -> AnnotationSet:
        """The refined tumour polygons of a slide (level-0 pixels)."""
        from protorefine.annotations import read_geojson

        return read_geojson(self._refined_path(slide_id), allow_empty=True)

    def _refined_path(self, slide_id: str) -> Path:
        return self._require("output") / f"{slide_id}.geojson"

    def _edit_paths(self, slide_id: str) -> tuple[Path, Path]:
        return (
            self.folder / "edited" / f"{slide_id}.geojson",
            self.folder / "edited" / f"{slide_id}.json",
        )

    def set_outline_edit(self, slide_id: str, annset: AnnotationSet | None) -> None:
        """Keep the pathologist's hand edits of ``slide_id``'s refined outline (None: drop them).

        They belong to the refinement they were drawn on: a rerun that changes the
        refined outline supersedes them (the file stays in ``edited/``).
        """
        from protorefine.annotations import write_geojson

        shapes, meta = self._edit_paths(self.slide(slide_id).id)
        if annset is None:
            meta.unlink(missing_ok=True)
            return
        shapes.parent.mkdir(exist_ok=True)
        write_geojson(annset, shapes)
        atomic_write_text(meta, json.dumps({"output": self.fingerprint("output")}))

    def revert_to_coarse(self, slide_id: str, part: BaseGeometry) -> AnnotationSet:
        """Take the coarse outline's word inside ``part`` (level-0 polygon(s)): the accepted
        outline loses what it has there and gains what the coarse outline has there. Kept
        as a hand edit (exported, discardable); returns the new accepted outline.

        One click undoes a change the refinement made (``measure.outline_changes``) that the
        pathologist disagrees with: a part taken out goes back in, a part added goes.
        """
        from protorefine.annotations import Annotation, tumour_geometry
        from protorefine.annotations.classes import polygonal

        slide_id = self.slide(slide_id).id
        if not self.has_results(slide_id):
            raise ProtorefineError(f"slide {slide_id!r} has no refined outline to change yet")
        if part is None or part.is_empty or part.area <= 0:
            raise ProtorefineError("nothing to revert: the part has no area")
        coarse = self.coarse(slide_id)
        accepted = self.accepted_outline(slide_id)
        keep = tumour_geometry(accepted).difference(part)
        if coarse is not None:
            keep = keep.union(tumour_geometry(coarse).intersection(part))
        keep = polygonal(keep)
        pieces = [g for g in getattr(keep, "geoms", [keep]) if g.area >= MIN_PART_AREA]
        classification = next((a.classification for a in accepted), TUMOR)
        annset = AnnotationSet([Annotation(g, classification) for g in pieces])
        self.set_outline_edit(slide_id, annset)
        return annset

    def outline_edited(self, slide_id: str) -> bool:
        """True when ``slide_id``'s refined outline has hand edits made on the current refinement."""
        shapes, meta = self._edit_paths(slide_id)
        if not (shapes.exists() and meta.exists() and self.has_results(slide_id)):
            return False
        return json.loads(meta.read_text()).get("output") == self.fingerprint("output")

    def accepted_outline(self, slide_id: str) -> AnnotationSet:
        """The outline the pathologist accepts: the refined one with their hand edits, if any."""
        from protorefine.annotations import read_geojson

        if not self.has_results(slide_id):
            raise ProtorefineError(
                f"slide {slide_id!r} has no refined outline: "
                + (
                    "it was left out of the last run"
                    if self.stage_done("output")
                    else "refine the project first"
                )
            )
        return read_geojson(self._accepted_path(slide_id), allow_empty=True)

    def _accepted_path(self, slide_id: str) -> Path:
        """The file holding ``slide_id``'s accepted outline (hand edits, else the refined one)."""
        if self.outline_edited(slide_id):
            return self._edit_paths(slide_id)[0]
        return self._refined_path(slide_id)

    def _reviews(self) -> dict[str, dict]:
        path = self.folder / "reviewed.json"
        try:
            data = json.loads(path.read_text()) if path.exists() else {}
        except json.JSONDecodeError:
            return {}  # a damaged record only loses the ticks, never an outline
        return data if isinstance(data, dict) else {}

    def set_reviewed(self, slide_id: str, reviewed: bool = True) -> None:
        """Record that the pathologist checked ``slide_id``'s accepted outline as it is now
        (False: take the record back). A later change of the outline makes it stale."""
        import datetime as dt

        self.slide(slide_id)
        reviews = self._reviews()
        if reviewed:
            if not self.has_results(slide_id):
                raise ProtorefineError(f"slide {slide_id!r} has no refined outline to review yet")
            reviews[slide_id] = {
                "outline": _file_hash(self._accepted_path(slide_id)),
                "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            }
        else:
            reviews.pop(slide_id, None)
        atomic_write_text(self.folder / "reviewed.json", json.dumps(reviews, indent=2))

    def review_state(self, slide_id: str) -> str | None:
        """ "reviewed" when the pathologist checked the accepted outline as it is now,
        "changed" when it changed since (a rerun, a hand edit), None when never checked."""
        record = self._reviews().get(slide_id)
        if not record:
            return None
        if self.has_results(slide_id) and record.get("outline") == _file_hash(
            self._accepted_path(slide_id)
        ):
            return "reviewed"
        return "changed"

    def export_outline(
        self, slide_id: str, path: str | Path, *, downsample: float | None = None
    ) -> Path:
        """Write ``slide_id``'s accepted outline to ``path``, atomically: QuPath GeoJSON
        (``.geojson``/``.json``, level-0 pixels, each region with its area and greatest
        dimension as QuPath measurements), ASAP XML (``.xml``), or a 0/255 mask (``.png``,
        ``.tif``) at ``downsample`` of level 0, for training segmentation models."""
        from protorefine.annotations import write_asap_xml, write_geojson
        from protorefine.annotations.masks import write_mask
        from protorefine.measure import with_measurements

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".geojson", ".json", ".xml", ".png", ".tif", ".tiff"):
            raise ProtorefineError(
                f"{path}: an outline is exported as .geojson (QuPath), .xml (ASAP) or a "
                f".png / .tif mask, not '{path.suffix or path.name}'"
            )
        mask = suffix in (".png", ".tif", ".tiff")
        if mask and downsample is None:
            raise ProtorefineError(f"{path}: a mask needs a downsample of level 0 (e.g. 16)")
        outline = self.accepted_outline(slide_id)
        if mask:
            write_mask(outline, path, self.slide(slide_id).shape, downsample)
        elif suffix == ".xml":
            write_asap_xml(outline, path)
        else:
            write_geojson(with_measurements(outline, self.slide(slide_id).mpp), path)
        return path

    def export_refined(
        self,
        folder: str | Path,
        suffixes: str | Sequence[str] = ".geojson",
        *,
        downsample: float | None = None,
        slides: Sequence[str] | None = None,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> list[Path]:
        """Write every refined slide's accepted outline (or those of ``slides``) to
        ``folder/<slide><suffix>`` for each of ``suffixes`` (:meth:`export_outline`; e.g.
        ``"_mask.tif"`` with a ``downsample`` for masks) and the project's measurements to
        ``folder/tumour_measurements.csv``; returns the outlines' paths. Refused before
        anything is written where a target holds a coarse outline
        (:meth:`check_export_targets`); a cancel stops between slides (the files written
        so far are whole)."""
        from protorefine.measure import write_measurements_csv

        folder = Path(folder)
        suffixes = [suffixes] if isinstance(suffixes, str) else list(suffixes)
        written = []
        with self.reading():
            refined = [  # others: no outline
                s
                for s in self.slides
                if self.has_results(s.id) and (slides is None or s.id in slides)
            ]
            self.check_export_targets(folder, suffixes, [s.id for s in refined])
            folder.mkdir(parents=True, exist_ok=True)
            n = len(refined)
            for i, s in enumerate(refined):
                if cancel is not None and cancel():
                    raise CancelledError(f"export cancelled after {i} of {n} slides")
                if progress is not None:
                    progress(i, n + 1, s.id)
                for suffix in suffixes:
                    target = folder / f"{s.id}{suffix}"
                    written.append(self.export_outline(s.id, target, downsample=downsample))
        write_measurements_csv(self, folder / MEASUREMENTS_CSV)
        if progress is not None:
            progress(n + 1, n + 1, MEASUREMENTS_CSV)
        return written

    def check_export_targets(
        self, folder: str | Path, suffixes: Sequence[str], slides: Sequence[str]
    ) -> None:
        """Refuse an export into the folder of the coarse files: a ``<slide><suffix>`` there
        that holds that slide's coarse outline is the pathologist's work, not an earlier
        export (which may be overwritten)."""
        from protorefine.annotations import read_annotations

        for sid in slides:
            for suffix in suffixes:
                target = Path(folder) / f"{sid}{suffix}"
                if target.suffix.lower() not in (".geojson", ".json", ".xml"):
                    continue
                if not target.is_file():
                    continue
                coarse = self.coarse(sid)
                try:  # as written, and clipped to the slide as a coarse file is when read in
                    there = [
                        read_annotations(target, slide_shape=shape, allow_empty=True)
                        for shape in (None, self.slide(sid).shape)
                    ]
                except ProtorefineError:
                    continue  # not an outline: nothing of the pathologist's to keep
                if any(same_annotations(coarse, t) for t in there):
                    raise ProtorefineError(
                        f"{target}: holds the coarse outline of slide {sid!r}, which the export "
                        "would overwrite; choose another folder"
                    )

    def measurements(self, slide_id: str) -> dict[str, Measurements]:
        """Regions, area and greatest dimension of the coarse and (when run) accepted outlines."""
        from protorefine.measure import measure

        mpp = self.slide(slide_id).mpp
        out = {}
        coarse = self.coarse(slide_id)
        if coarse is not None:
            out["coarse"] = measure(coarse, mpp)
        if self.has_results(slide_id):
            out["refined"] = measure(self.accepted_outline(slide_id), mpp)
        return out

    def unsure_shares(self) -> dict[str, float]:
        """Per slide of the last run, the share of its tissue patches whose refined tumour
        probability lies in ``measure.UNSURE`` (the model is unsure there); empty before
        the output stage."""
        from protorefine.measure import unsure_share

        if not self.stage_done("output"):
            return {}
        index = self._run_index()
        with np.load(self._require("output") / "prob.npz") as d:
            prob = np.asarray(d["prob"])
        return {sid: unsure_share(prob[a:b]) for sid, (a, b) in index.items()}

    def review_order(self) -> list[str]:
        """Refined slides (files present) whose outline is not ticked as reviewed as it is
        now, the least sure first: the model's unsure share predicts which are worst."""
        with self.reading():
            unsure = self.unsure_shares()
            todo = [
                s.id
                for s in self.slides
                if s.id in unsure
                and not self.slide_missing(s.id)
                and self.review_state(s.id) != "reviewed"
            ]
        return sorted(todo, key=lambda sid: -unsure.get(sid, 0.0))

    def feature_cache(self, encoder_name: str, weight_hash: str) -> Path:
        """Folder of cached features for an encoder on the current grid parameters."""
        cfg = self.config
        key = _hash(
            [
                encoder_name,
                weight_hash,
                cfg.patch_size,
                cfg.level,
                cfg.mpp,
                cfg.stride,
                cfg.tissue_threshold,
            ]
        )
        return self.folder / "features" / key


def checked_mpp(mpp: float) -> float:
    """``mpp`` as a float when it is a plausible pixel size, else a one-line error."""
    value = float(mpp)
    if not math.isfinite(value) or not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
        raise ProtorefineError(
            f"{mpp}: microns per pixel must be between {MPP_RANGE[0]} and {MPP_RANGE[1]} "
            "(a 40x scan is about 0.25, 20x about 0.5)"
        )
    return value


def same_annotations(a: AnnotationSet | None, b: AnnotationSet | None) -> bool:
    """True when two annotation sets hold the same classes and (nearly) the same regions."""
    if a is None or b is None or a.classes() != b.classes():
        return False
    for cls in a.classes():
        ga, gb = a.union([cls]), b.union([cls])
        if ga.symmetric_difference(gb).area > 1e-6 * max(ga.area, 1.0):
            return False
    return True


def _stem(path: Path) -> str:
    """File stem without slide suffixes (``a.ome.tif`` -> ``a``, ``b.zarr`` -> ``b``)."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", ".ome.zarr", ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays to an .npz file atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically."""
    atomic_write_bytes(path, json.dumps(data, indent=2, default=str).encode())
