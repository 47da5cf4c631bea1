"""The stages' files in a project, their fingerprints, and the project formats of earlier versions.

Each stage keeps its output in ``stages/<stage>/`` and counts as done when that folder
holds ``done.json`` whose fingerprint matches the current inputs (config fields of that
stage and the ones before, slides, coarse outlines, corrections, prototype marks), so
changed inputs invalidate it by themselves. Every file name a stage writes or reads is
defined here, once (:data:`STAGE_FILES`).

Projects written by earlier versions keep working: what differs between versions is
written down as format classes (:class:`FormatV1`, :class:`FormatV2`, in the manner of
ome-zarr-py's ``format.py``), and :data:`FORMATS` (newest first) decides which one a
file is read with. New files are always written in :data:`CURRENT_FORMAT`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from protorefine._atomic import atomic_write_text
from protorefine.errors import ProtorefineError
from protorefine.refine.config import STAGE_OF, STAGE_ORDER

if TYPE_CHECKING:
    import threading

    from protorefine.features.grid import PatchGrid
    from protorefine.refine.config import RefineConfig

# ---- file names -------------------------------------------------------------------------
#: Folder of the stages' outputs, one subfolder per stage (``stages/<stage>/``).
#: The project's settings (``RefineConfig`` and encoder info); its presence makes a folder a project.
CONFIG_FILE = "config.json"
STAGES_FOLDER = "stages"
#: A finished stage's record: fingerprint of its inputs, seconds, counts.
DONE_FILE = "done.json"
#: grid: a slide's patch grid (``PatchGrid.to_dict``).
GRID_FILE = "{slide}.npz"
#: features: the folder of the feature cache the stage filled (the features live there).
CACHE_FILE = "cache.txt"
#: prototypes: local and global prototypes, per tissue patch of the cohort.
PROTOTYPES_FILE = "prototypes.npz"
#: prototypes: the cohort's coarse labels, distances, slide index, grid cells, patch centres.
COHORT_FILE = "cohort.npz"
#: prototypes: rows ``[start, stop)`` of each slide in the cohort arrays.
INDEX_FILE = "index.json"
#: prototypes: the pathologist's marks carried over from the previous build.
MARKS_FILE = "marks.json"
#: pseudo_labels (and classifier: its updated ones): pseudo-labels and confidences.
PSEUDO_FILE = "pseudo.npz"
#: classifier: the trained head.
MODEL_FILE = "model.pt"
#: classifier (the head's) and output (the final one): tumour probability per patch.
PROB_FILE = "prob.npz"
#: classifier: loss and agreement per round.
HISTORY_FILE = "history.json"
#: output: a slide's refined (rows, cols) patch mask.
REFINED_GRID_FILE = "{slide}_refined.npy"
#: output: a slide's refined outline (level-0 pixels).
OUTLINE_FILE = "{slide}.geojson"
#: pixels: a slide's tumour probability per dense cell, a zarr pyramid (``project.pyramid``).
PIXEL_PROB_FILE = "{slide}_pixels.zarr"
#: pixels: a slide's first pass per dense cell (the pixel pseudo-mask), a zarr pyramid.
PIXEL_PSEUDO_FILE = "{slide}_pseudo.zarr"
#: pixels: where a slide's dense cells lie (level-0 pixels per cell, rows, cols, µm per pixel).
PIXEL_GRID_FILE = "{slide}_cells.json"

#: What each stage leaves in ``stages/<stage>/`` besides :data:`DONE_FILE` ("{slide}": one a slide).
STAGE_FILES: dict[str, tuple[str, ...]] = {
    "grid": (GRID_FILE,),
    "features": (CACHE_FILE,),
    "prototypes": (PROTOTYPES_FILE, COHORT_FILE, INDEX_FILE, MARKS_FILE),
    "pseudo_labels": (PSEUDO_FILE,),
    "classifier": (MODEL_FILE, PROB_FILE, PSEUDO_FILE, HISTORY_FILE),
    "output": (PROB_FILE, REFINED_GRID_FILE, OUTLINE_FILE),
    "pixels": (PIXEL_PROB_FILE, PIXEL_PSEUDO_FILE, PIXEL_GRID_FILE, OUTLINE_FILE),
}

#: Feature caches, ``features/<key>/<slide>.npy`` (+ ``.cells``: the grid cells of its rows),
#: keyed by encoder, weight hash and grid settings (:meth:`StagesMixin.feature_cache`).
FEATURES_FOLDER = "features"
FEATURES_FILE = "{slide}.npy"
#: Stain statistics per fine cell for colour prototypes, ``colour/<slide>-f<factor>.npy``
#: (+ ``.cells``: the grid they were read on).
COLOUR_FOLDER = "colour"
COLOUR_FILE = "{slide}-f{factor}.npy"
#: Dense features of the pixel stage, ``dense/<slide>.npy`` (+ ``.cells``: the dense grid).
DENSE_FOLDER = "dense"
#: Suffix of the file next to a cache that names the grid cells it belongs to.
CELLS_SUFFIX = ".cells"


def slide_file(template: str, slide_id: str) -> str:
    """A per-slide file name of :data:`STAGE_FILES` for ``slide_id``."""
    return template.format(slide=slide_id)


def feature_cache_files(cache: Path, slide_id: str) -> tuple[Path, Path]:
    """A slide's cached features in the cache folder ``cache``, and the file naming their cells."""
    path = cache / slide_file(FEATURES_FILE, slide_id)
    return path, path.with_suffix(CELLS_SUFFIX)


def colour_cache_files(folder: Path, slide_id: str, factor: int) -> tuple[Path, Path]:
    """A slide's stain statistics at ``factor`` fine cells per patch side in the project at
    ``folder``, and the file naming the grid they were read on."""
    path = folder / COLOUR_FOLDER / COLOUR_FILE.format(slide=slide_id, factor=factor)
    return path, path.with_suffix(CELLS_SUFFIX)


def dense_cache_files(folder: Path, slide_id: str) -> tuple[Path, Path]:
    """A slide's dense features in the project at ``folder``, and the file naming the dense
    grid and encoder they were computed with."""
    path = folder / DENSE_FOLDER / f"{slide_id}.npy"
    return path, path.with_suffix(CELLS_SUFFIX)


# ---- reading stored arrays ------------------------------------------------------------------
#: What a damaged stored array raises when read (a missing file is not damage: it passes).
_DAMAGE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)
#: What to do about a damaged stage output or cache: the next run makes it again.
RERUN = "run refine again to recompute it"


class DamagedFileError(ProtorefineError):
    """A file of the project's own stored results does not read back (truncated, emptied,
    not an array of numbers)."""


def _damaged(path: Path, exc: BaseException, remedy: str) -> DamagedFileError:
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DamagedFileError(
        f"{path}: the project's stored results are damaged ({reason}); {remedy}"
    )


def read_npy(path: Path, *, remedy: str = RERUN) -> np.ndarray:
    """The array of a ``.npy`` file the project wrote (never a pickle); a damaged file is a
    one-line :class:`DamagedFileError` naming it (a missing one raises FileNotFoundError)."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except _DAMAGE as exc:
        raise _damaged(Path(path), exc, remedy) from exc


def read_npz(path: Path, keys: Sequence[str] = (), *, remedy: str = RERUN) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file the project wrote, read at once (never a pickle);
    ``keys`` must be among them. A damaged file is a one-line :class:`DamagedFileError`
    naming it (a missing one raises FileNotFoundError)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
        missing = [k for k in keys if k not in arrays]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
        return arrays
    except FileNotFoundError:
        raise
    except _DAMAGE as exc:
        raise _damaged(Path(path), exc, remedy) from exc


def _npy_rows(path: Path) -> int | None:
    """Rows of the whole ``.npy`` file of numbers at ``path`` (None: absent, damaged or a pickle)."""
    try:
        return int(np.load(path, mmap_mode="r", allow_pickle=False).shape[0])
    except (*_DAMAGE, IndexError):
        return None


def slide_id_problem(slide_id: object) -> str | None:
    """Why ``slide_id`` cannot name a slide (None: it can). Ids are joined into the
    project's file names (``coarse/<id>.geojson``, ``stages/grid/<id>.npz``, ...), so an id
    must be one plain file name: not empty, not ``.`` or ``..``, no path separator."""
    if not isinstance(slide_id, str):
        return "must be text"
    if slide_id in ("", ".", ".."):
        return "must be a plain name (not empty, . or ..)"
    if any(ch in slide_id for ch in ("/", "\\", "\0")) or os.sep in slide_id:
        return "must be a plain name (no path separators)"
    return None


@dataclass
class SlideEntry:
    """One slide of a project (a row of ``slides.json``, and what the grid stage's
    fingerprint holds of it): unique ``id`` (file stem), ``path``, level-0 ``shape``, level
    count, mpp (from the file, or set by hand when ``mpp_by_user``)."""

    id: str
    path: str
    shape: tuple[int, int]
    levels: int
    mpp: float | None = None
    mpp_by_user: bool = False


#: What to do about damaged painted corrections (not recomputed: the pathologist painted them).
_CORRECTIONS_REMEDY = "delete it and paint the slide's corrections again"


# ---- project formats ----------------------------------------------------------------------
class FormatV1:
    """Projects written by the first versions (before 23 November 2026).

    - Fingerprints hold each slide's file path (a moved file made every stage stale).
    - Painted corrections are ``corrections/<slide>.npy``: a (rows, cols) int8 grid on the
      grid of the time, without its cell size.
    - Prototype marks (``prototype_labels.json``) are a plain ``{global id: label}``
      mapping, not tied to one build of the prototypes.
    - Feature caches have no ``.cells`` file: their row count is all that ties them to a grid.

    ``config.json`` says ``"version": 1`` in every format: what changed since lies in the
    other files, so each file is recognised by its own shape (a project may hold files of
    both formats).
    """

    version = 1
    #: Suffix of a slide's painted corrections in ``corrections/``.
    corrections_suffix = ".npy"

    def grid_inputs(self, slides: Sequence[SlideEntry]) -> list:
        """What the grid stage's fingerprint holds about the slides of a run."""
        return [(s.id, s.path, list(s.shape)) for s in slides]

    def matches_marks(self, data: dict) -> bool:
        """True when ``prototype_labels.json`` holding ``data`` was written in this format."""
        return "labels" not in data

    def marks_of_build(self, data: dict, run: str | None) -> dict | None:
        """The marks in ``data`` when they belong to the prototypes built by ``run`` (None:
        they belong to another build). Unrecorded builds are those of this format."""
        return data if run is None else None

    def read_corrections(self, path: Path) -> tuple[np.ndarray, float | None]:
        """Painted corrections and the cell size they were painted at (None: the current grid's)."""
        return read_npy(path, remedy=_CORRECTIONS_REMEDY), None

    def features_fit(self, path: Path, cells: Path, grid: PatchGrid) -> bool:
        """True when cached features at ``path`` belong to the tissue cells of ``grid``."""
        return _npy_rows(path) == int(grid.tissue.sum())


class FormatV2(FormatV1):
    """Projects written since 24 November 2026 (the current format).

    - Fingerprints hold the slide (id, size, levels, pixel size), not where its file lies:
      a moved file keeps its results.
    - Painted corrections are ``corrections/<slide>.npz``: the grid with its cell size, so a
      later grid reads them back resampled by position.
    - Prototype marks record the build of the prototypes they were made on.
    - Feature caches name their grid cells in ``.cells``.
    """

    version = 2
    corrections_suffix = ".npz"

    def grid_inputs(self, slides: Sequence[SlideEntry]) -> list:
        return [(s.id, list(s.shape), s.levels, s.mpp) for s in slides]

    def matches_marks(self, data: dict) -> bool:
        return "labels" in data

    def marks_of_build(self, data: dict, run: str | None) -> dict | None:
        return data["labels"] if data["run"] == run else None

    def read_corrections(self, path: Path) -> tuple[np.ndarray, float | None]:
        data = read_npz(path, ("labels", "downsample"), remedy=_CORRECTIONS_REMEDY)
        return data["labels"], float(data["downsample"])

    def features_fit(self, path: Path, cells: Path, grid: PatchGrid) -> bool:
        return _npy_rows(path) is not None and cells.read_text() == grid.signature()


#: Every project format protorefine reads, newest first; files are written in the first.
FORMATS: tuple[FormatV1, ...] = (FormatV2(), FormatV1())
CURRENT_FORMAT = FORMATS[0]


def marks_format(data: dict) -> FormatV1:
    """The format ``prototype_labels.json`` holding ``data`` was written in."""
    return next(fmt for fmt in FORMATS if fmt.matches_marks(data))


def cached_features_fit(path: Path, grid: PatchGrid) -> bool:
    """True when the feature cache file ``path`` holds the tissue cells of ``grid`` (read in
    the format that wrote it: with ``.cells``, else by its row count)."""
    cells = path.with_suffix(CELLS_SUFFIX)
    if not path.exists():
        return False
    fmt = CURRENT_FORMAT if cells.exists() else FormatV1()
    return fmt.features_fit(path, cells, grid)


# ---- fingerprints --------------------------------------------------------------------------
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


class StagesMixin:
    """The stages' records of a :class:`~protorefine.project.store.Project`: where each
    stage's output lies, its fingerprint, whether it is done."""

    if TYPE_CHECKING:  # provided by Project
        folder: Path
        config: RefineConfig
        _reading: threading.local

        def run_slides(self) -> list[SlideEntry]: ...
        def _coarse_file(self, slide_id: str) -> str: ...
        def marks(self) -> dict[int, str]: ...

    def stage_dir(self, name: str) -> Path:
        """Folder of a stage's outputs; only the pipeline's stages have one (so clearing or
        forgetting a stage can only touch the folders the pipeline made)."""
        if name not in STAGE_ORDER:
            raise ProtorefineError(f"unknown stage {name!r}: stages are {', '.join(STAGE_ORDER)}")
        return self.folder / STAGES_FOLDER / name

    @contextlib.contextmanager
    def reading(self) -> Iterator[Self]:
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

    def fingerprint(self, name: str, *, fmt: FormatV1 = CURRENT_FORMAT) -> str:
        """Hash of everything a stage's output depends on (chained through earlier stages),
        as projects of format ``fmt`` computed it (:class:`FormatV1`: with slide paths)."""
        memo = getattr(self._reading, "memo", None)
        if memo is not None and fmt is CURRENT_FORMAT:
            if name not in memo:
                memo[name] = self._fingerprint(name, fmt=fmt)
            return memo[name]
        return self._fingerprint(name, fmt=fmt)

    def _fingerprint(self, name: str, *, fmt: FormatV1) -> str:
        fp = ""
        run = self.run_slides()
        for stage in STAGE_ORDER:
            own = {k: v for k, v in self.config.to_dict().items() if STAGE_OF.get(k) == stage}
            extra: Any = None
            if stage == "grid":
                extra = fmt.grid_inputs(run)
            elif stage == "prototypes":
                extra = [_file_hash(self._coarse_file(s.id)) for s in run]
            elif stage == "pseudo_labels":
                corrections = os.path.join(self.folder, "corrections")
                extra = [
                    [
                        _file_hash(os.path.join(corrections, f"{s.id}{f.corrections_suffix}"))
                        for f in FORMATS
                    ]
                    for s in run
                ]
                extra.append(sorted(self.marks().items()))
            fp = _hash([fp, stage, own, extra])
            if stage == name:
                return fp
        raise ProtorefineError(f"unknown stage {name!r}: stages are {', '.join(STAGE_ORDER)}")

    def stage_done(self, name: str) -> bool:
        """True when the stage's output is stored and matches the current inputs."""
        marker = self.stage_dir(name) / DONE_FILE
        if not marker.exists():
            return False
        try:
            info = json.loads(marker.read_text())
        except json.JSONDecodeError:
            return False
        stored = info.get("fingerprint")
        if stored == self.fingerprint(name):
            return True
        for fmt in FORMATS[1:]:
            if stored is not None and stored == self.fingerprint(name, fmt=fmt):
                # a project of an earlier format: its results still match their inputs,
                # so they are adopted (and recorded in today's terms), not computed again
                info["fingerprint"] = self.fingerprint(name)
                atomic_write_text(marker, json.dumps(info, indent=2))
                return True
        return False

    def stage_info(self, name: str) -> dict:
        """The stage's ``done.json`` record (fingerprint, seconds, counts), {} when absent."""
        marker = self.stage_dir(name) / DONE_FILE
        return json.loads(marker.read_text()) if marker.exists() else {}

    def _own_stage_dir(self, name: str) -> Path:
        """The stage's folder when deleting in it can only touch what the pipeline made:
        neither it nor the ``stages`` folder above it is a link to somewhere else."""
        folder = self.stage_dir(name)
        for path in (folder.parent, folder):
            if path.is_symlink():
                raise ProtorefineError(
                    f"{path}: a link, not a stage folder protorefine made; left alone"
                )
        return folder

    def clear_stage(self, name: str) -> None:
        """Delete a stage's stored output: the folder the pipeline moved in, never a link
        to somewhere else."""
        shutil.rmtree(self._own_stage_dir(name), ignore_errors=True)

    def _require(self, name: str) -> Path:
        """The folder of a stage that is done; ProtorefineError when it is not."""
        if not self.stage_done(name):
            raise ProtorefineError(
                f"stage {name!r} has not run (or its inputs changed) in project {self.folder}"
            )
        return self.stage_dir(name)

    def stage_file(self, name: str, file: str, slide_id: str | None = None) -> Path:
        """``file`` (of :data:`STAGE_FILES`, for ``slide_id`` when per slide) of a stage
        that is done; ProtorefineError when it is not."""
        folder = self._require(name)
        return folder / (file if slide_id is None else slide_file(file, slide_id))

    def stage_arrays(
        self, name: str, file: str, keys: Sequence[str] = (), slide_id: str | None = None
    ) -> dict[str, np.ndarray]:
        """The arrays of an ``.npz`` file of a stage that is done (:meth:`stage_file`); a
        damaged file makes the stage not done (the next run recomputes it) and is a
        one-line :class:`DamagedFileError`."""
        path = self.stage_file(name, file, slide_id)
        try:
            return read_npz(path, keys, remedy=self._rerun_remedy(name))
        except DamagedFileError:
            self.forget_stage(name)
            raise

    def stage_array(self, name: str, file: str, slide_id: str | None = None) -> np.ndarray:
        """The array of a ``.npy`` file of a stage that is done, as :meth:`stage_arrays`."""
        path = self.stage_file(name, file, slide_id)
        try:
            return read_npy(path, remedy=self._rerun_remedy(name))
        except DamagedFileError:
            self.forget_stage(name)
            raise

    @staticmethod
    def _rerun_remedy(name: str) -> str:
        return f"run refine again: stage {name!r} is recomputed"

    def forget_stage(self, name: str) -> None:
        """Make a stage count as not done (its output is damaged): the next run recomputes it."""
        with contextlib.suppress(FileNotFoundError):
            (self._own_stage_dir(name) / DONE_FILE).unlink()

    def _run_index(self) -> dict[str, list[int]]:
        """Rows ``[start, stop)`` of each slide of the last run in the cohort arrays (tissue
        patches, slides in order), as the prototypes stage stored them; callers have checked
        that a stage from prototypes on is done (one fingerprint less per call)."""
        return json.loads((self.stage_dir("prototypes") / INDEX_FILE).read_text())

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
        return self.folder / FEATURES_FOLDER / key

    def features_cache_dir(self) -> Path:
        """The feature cache folder the finished features stage filled (:data:`CACHE_FILE`).

        It is stored relative to the project folder, so a project made by a relative path
        or moved keeps its features. Earlier versions stored it as written (absolute, or
        relative to the folder the run started in): that path is used while it exists,
        else the folder of the same name in this project's :data:`FEATURES_FOLDER`.
        """
        text = self.stage_file("features", CACHE_FILE).read_text().strip()
        stored = Path(text)
        if not stored.is_absolute() and stored.parts[:1] == (FEATURES_FOLDER,):
            return self.folder / stored
        if stored.is_dir():
            return stored
        return self.folder / FEATURES_FOLDER / stored.name

    def colour_cache(self, slide_id: str, factor: int) -> tuple[Path, Path]:
        """Where a slide's stain statistics at ``factor`` fine cells per patch side are kept,
        and the file naming the grid they were read on."""
        return colour_cache_files(self.folder, slide_id, factor)
