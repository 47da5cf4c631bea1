"""The one step sequence: each stage loads its inputs from the project, runs its step
(``features.make_grid`` / ``extract_features``, then ``refine.steps``) and saves what it
returns atomically, so a rerun resumes. The CLI, napari and the benchmarks all run it."""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from protorefine._atomic import atomic_path, atomic_write_text
from protorefine._types import Cancel, Progress
from protorefine.annotations import (
    AnnotationSet,
    rasterize,
    read_annotations,
    read_geojson,
    tumour_class_name,
    tumour_geometry,
    write_geojson,
)
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.features import extract_features, get_encoder
from protorefine.features.dense import (
    BLOCK_WIDTHS,
    DenseEncoder,
    DenseGrid,
    dense_features,
    dense_grid,
)
from protorefine.features.device import resolve_device
from protorefine.features.encoders import efficientnet_lite0_weights, file_sha256
from protorefine.features.grid import PatchGrid
from protorefine.project.lock import holds_project_lock
from protorefine.project.pyramid import write_pyramid
from protorefine.project.stages import (
    CACHE_FILE,
    COHORT_FILE,
    CONFIG_FILE,
    DONE_FILE,
    GRID_FILE,
    HISTORY_FILE,
    INDEX_FILE,
    MARKS_FILE,
    MODEL_FILE,
    OUTLINE_FILE,
    PIXEL_GRID_FILE,
    PIXEL_PROB_FILE,
    PIXEL_PSEUDO_FILE,
    PROB_FILE,
    PROTOTYPES_FILE,
    PSEUDO_FILE,
    REFINED_GRID_FILE,
    DamagedFileError,
    cached_features_fit,
    dense_cache_files,
    feature_cache_files,
    read_npy,
    read_npz,
    slide_file,
)
from protorefine.project.store import Project, same_annotations, write_npz
from protorefine.refine.classifier import load_checkpoint, save_checkpoint
from protorefine.refine.config import STAGE_ORDER, RefineConfig
from protorefine.refine.pixels import (
    PixelPrep,
    PixelResult,
    PixelSlide,
    cohort_model,
    pixel_mask,
    pixel_outline,
    prepare_slide,
    refine_slide,
)
from protorefine.refine.prototypes import CosineSpace, LocalPrototypes, Prototypes, carry_marks
from protorefine.refine.pseudolabels import PseudoLabels
from protorefine.refine.stain_clusters import cell_features, cell_sums
from protorefine.refine.steps import (
    Cohort,
    classifier_step,
    outline_step,
    probability_step,
    prototypes_step,
    pseudo_labels_step,
    slide_prototypes_step,
)
from protorefine.slides import tissue_mask

#: What to do about a damaged feature cache file: the features stage makes it again.
_FEATURES_REMEDY = "run refine again: the features are recomputed"


def cell_tissue(slide, grid: DenseGrid) -> np.ndarray:
    """(rows, cols) bool: the dense cells whose centre lies on the slide's tissue."""
    mask, ds = tissue_mask(slide)
    ty = np.minimum(((np.arange(grid.rows) + 0.5) * grid.cell0 / ds).astype(int), mask.shape[0] - 1)
    tx = np.minimum(((np.arange(grid.cols) + 0.5) * grid.cell0 / ds).astype(int), mask.shape[1] - 1)
    return mask[ty[:, None], tx[None, :]]


@dataclass
class PixelOutput:
    """One slide's pixel-stage output as the stage stores it: the probability and pseudo-mask
    (``result``), the traced ``outline``, the dense ``grid`` and the report's ``counts``."""

    result: PixelResult
    outline: AnnotationSet
    grid: DenseGrid
    counts: dict


class Pipeline:
    """The stages grid -> features -> prototypes -> pseudo_labels -> classifier -> output
    -> pixels."""

    STAGES = STAGE_ORDER

    def __init__(
        self,
        project: Project,
        config: RefineConfig | None = None,
        *,
        partial: bool = False,
        loader: str | None = None,
    ) -> None:
        """``partial``: refine the slides that have a coarse tumour outline and leave the
        others out (the napari widgets); without it every slide needs one (the CLI).
        ``loader``: how patches are read for the encoder (``extract_features``; default:
        threads on a CPU, worker processes on CUDA)."""
        self.project = project
        self.partial = partial
        self.loader = loader
        if config is not None and config != project.config:
            project.set_config(config)
        self._features: dict[str, np.ndarray] = {}
        self.times: dict[str, float] = {}
        #: Patch grids laid elsewhere (a cluster's workers) that the grid stage stores as its own.
        self.ready_grids: dict[str, PatchGrid] = {}
        self._pixel_inputs: dict[str, tuple[PixelSlide, DenseGrid]] = {}
        self._dense_encoder: DenseEncoder | None = None

    @property
    def slides(self) -> list:
        """The slides this pipeline refines (``Project.run_slides``)."""
        return self.project.run_slides()

    @property
    def config(self) -> RefineConfig:
        """The project's current config."""
        return self.project.config

    # ---- running ----------------------------------------------------------------------
    @holds_project_lock  # one run at a time on a project (another process is refused)
    def run(
        self,
        until: str | None = None,
        *,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
        on_round: Callable[[dict], None] | None = None,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> None:
        """Run every stage up to ``until`` (default all) that is not done for the current inputs.

        ``on_round`` and ``on_epoch`` get the classifier's round and epoch records live.
        """
        last = self._index(until or self.STAGES[-1])
        self.check_coarse()
        for name in self.STAGES[: last + 1]:
            if self.project.stage_done(name):
                continue
            self._run_stage(name, progress, cancel, on_round, on_epoch)

    def invalidate(self, from_stage: str) -> None:
        """Forget the output of ``from_stage`` and every later stage."""
        for name in self.STAGES[self._index(from_stage) :]:
            self.project.clear_stage(name)

    @holds_project_lock
    def update_pseudo_labels(
        self, *, progress: Progress | None = None, cancel: Cancel | None = None
    ) -> None:
        """Re-make pseudo-labels (prototype relabels, corrections) without retraining."""
        for name in self.STAGES[: self._index("prototypes") + 1]:
            if not self.project.stage_done(name):
                self._run_stage(name, progress, cancel)
        self._run_stage("pseudo_labels", progress, cancel)

    def _index(self, name: str) -> int:
        if name not in self.STAGES:
            raise ProtorefineError(f"unknown stage {name!r}: stages are {', '.join(self.STAGES)}")
        return self.STAGES.index(name)

    def _run_stage(
        self,
        name: str,
        progress: Progress | None,
        cancel: Cancel | None,
        on_round: Callable[[dict], None] | None = None,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> None:
        def prog(done: int, total: int, msg: str = "") -> None:
            if progress is not None:
                progress(done, total, f"{name}: {msg}" if msg else name)

        def check() -> bool:
            return bool(cancel is not None and cancel())

        if check():
            raise CancelledError(f"run cancelled before stage {name!r}; finished stages are kept")
        t0 = time.perf_counter()
        fn = getattr(self, f"_stage_{name}")
        with self._stage_writer(name) as out:
            info = fn(out, prog, check, on_round, on_epoch) or {}
            seconds = time.perf_counter() - t0
            info.update(fingerprint=self.project.fingerprint(name), seconds=seconds)
            (out / DONE_FILE).write_text(json.dumps(info, indent=2, default=str))
        self.times[name] = seconds

    @contextlib.contextmanager
    def _stage_writer(self, name: str) -> Iterator[Path]:
        """A temporary stage folder that replaces the stored one only when the stage finishes."""
        target = self.project.stage_dir(name)
        with atomic_path(target, replace_dir=True) as tmp:  # the project's own stage folder
            tmp.mkdir(parents=True)
            yield tmp

    # ---- checks -------------------------------------------------------------------------
    def check_coarse(self) -> None:
        """Every slide needs a coarse annotation with a tumour region (``partial``: at least
        one slide does)."""
        if not self.project.slides:
            raise ProtorefineError(f"project {self.project.folder} has no slides")
        if self.partial:
            if not self.slides:
                raise ProtorefineError(
                    f"no slide of project {self.project.folder} has a coarse tumour outline yet"
                )
            return
        for s in self.project.slides:
            ann = self.project.coarse(s.id)
            if ann is None:
                raise ProtorefineError(f"slide {s.id!r} has no coarse annotation")
            if tumour_geometry(ann).is_empty:
                classes = ", ".join(ann.classes()) or "none"
                raise ProtorefineError(
                    f"coarse annotation of {s.id!r} has no tumour region (classes: {classes})"
                )

    # ---- stage bodies -----------------------------------------------------------------
    def _stage_grid(self, out: Path, prog, check, on_round, on_epoch) -> dict:
        counts = {}
        n = len(self.slides)
        for i, s in enumerate(self.slides):
            if check():
                raise CancelledError("grid stage cancelled")
            prog(i, n, s.id)
            grid = self.ready_grids.pop(s.id, None)
            if grid is None:
                grid = self.project.compute_grid(s.id)
            if not grid.tissue.any():
                raise ProtorefineError(f"slide {s.id!r} ({s.path}): no tissue found")
            write_npz(out / slide_file(GRID_FILE, s.id), **grid.to_dict())
            counts[s.id] = {"patches": int(grid.n), "tissue": int(grid.tissue.sum())}
        prog(n, n, "done")
        return {"patches": counts}

    def _encoder(self):
        return get_encoder(self.config.encoder, device=self.config.device)

    def _stage_features(self, out: Path, prog, check, on_round, on_epoch) -> dict:
        encoder = self._encoder()
        self.project.set_encoder_info(encoder.name, encoder.weight_hash, encoder.blocks)
        cache = self.project.feature_cache(encoder.name, encoder.weight_hash)
        n = len(self.slides)
        reused = 0
        for i, s in enumerate(self.slides):

            def sub(done: int, total: int, msg: str = "", i=i, sid=s.id) -> None:
                prog(done, total, f"slide {i + 1}/{n} {sid} {msg}".rstrip())

            if not self.slide_features(s.id, encoder, cache, progress=sub, cancel=check):
                reused += 1
        stored = cache.relative_to(self.project.folder).as_posix()  # the project may move
        (out / CACHE_FILE).write_text(stored)
        return {
            "encoder": encoder.name,
            "weight_hash": encoder.weight_hash,
            "device": str(encoder.device),
            "reused_slides": reused,
            "cache": stored,
        }

    def slide_features(
        self,
        slide_id: str,
        encoder,
        cache: Path,
        *,
        progress: Progress | None = None,
        cancel: Cancel | None = None,
    ) -> bool:
        """Extract a slide's tissue-patch features into the feature cache ``cache`` (atomic,
        one file a slide) unless they are there already; True when they were extracted.
        The features stage calls it per slide, and so does a cluster's worker."""
        grid = self.project.grid(slide_id)
        path, cells = feature_cache_files(cache, slide_id)  # cells: which cells the rows are
        if cached_features_fit(path, grid):
            return False
        feats = extract_features(
            self.project.open_slide(slide_id),
            grid,
            encoder,
            batch_size=self.config.batch_size,
            loader=self.loader,
            progress=progress,
            cancel=cancel,
        )
        feats = np.asarray(feats, dtype=np.float32)
        if feats.shape[0] == grid.n:
            feats = feats[grid.tissue_index]
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, feats)
        atomic_write_text(cells, grid.signature())
        return True

    def features(self, slide_id: str) -> np.ndarray:
        """Tissue-patch features of a slide (from the cache of the finished features stage)."""
        cache = self.project.features_cache_dir()
        key = str(feature_cache_files(cache, slide_id)[0])
        if key not in self._features:
            try:
                self._features[key] = read_npy(Path(key), remedy=_FEATURES_REMEDY)
            except DamagedFileError:
                self.project.forget_stage("features")  # a rerun makes the features again
                raise
        return self._features[key]

    def cohort(self, *, coarse: bool = True) -> Cohort:
        """All run slides' tissue cells stacked, with their corrections and (``coarse``)
        the coarse labels the prototypes stage stored."""
        slides = []
        for s in self.slides:
            grid = self.project.grid(s.id)
            slides.append((s.id, self.features(s.id), grid.rc[grid.tissue_index]))
        cohort = Cohort.stack(slides, self.project.feature_blocks)
        cohort.corrections = self._corrections_vector()
        if coarse:
            stored = self._load("prototypes", COHORT_FILE)
            cohort.coarse, cohort.distance = stored["coarse"], stored["distance"]
        return cohort

    def coarse_labels(self) -> tuple[np.ndarray, np.ndarray]:
        """Per tissue cell of the run slides: 1 inside the coarse outline, and the signed
        distance to it; a slide whose outline covers all its tissue is refused."""
        coarse, dist = [], []
        for s in self.slides:
            grid = self.project.grid(s.id)
            frac, d = self.project.coarse_patch_labels(s.id)
            frac, d = frac[grid.tissue_index], d[grid.tissue_index]
            if (frac >= 0.5).all():
                raise ProtorefineError(
                    f"coarse annotation of {s.id!r} covers all tissue: nothing outside to learn from"
                )
            coarse.append((frac >= 0.5).astype(np.float32))
            dist.append(d)
        coarse_a = np.concatenate(coarse)
        if not coarse_a.any():
            raise ProtorefineError("no tissue patch lies inside any coarse tumour outline")
        return coarse_a, np.concatenate(dist)

    def _stage_prototypes(self, out: Path, prog, check, on_round, on_epoch) -> dict:
        coh = self.cohort(coarse=False)
        coh.coarse, coh.distance = self.coarse_labels()
        local = self._local_prototypes(coh, prog, check)
        protos = prototypes_step(coh, self.config, local=local, progress=prog, cancel=check)
        centres, cells = self._patch_centres(coh)
        marks = self.project.marks()  # of the build this one replaces
        carried = self._carry_marks(marks, protos.global_proto, centres, cells, coh.rows)
        write_npz(out / PROTOTYPES_FILE, **protos.to_arrays())
        write_npz(
            out / COHORT_FILE,
            coarse=coh.coarse,
            distance=coh.distance,
            slide_index=coh.slide_index,
            rc=coh.rc,
            centres=centres,
            cells=cells,
        )
        (out / INDEX_FILE).write_text(json.dumps(coh.rows))
        (out / MARKS_FILE).write_text(json.dumps({str(k): v for k, v in carried.items()}))
        return {
            "run": uuid.uuid4().hex,
            "marks_before": len(marks),
            "marks_carried": len(carried),
            "local": int(len(protos.local_centers)),
            "global": int(len(protos.global_centers)),
            "patches": len(coh),
        }

    def _local_prototypes(self, coh: Cohort, prog, check) -> list[LocalPrototypes] | None:
        """Every slide's local prototypes when computed elsewhere (a cluster's workers);
        None: :func:`prototypes_step` computes them here."""
        return None

    def slide_prototypes(
        self,
        slide_id: str,
        index: int,
        space: CosineSpace,
        coarse: np.ndarray,
        distance: np.ndarray | None,
    ) -> LocalPrototypes:
        """Slide ``index``'s local prototypes in the cohort's cosine ``space``
        (:func:`slide_prototypes_step`) from its stored features. A cluster's worker."""
        feats = self.features(slide_id)
        return slide_prototypes_step(feats, coarse, distance, space, self.config, index)

    def _load(self, stage: str, name: str) -> dict[str, np.ndarray]:
        return self.project.stage_arrays(stage, name)

    def _corrections_vector(self) -> np.ndarray | None:
        parts, any_set = [], False
        for s in self.slides:
            grid = self.project.grid(s.id)
            corr = self.project.corrections(s.id)
            if corr is None or corr.shape != (grid.rows, grid.cols):
                parts.append(np.full(int(grid.tissue.sum()), -1, dtype=np.int8))
            else:
                parts.append(grid.from_image(corr).astype(np.int8))
                any_set = any_set or bool((corr >= 0).any())
        return np.concatenate(parts) if any_set else None

    def _patch_centres(self, coh: Cohort) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 (x, y) centre and cell size of every tissue patch of the cohort."""
        centres, cells = [], []
        for s in self.slides:
            grid = self.project.grid(s.id)
            rows = coh.slide_rows(s.id)
            rc = coh.rc[rows].astype(np.float64)
            centres.append((rc[:, ::-1] + 0.5) * grid.downsample)
            cells.append(np.full(len(rc), grid.downsample, dtype=np.float64))
        return np.concatenate(centres), np.concatenate(cells)

    def _carry_marks(
        self, marks: dict, global_proto: np.ndarray, centres, cells, index: dict
    ) -> dict[int, str]:
        """The marks of the previous prototypes moved to these (empty when there were none)."""
        if not marks:
            return {}
        old_dir = self.project.stage_dir("prototypes")
        try:
            old_gid = read_npz(old_dir / PROTOTYPES_FILE, ("global_proto",))["global_proto"]
            data = read_npz(old_dir / COHORT_FILE, ("centres", "cells"))
            old_xy, old_cells = data["centres"], data["cells"]
            old_index = json.loads((old_dir / INDEX_FILE).read_text())
        except (OSError, KeyError, ValueError, DamagedFileError):
            return {}  # no earlier build with patch positions: nothing to carry
        old = {sid: (old_xy[a:b], old_gid[a:b]) for sid, (a, b) in old_index.items()}
        new = {sid: (centres[a:b], global_proto[a:b]) for sid, (a, b) in index.items()}
        radius = 0.75 * max(float(old_cells.max(initial=0)), float(cells.max(initial=0)))
        return carry_marks(marks, old, new, radius)

    def _stage_pseudo_labels(self, out: Path, prog, check, on_round, on_epoch) -> dict:
        coh = self.cohort()
        protos = Prototypes.from_arrays(self._load("prototypes", PROTOTYPES_FILE))
        prog(0, 1, "scoring patches")
        pl = pseudo_labels_step(coh, protos, self.config, marks=self.project.marks())
        write_npz(
            out / PSEUDO_FILE,
            pseudo=pl.pseudo,
            confidence=pl.confidence,
            score=pl.score,
            proto_score=pl.proto_score,
        )
        prog(1, 1, "done")
        assert coh.coarse is not None
        changed = int((pl.pseudo != (coh.coarse >= 0.5)).sum())
        return {"changed_from_coarse": changed}

    def _stage_classifier(self, out: Path, prog, check, on_round, on_epoch) -> dict:
        stored = self._load("pseudo_labels", PSEUDO_FILE)
        pl = PseudoLabels(**stored)
        cr = classifier_step(
            self.cohort(),
            pl,
            self.config,
            progress=prog,
            cancel=check,
            on_round=on_round,
            on_epoch=on_epoch,
        )
        save_checkpoint(cr.model, out / MODEL_FILE)
        write_npz(out / PROB_FILE, prob=cr.prob)
        write_npz(out / PSEUDO_FILE, pseudo=cr.pseudo, confidence=cr.confidence)
        (out / HISTORY_FILE).write_text(json.dumps(cr.history, indent=2))
        return {"history": cr.history, "device": str(resolve_device(self.config.device))}

    def stain_features(
        self, slide_id: str, grid, factor: int, check: Cancel | None = None
    ) -> np.ndarray | None:
        """The fine cells' stain statistics for colour prototypes (None when they are off),
        read from the slide once per grid and kept in ``colour/`` (a redraw reuses them)."""
        if self.config.colour_prototypes <= 0 or self.config.colour_weight <= 0 or factor <= 1:
            return None
        path, cells = self.project.colour_cache(slide_id, factor)
        sums: np.ndarray | None = None
        if path.exists() and cells.exists() and cells.read_text() == grid.signature():
            with contextlib.suppress(DamagedFileError):  # a damaged cache is read again
                sums = read_npy(path)
        if sums is None:
            sums = cell_sums(self.project.open_slide(slide_id), grid, factor, cancel=check)
            path.parent.mkdir(exist_ok=True)
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    np.save(fh, sums.astype(np.float32))
            atomic_write_text(cells, grid.signature())
        return cell_features(sums)

    def _stage_output(self, out: Path, prog, check, on_round, on_epoch) -> dict:
        device = resolve_device(self.config.device)
        model = load_checkpoint(self.project.stage_file("classifier", MODEL_FILE), device=device)
        coh = self.cohort()
        score = self._load("pseudo_labels", PSEUDO_FILE)["score"]
        prob = probability_step(coh, model, score, self.config)
        write_npz(out / PROB_FILE, prob=prob)
        n = len(self.slides)
        counts = {}
        for i, s in enumerate(self.slides):
            if check():
                raise CancelledError("output stage cancelled")
            prog(i, n, s.id)
            grid = self.project.grid(s.id)
            pgrid = grid.to_image(prob[coh.slide_rows(s.id)].astype(np.float32), fill=0.0)
            tissue = grid.tissue.reshape(grid.rows, grid.cols)
            colour = self.stain_features(
                s.id, grid, max(1, int(self.config.output_upsample)), check
            )
            res = outline_step(
                pgrid,
                tissue,
                self.config,
                cell=grid.downsample,
                shape=grid.shape,
                classification=tumour_class_name(self.project.coarse(s.id)),
                colour=colour,
            )
            np.save(out / slide_file(REFINED_GRID_FILE, s.id), res.refined)
            write_geojson(res.outline, out / slide_file(OUTLINE_FILE, s.id))
            counts[s.id] = {"refined_patches": int(res.refined.sum()), "tissue": int(tissue.sum())}
        prog(n, n, "done")
        return {"slides": counts}

    # ---- the pixel stage ----------------------------------------------------------------
    def _stage_pixels(self, out: Path, prog, check, on_round, on_epoch) -> dict:
        cfg = self.config
        if not cfg.pixel_level:
            return {"off": True}
        ids = [s.id for s in self.slides]
        self._pixel_inputs.clear()  # built from this run's outline stage, not an earlier one
        preps = self._pixel_prepares(ids, prog, check)
        if check():
            raise CancelledError("pixel stage cancelled; the patch-level outline is kept")
        cohort = cohort_model(preps, cfg)

        def on_curve(i: int, output: PixelOutput) -> None:  # the Refine pane's pixel plot
            if on_epoch is not None:
                curve = output.result.curve
                on_epoch(
                    {"pixel_curve": ids[i], "slide": i + 1, "slides": len(ids), "points": curve}
                )

        outputs = self._pixel_finishes(ids, preps, cohort, prog, check, on_curve)
        for sid, o in zip(ids, outputs, strict=True):
            write_pyramid(o.result.prob, out / slide_file(PIXEL_PROB_FILE, sid))
            write_pyramid(o.result.pseudo, out / slide_file(PIXEL_PSEUDO_FILE, sid))
            (out / slide_file(PIXEL_GRID_FILE, sid)).write_text(json.dumps(o.grid.__dict__))
            write_geojson(o.outline, out / slide_file(OUTLINE_FILE, sid))
        return {
            "slides": {sid: o.counts for sid, o in zip(ids, outputs, strict=True)},
            "assumed_mpp": [sid for sid, o in zip(ids, outputs, strict=True) if o.grid.mpp is None],
        }

    def _pixel_prepares(self, ids: list[str], prog, check) -> list[PixelPrep]:
        """:meth:`pixel_prepare` for each slide, here (a cluster sends them to its workers)."""
        preps = []
        for i, sid in enumerate(ids):
            if check():
                raise CancelledError("pixel stage cancelled; the patch-level outline is kept")
            preps.append(self.pixel_prepare(sid, i, len(ids), prog, check))
            prog(i + 1, len(ids), f"slide {i + 1}/{len(ids)}: known cells")
        return preps

    def _pixel_finishes(
        self,
        ids: list[str],
        preps: list[PixelPrep],
        cohort,
        prog,
        check,
        on_output: Callable[[int, PixelOutput], None],
    ) -> list[PixelOutput]:
        """:meth:`pixel_finish` for each slide, here (a cluster sends them to its workers);
        ``on_output(i, output)`` as each slide's is done."""
        outputs = []
        for i, (sid, prep) in enumerate(zip(ids, preps, strict=True)):
            if check():
                raise CancelledError("pixel stage cancelled; the patch-level outline is kept")
            outputs.append(self.pixel_finish(sid, i, prep, cohort))
            on_output(i, outputs[-1])
            prog(i + 1, len(ids), f"slide {i + 1}/{len(ids)}: self-training and outline")
        return outputs

    def pixel_prepare(
        self, slide_id: str, index: int, n_slides: int, prog=None, check=None
    ) -> PixelPrep:
        """Slide ``index`` of ``n_slides`` for the cohort model (:func:`prepare_slide`), its
        dense features computed first unless cached. One machine or a cluster's worker."""
        ps, _ = self._pixel_input(slide_id, index, n_slides, prog, check)
        return prepare_slide(ps, self.config, index, n_slides)

    def pixel_finish(self, slide_id: str, index: int, prep: PixelPrep, cohort) -> PixelOutput:
        """Slide ``index``'s probability (:func:`refine_slide`), mask and traced outline."""
        cfg = self.config
        ps, grid = self._pixel_input(slide_id, index, 1)
        res = refine_slide(ps, prep, cohort, cfg, index)
        cell_um = grid.cell_um or cfg.pixel_cell * cfg.pixel_mpp
        mask = pixel_mask(res.prob, ps.tissue, cfg, cell_um)
        outline = pixel_outline(
            mask,
            grid.cell0 / max(1, int(cfg.pixel_upsample)),
            self.project.slide(slide_id).shape,
            classification=tumour_class_name(self.project.coarse(slide_id)),
            smoothing=cfg.outline_smoothing,
        )
        counts = {
            "cells": [grid.rows, grid.cols],
            "cell_um": cell_um,
            "tumour_share": round(float(mask.mean()), 4),
            "self_training": [
                {k: round(v, 5) if isinstance(v, float) else v for k, v in point.items()}
                for point in res.curve
            ],
        }
        self._pixel_inputs.pop(slide_id, None)  # its maps are not needed any more
        return PixelOutput(res, outline, grid, counts)

    def _pixel_input(
        self, slide_id: str, index: int, n_slides: int, prog=None, check=None
    ) -> tuple[PixelSlide, DenseGrid]:
        """A slide's dense cells (:meth:`_pixel_slide`) and grid, its dense features computed
        and cached first unless they are; kept from :meth:`pixel_prepare` to
        :meth:`pixel_finish`."""
        kept = self._pixel_inputs.get(slide_id)
        if kept is not None:
            return kept
        cfg = self.config
        slide = self.project.open_slide(slide_id)
        grid = dense_grid(slide, mpp=cfg.pixel_mpp, cell=cfg.pixel_cell)
        feats, key = self._cached_dense(slide_id, grid)
        if feats is None:
            if self._dense_encoder is None:
                self._dense_encoder = DenseEncoder(resolve_device(cfg.device))
            feats = self._dense(
                slide,
                grid,
                self._dense_encoder,
                key,
                index,
                n_slides,
                prog or (lambda *_: None),
                check or (lambda: False),
            )
        kept = self._pixel_inputs[slide_id] = (
            self._pixel_slide(slide_id, slide, grid, feats),
            grid,
        )
        return kept

    def _cached_dense(self, slide_id: str, grid: DenseGrid):
        """A slide's cached dense features (a memory map) when they were computed on ``grid``
        with the shipped trunk's weights, else None; and the cache's (file, cells file,
        signature) to write them to."""
        path, cells = dense_cache_files(self.project.folder, slide_id)
        weights = file_sha256(efficientnet_lite0_weights())
        signature = json.dumps([grid.__dict__, BLOCK_WIDTHS, "efficientnet-lite0", weights])
        feats = None
        if path.exists() and cells.exists() and cells.read_text() == signature:
            with contextlib.suppress(ValueError, OSError):
                feats = np.load(path, mmap_mode="r")
        if feats is not None and feats.shape[:2] != (grid.rows, grid.cols):
            feats = None
        return feats, (path, cells, signature)

    def _dense(self, slide, grid: DenseGrid, encoder, key, i, n, prog, check):
        """Dense features of one slide written to the project's cache (``key``: file, cells
        file, signature) as a memory map."""
        path, cells, signature = key
        from numpy.lib.format import open_memmap

        path.parent.mkdir(exist_ok=True)

        def sub(done: int, total: int, msg: str = "") -> None:
            prog(done, total, f"dense features, slide {i + 1}/{n} {msg}".rstrip())

        shape = (grid.rows, grid.cols, sum(BLOCK_WIDTHS))
        tissue = cell_tissue(slide, grid)  # tiles with no tissue cell are skipped
        with atomic_path(path) as tmp:
            mm = open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
            dense_features(slide, grid, encoder, out=mm, tissue=tissue, progress=sub, cancel=check)
            mm.flush()
            del mm
        atomic_write_text(cells, signature)
        return np.load(path, mmap_mode="r")

    def _pixel_slide(self, slide_id: str, slide, grid: DenseGrid, feats) -> PixelSlide:
        """A slide's dense cells with their tissue, distance to the coarse outline (µm), the
        pathologist's labels (corrections, then marked prototypes) from the patch grid and the
        patch stage's refined outline."""
        shape = (grid.rows, grid.cols)
        centre = (
            (np.arange(grid.rows) + 0.5) * grid.cell0,
            (np.arange(grid.cols) + 0.5) * grid.cell0,
        )
        tissue = cell_tissue(slide, grid)
        coarse = rasterize(self.project.coarse(slide_id), slide.shape, grid.cell0)
        coarse = coarse[: grid.rows, : grid.cols]
        cell_um = grid.cell_um or self.config.pixel_cell * self.config.pixel_mpp
        distance = (
            ndi.distance_transform_edt(coarse) - ndi.distance_transform_edt(~coarse)
        ) * cell_um
        labels = self._patch_labels(slide_id)
        if labels is not None:
            pgrid = self.project.grid(slide_id)
            py = np.minimum((centre[0] / pgrid.downsample).astype(int), pgrid.rows - 1)
            px = np.minimum((centre[1] / pgrid.downsample).astype(int), pgrid.cols - 1)
            labels = labels[py[:, None], px[None, :]]
        patch_outline = read_geojson(
            self.project.stage_file("output", OUTLINE_FILE, slide_id), allow_empty=True
        )
        prior = rasterize(patch_outline, slide.shape, grid.cell0)[: grid.rows, : grid.cols]
        return PixelSlide(
            name=slide_id,
            prior=prior.astype(np.float32),
            features=feats,
            distance=distance.astype(np.float32).reshape(shape),
            tissue=tissue.reshape(shape),
            labels=labels,
        )

    def _patch_labels(self, slide_id: str) -> np.ndarray | None:
        """(rows, cols) of the patch grid: the pathologist's label of each patch (-1 none):
        painted corrections, else the mark of its global prototype (tumour 1, normal 0)."""
        grid = self.project.grid(slide_id)
        out = np.full((grid.rows, grid.cols), -1, np.int8)
        marks = {int(k): v for k, v in self.project.marks().items() if v in ("tumour", "normal")}
        if marks:
            a, b = json.loads(self.project.stage_file("prototypes", INDEX_FILE).read_text())[
                slide_id
            ]
            gid = self._load("prototypes", PROTOTYPES_FILE)["global_proto"][a:b]
            img = grid.to_image(gid.astype(np.int64), fill=-1)
            for g, mark in marks.items():
                out[img == g] = 1 if mark == "tumour" else 0
        corr = self.project.corrections(slide_id)
        if corr is not None and corr.shape == out.shape:
            out = np.where(corr >= 0, corr, out).astype(np.int8)
        return out if (out >= 0).any() else None


def prepare_project(
    folder: str | Path,
    pairs: Sequence[tuple[Path, Path]],
    configure: Callable[[RefineConfig], RefineConfig],
    *,
    slide_mpp: float | None = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[Project, list[str]]:
    """The project at ``folder`` (made when new) holding exactly the given slides, each with
    the coarse outline of its ``(slide, coarse file)`` pair; ``configure`` gets the project's
    config (defaults when new) and returns the one to run. What ``protorefine refine`` and the
    quality benchmark do before :meth:`Pipeline.run`. Returns the project and the slide ids.

    ``slide_mpp`` is the pixel size of slides whose files record none; ``warn`` gets the
    reading notes (clipped, repaired, classes left out) and a ``slide_mpp`` that disagrees
    with the file.
    """
    say = warn or (lambda _msg: None)
    folder = Path(folder)
    if (folder / CONFIG_FILE).exists():
        project = Project.open(folder)
        project.remove_leftovers()  # opened for writing: a killed run's temp folders go
        project.set_config(configure(project.config))
    else:
        project = Project.create(folder, configure(RefineConfig()))
    wanted = {str(Path(p).resolve()) for p, _ in pairs}
    for s in list(project.slides):
        if s.path not in wanted:
            project.remove_slide(s.id)
    ids = []
    for slide_path, coarse_path in pairs:
        entry = project.add_slide(slide_path)
        if slide_mpp is not None:
            if entry.mpp is None or entry.mpp_by_user:
                project.set_slide_mpp(entry.id, slide_mpp)
            elif abs(entry.mpp - slide_mpp) > 0.01 * entry.mpp:
                say(
                    f"{slide_path}: the file records {entry.mpp:.4g} µm/px; "
                    f"--slide-mpp {slide_mpp:g} is for files that record none"
                )
        if project.slide(entry.id).mpp is None:
            cfg = project.config
            say(
                f"{slide_path}: the file records no pixel size; taken as "
                f"{cfg.mpp or cfg.pixel_mpp:g} µm/px (set it with --slide-mpp, or in napari "
                "double-click its mpp)"
            )
        ann = read_annotations(coarse_path, slide_shape=entry.shape)
        for note in ann.warnings:  # clipped, repaired, classes left out, a mask's downsample
            say(note)
        if not same_annotations(project.coarse(entry.id), ann):
            project.set_coarse(entry.id, ann)
        ids.append(entry.id)
    return project, ids
