"""The pathologist's review of a project's refined outlines: hand edits and the outline they
accept, review ticks and the order to review in, measurements, why a part of an outline is
in or out, and the exports (outline files, masks, the measurements spreadsheet).

Stored in the project folder::

    edited/<id>.geojson      hand edits of a refined outline (+ <id>.json: the refinement
                             they were drawn on)
    reviewed.json            slides whose outline the pathologist checked: the outline's
                             hash and when
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from shapely.geometry.base import BaseGeometry

from protorefine import __version__
from protorefine._atomic import atomic_write_text, refuse_folder
from protorefine._types import Cancel, Progress
from protorefine.annotations import (
    Annotation,
    read_annotations,
    read_geojson,
    tumour_geometry,
    write_asap_xml,
    write_geojson,
)
from protorefine.annotations.asap import with_groups_of
from protorefine.annotations.asap import written_by_protorefine as asap_written_by_protorefine
from protorefine.annotations.classes import polygonal
from protorefine.annotations.geojson import written_by_protorefine
from protorefine.annotations.masks import mask_metadata, write_mask
from protorefine.annotations.model import TUMOR, AnnotationSet
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.measure import (
    Measurements,
    cells_in,
    measure,
    outline_changes,
    prototype_makeup,
    unsure_share,
    with_measurements,
)
from protorefine.project.stages import PROB_FILE, SlideEntry, StagesMixin, _file_hash

if TYPE_CHECKING:
    from protorefine.features.grid import PatchGrid

#: File next to exported outlines with every slide's tumour measurements.
MEASUREMENTS_CSV = "tumour_measurements.csv"
#: Level-0 px²: slivers smaller than this left by geometry operations on an outline are dropped.
MIN_PART_AREA = 1.0
#: How a slide's review state reads in tables (None: never checked).
REVIEW_WORDS = {"reviewed": "yes", "changed": "changed since review"}


class ReviewMixin(StagesMixin):
    """The review side of a :class:`~protorefine.project.store.Project`."""

    if TYPE_CHECKING:  # provided by Project
        slides: list[SlideEntry]

        def slide(self, slide_id: str) -> SlideEntry: ...
        def slide_missing(self, slide_id: str) -> bool: ...
        def coarse(self, slide_id: str) -> AnnotationSet | None: ...
        def has_results(self, slide_id: str) -> bool: ...
        def _refined_path(self, slide_id: str) -> Path: ...
        def grid(self, slide_id: str) -> PatchGrid: ...
        def result_grid(self, slide_id: str, key: str) -> np.ndarray: ...
        def global_scores(self) -> np.ndarray: ...
        def corrections(self, slide_id: str) -> np.ndarray | None: ...

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
        if mask and downsample is not None:
            entry = self.slide(slide_id)
            write_mask(outline, path, entry.shape, downsample, mpp=entry.mpp)
        elif suffix == ".xml":  # in the coarse file's groups (CAMELYON16's _0 / _2 or Tumor)
            asap = with_groups_of(outline, self.coarse(slide_id))
            write_asap_xml(asap, path, writer=__version__)  # ours, replaceable
        else:
            write_geojson(
                with_measurements(outline, self.slide(slide_id).mpp),
                path,
                writer={"version": __version__, "slide": slide_id},  # ours, replaceable
            )
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
        export (which may be overwritten). A target that is a folder is refused too, and so is
        an outline or mask file that protorefine did not write (:func:`refuse_foreign_outline`)."""
        refuse_folder(Path(folder) / MEASUREMENTS_CSV)
        for sid in slides:
            for suffix in suffixes:
                target = Path(folder) / f"{sid}{suffix}"
                refuse_folder(target)
                if target.suffix.lower() not in (".geojson", ".json", ".xml"):
                    refuse_foreign_outline(target)  # a mask of the user's
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
                    there = []  # not an outline
                if any(same_annotations(coarse, t) for t in there):
                    raise ProtorefineError(
                        f"{target}: holds the coarse outline of slide {sid!r}, which the export "
                        "would overwrite; choose another folder"
                    )
                refuse_foreign_outline(target)

    def measurements(self, slide_id: str) -> dict[str, Measurements]:
        """Regions, area and greatest dimension of the coarse and (when run) accepted outlines."""
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
        if not self.stage_done("output"):
            return {}
        index = self._run_index()
        prob = self.stage_arrays("output", PROB_FILE, ("prob",))["prob"]
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


def _own_mask(path: Path) -> bool:
    """True when ``path`` is a mask protorefine wrote (its TIFF description or PNG text
    records the downsample and slide shape, :func:`mask_metadata`)."""
    return mask_metadata(path) is not None


#: How protorefine knows its own exports, by file ending: GeoJSON's top-level member, ASAP
#: XML's root attribute, the description a mask carries.
OWN_FILE_CHECKS: dict[str, Callable[[Path], bool]] = {
    ".geojson": written_by_protorefine,
    ".json": written_by_protorefine,
    ".xml": asap_written_by_protorefine,
    ".tif": _own_mask,
    ".tiff": _own_mask,
    ".png": _own_mask,
}


def refuse_foreign_outline(target: str | os.PathLike[str]) -> None:
    """One-line error when ``target``, where an outline is to be exported, is a GeoJSON, ASAP
    XML or mask file that protorefine did not write (e.g. a ground truth with the slide's
    name): the user's work. An earlier export or refine result carries protorefine's mark
    (:data:`OWN_FILE_CHECKS`) and may be replaced."""
    target = Path(target)
    ours = OWN_FILE_CHECKS.get(target.suffix.lower())
    if ours is None or not target.is_file():
        return
    if not ours(target):
        raise ProtorefineError(
            f"{target}: protorefine did not write this file (the user's, e.g. a ground "
            "truth?) and the refined outline would overwrite it; move it or choose another "
            "output folder"
        )


def same_annotations(a: AnnotationSet | None, b: AnnotationSet | None) -> bool:
    """True when two annotation sets hold the same classes and (nearly) the same regions."""
    if a is None or b is None or a.classes() != b.classes():
        return False
    for cls in a.classes():
        ga, gb = a.union([cls]), b.union([cls])
        if ga.symmetric_difference(gb).area > 1e-6 * max(ga.area, 1.0):
            return False
    return True


def part_explainer(
    project: ReviewMixin, sid: str
) -> Callable[[BaseGeometry], tuple[str, int | None]] | None:
    """A function that says what a part of ``sid``'s outline (level-0 geometry) is made of:
    its main global prototypes with their tumour scores or the pathologist's marks, how sure
    the model is of its patches (once refined) and how many of them were painted, i.e. why
    the refinement put it in or left it out; with the main prototype. None before
    prototypes exist."""
    if not project.stage_done("prototypes"):
        return None
    ids = np.asarray(project.result_grid(sid, "global_proto"))
    downsample = project.grid(sid).downsample
    scores = np.asarray(project.global_scores(), dtype=float)
    marks = project.marks()
    painted = project.corrections(sid)
    prob = np.asarray(project.result_grid(sid, "prob")) if project.has_results(sid) else None

    def explain(geom: BaseGeometry) -> tuple[str, int | None]:
        parts = prototype_makeup(geom, downsample, ids)
        if not parts:
            return "no tissue there (glass or background)", None
        said = []
        for gid, share in parts:
            what = f"marked {marks[gid]}" if gid in marks else f"tumour score {scores[gid]:.2f}"
            said.append(f"prototype {gid} ({what}, {share:.0%} of its patches)")
        text = "mostly " + " and ".join(said)
        if prob is not None and prob.shape == ids.shape:
            cells = cells_in(geom, downsample, ids.shape) & (ids >= 0)
            share = unsure_share(prob[cells])
            text += (
                f"; the model is unsure on {share:.0%} of its patches"
                if share > 0
                else "; the model is sure of every one of its patches"
            )
        if painted is not None and painted.shape == ids.shape:
            inside = painted[cells_in(geom, downsample, ids.shape)]
            for value, name in ((1, "tumour"), (0, "normal")):  # the project's correction codes
                n = int((inside == value).sum())
                text += f"; {n} of its patches painted {name}" if n else ""
        return text, parts[0][0]

    return explain


def changes_report(project: ReviewMixin, sid: str) -> list[dict]:
    """The largest changes of ``sid``'s accepted outline against its coarse one, JSON-able
    (for report.json): kind, area, level-0 bounds and why."""
    coarse = project.coarse(sid)
    if coarse is None or not project.has_results(sid):
        return []
    mpp = project.slide(sid).mpp
    explain = part_explainer(project, sid)
    u = "um" if mpp else "px"
    return [
        {
            "kind": ch.kind,
            f"area_{u}2": round(ch.area, 3),
            "bounds_px": [round(v, 1) for v in ch.bounds],
            "why": explain(ch.geometry)[0] if explain is not None else "",
        }
        for ch in outline_changes(coarse, project.accepted_outline(sid), mpp)
    ]


def write_measurements_csv(project: ReviewMixin, path: str | os.PathLike[str]) -> Path:
    """One row per slide of ``project``: its accepted tumour outline's regions, area and
    greatest dimension beside the coarse outline's area, in mm when the pixel size is known
    and in level-0 pixels always, and the model's unsure share (a spreadsheet for the whole
    project), written atomically."""
    columns = (
        "slide", "mpp", "mpp_set_by_hand", "edited_by_hand", "reviewed", "regions",
        "area_mm2", "largest_dimension_mm", "coarse_area_mm2",
        "area_px2", "largest_dimension_px", "coarse_area_px2", "unsure_share",
    )  # fmt: skip
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    with project.reading():
        unsure = project.unsure_shares()
        for s in project.slides:
            done = project.has_results(s.id)
            coarse = project.coarse(s.id)
            cpx = measure(coarse, None) if coarse is not None else None
            rpx = measure(project.accepted_outline(s.id), None) if done else None
            writer.writerow(
                [
                    s.id,
                    s.mpp or "",
                    s.mpp_by_user,
                    done and project.outline_edited(s.id),
                    REVIEW_WORDS.get(project.review_state(s.id) or "", ""),
                    len(rpx.regions) if rpx else "",
                    _mm(rpx.area if rpx else None, s.mpp, 2),
                    _mm(rpx.largest_diameter if rpx else None, s.mpp, 1),
                    _mm(cpx.area if cpx else None, s.mpp, 2),
                    f"{rpx.area:.1f}" if rpx else "",
                    f"{rpx.largest_diameter:.1f}" if rpx else "",
                    f"{cpx.area:.1f}" if cpx else "",
                    f"{unsure[s.id]:.4f}" if s.id in unsure else "",
                ]
            )
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def _mm(pixels: float | None, mpp: float | None, power: int) -> str:
    """A length (power 1) or area (power 2) in level-0 pixels as mm / mm² text; "" when unknown."""
    if pixels is None or not mpp:
        return ""
    return f"{pixels * (mpp / 1000) ** power:.6g}"
