"""``protorefine refine`` and ``protorefine export``: pair slides with coarse annotations, run
the pipeline, write the results (outlines, grid PNGs, measurements, report.json)."""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

import protorefine
from protorefine._atomic import atomic_write_bytes, atomic_write_text, refuse_folder
from protorefine._types import Progress
from protorefine.annotations.masks import check_mask_size
from protorefine.cli.progress import is_quiet, tqdm_progress
from protorefine.errors import ProtorefineError
from protorefine.features.device import resolve_device
from protorefine.features.encoders import parse_encoder_name
from protorefine.project import Project, checked_mpp, slide_stem
from protorefine.project.cluster import Cluster, ClusterPipeline, maybe_cluster
from protorefine.project.labels_export import export_refined_labels
from protorefine.project.lock import project_lock
from protorefine.project.pipeline import Pipeline, prepare_project
from protorefine.project.review import MEASUREMENTS_CSV, changes_report, refuse_foreign_outline
from protorefine.refine.config import RefineConfig


def _annotation_stem(path: Path) -> str:
    """Stem of a coarse annotation file (``a.geojson`` and ``a.ome.png`` -> ``a``)."""
    name = path.name
    stem = name[: -len(path.suffix)] if path.suffix else name
    return stem[:-4] if stem.lower().endswith(".ome") else stem


#: How many slides refine's closing lines name as the ones to check first.
CHECK_FIRST = 3
#: File name ending of the refined outline as a mask (``--mask-downsample``).
MASK_SUFFIX = "_mask.tif"
#: File name ending of the refined patch grid as an image.
GRID_PNG_SUFFIX = "_refined.png"


def _outline_suffixes(args: argparse.Namespace) -> list[str]:
    """The endings, after the slide id, of the outline files :func:`write_outputs` writes."""
    suffixes = [".geojson"]
    if getattr(args, "asap_xml", False):
        suffixes.append(".xml")
    if getattr(args, "mask_downsample", None) is not None:
        suffixes.append(MASK_SUFFIX)
    return suffixes


def _refuse_overwriting_inputs(pairs: list[tuple[Path, Path]], args: argparse.Namespace) -> None:
    """A coarse file (or slide) in the ``--out`` folder under the name a result would take
    (``a.geojson`` beside ``a.svs`` with ``--out .``) is the user's work: stop before the run."""
    inputs = {}
    for slide, coarse in pairs:
        inputs[slide.resolve()] = f"the slide {slide.name}"
        inputs[coarse.resolve()] = f"the coarse annotation {coarse.name}"
    out = Path(args.out)
    for slide, _ in pairs:
        for suffix in (*_outline_suffixes(args), GRID_PNG_SUFFIX):
            target = (out / f"{slide_stem(slide)}{suffix}").resolve()
            if target in inputs:
                raise ProtorefineError(
                    f"{out / target.name}: the refined outline would overwrite {inputs[target]}; "
                    "give another --out folder"
                )


def _refuse_folder_targets(
    out: Path, ids: list[str], args: argparse.Namespace, *, report: bool = False
) -> None:
    """A folder where a result file is to be written, or a same-name GeoJSON that protorefine
    did not write (a ground truth), is the user's: stop before anything is written (and, for
    ``refine``, before the run)."""
    names = [MEASUREMENTS_CSV, *(["report.json"] if report else [])]
    for sid in ids:
        outlines = [out / f"{sid}{suffix}" for suffix in _outline_suffixes(args)]
        for target in outlines:
            refuse_folder(target)
            refuse_foreign_outline(target)
        names.append(f"{sid}{GRID_PNG_SUFFIX}")
    for name in names:
        refuse_folder(out / name)


def pair_by_stem(slides: list[str], coarse: list[str]) -> list[tuple[Path, Path]]:
    """Pair each slide with the coarse file of the same stem; one-line error for any gap."""
    by_stem: dict[str, Path] = {}
    for c in coarse:
        p = Path(c)
        s = _annotation_stem(p)
        if s in by_stem:
            raise ProtorefineError(f"{p}: two coarse annotations share the stem {s!r}")
        by_stem[s] = p
    pairs, seen = [], set()
    for sl in slides:
        p = Path(sl)
        s = slide_stem(p)
        if s in seen:
            raise ProtorefineError(f"{p}: two slides share the stem {s!r}")
        seen.add(s)
        if s not in by_stem:
            found = ", ".join(sorted(by_stem)) or "none"
            raise ProtorefineError(
                f"{p}: no coarse annotation for slide {s!r} (coarse files found for stems: {found})"
            )
        pairs.append((p, by_stem[s]))
    return pairs


def config_from_args(args: argparse.Namespace, base: RefineConfig | None = None) -> RefineConfig:
    """The project's config (or defaults) with the command-line overrides applied."""
    cfg = base or RefineConfig()
    changes: dict = {}
    if getattr(args, "patch_size", None) is not None:
        changes["patch_size"] = int(args.patch_size)
    if getattr(args, "stride", None) is not None:
        changes["stride"] = int(args.stride)
    if getattr(args, "level", None) is not None:
        changes.update(level=int(args.level), mpp=None)
    if getattr(args, "mpp", None) is not None:
        changes.update(mpp=float(args.mpp), level=None)
    if getattr(args, "encoder", None):
        changes["encoder"] = str(args.encoder)
    if getattr(args, "device", None):
        changes["device"] = str(args.device)
    if getattr(args, "seed", None) is not None:
        changes["seed"] = int(args.seed)
    if getattr(args, "threshold", None) is not None:
        changes["threshold"] = float(args.threshold)
    if getattr(args, "no_pixel_stage", False):
        changes["pixel_level"] = False
    if getattr(args, "colour_prototypes", None) is not None:
        changes["colour_prototypes"] = int(args.colour_prototypes)
    return cfg.replace(**changes) if changes else cfg


class StageBars:
    """Progress on stderr per stage (a tqdm bar, or plain lines in a log:
    :func:`~protorefine.cli.progress.tqdm_progress`), fed by the pipeline's
    ``"<stage>: msg"`` progress."""

    def __init__(self, factory: Callable | None = None) -> None:
        self.factory = factory if factory is not None else tqdm_progress
        self.stage: str | None = None
        self.bar: tuple[Callable, Callable] | None = None

    def __call__(self, done: int, total: int, message: str = "") -> None:
        stage, _, msg = message.partition(": ")
        if stage != self.stage:
            self.close()
            self.stage = stage
            self.bar = self.factory(stage)
        assert self.bar is not None
        self.bar[0](done, total, msg)

    def close(self) -> None:
        """Close the current bar."""
        if self.bar is not None:
            self.bar[1]()
            self.bar = None


def refine_command(args: argparse.Namespace) -> int:
    """Run ``protorefine refine`` and write DIR/<stem>.geojson, DIR/<stem>_refined.png, DIR/report.json."""
    pairs = pair_by_stem(list(args.slides), list(args.coarse))
    slide_mpp = getattr(args, "slide_mpp", None)
    if slide_mpp is not None:  # before the project changes: a typo keeps its results
        slide_mpp = checked_mpp(slide_mpp)
    if args.encoder:  # before the project changes: a typo keeps its results
        parse_encoder_name(args.encoder)
    _refuse_overwriting_inputs(pairs, args)
    stems = [slide_stem(slide) for slide, _ in pairs]
    _refuse_folder_targets(Path(args.out), stems, args, report=True)
    given = Path(args.project) if getattr(args, "project", None) else None
    if given is not None and given.exists() and not given.is_dir():
        raise ProtorefineError(
            f"{given}: --project is a file, not a folder; give a folder for the project"
        )
    out = _output_folder(args)
    folder = given if given is not None else out / "project"
    # a bad --scheduler is refused before the project is touched
    with maybe_cluster(getattr(args, "scheduler", None), say=_say) as cluster:
        with project_lock(folder, note=_say):  # another run on it: refused here, at once
            return _refine_locked(args, pairs, folder, out, slide_mpp, cluster)


def _refine_locked(
    args: argparse.Namespace,
    pairs: list[tuple[Path, Path]],
    folder: Path,
    out: Path,
    slide_mpp: float | None,
    cluster: Cluster | None = None,
) -> int:
    """The part of ``refine`` that changes the project, holding its lock; ``cluster``
    (``--scheduler``) runs the per-slide work on its workers."""
    project, ids = prepare_project(
        folder,
        pairs,
        lambda base: config_from_args(args, base),
        slide_mpp=slide_mpp,
        warn=_say,
    )
    _check_masks(project, ids, args)  # before a long run, not after it
    bars = StageBars()
    t0 = time.perf_counter()
    pipe = Pipeline(project) if cluster is None else ClusterPipeline(project, cluster)
    try:
        pipe.run(progress=bars)
    finally:
        bars.close()
    total = time.perf_counter() - t0
    write_outputs(project, ids, out, args, bars)
    report = make_report(project, pipe, total)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
    say_results(project, ids)
    print(f"refined {len(ids)} slide(s) in {total:.1f} s; results in {out}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    """Run ``protorefine export``: write a project's accepted outlines (hand edits included)
    as ``refine`` does, without running anything; slides not refined yet are named and left out."""
    Project.open(args.project)  # a project at all, before its lock is looked at
    with project_lock(args.project, note=_say):  # a run writing to it: refused at once
        return _export_locked(args)


def _export_locked(args: argparse.Namespace) -> int:
    """``export`` holding the project's lock."""
    project = Project.open(args.project)
    with project.reading():
        ids = [s.id for s in project.slides if project.has_results(s.id)]
        left_out = [s.id for s in project.slides if s.id not in ids]
        for sid in left_out:  # a damaged copy of a coarse outline is why, not "not refined"
            try:
                project.coarse(sid)
            except ProtorefineError as exc:
                raise ProtorefineError(
                    f"{exc} (the project's copy of the coarse outline of {sid!r}; run "
                    "`protorefine refine` with its coarse file again to replace it)"
                ) from None
        if not ids:
            raise ProtorefineError(
                f"{args.project}: no slide has a refined outline yet; run `protorefine refine` "
                "or napari's Refine and train first"
            )
        unchecked = [s for s in ids if project.review_state(s) != "reviewed"]
    if left_out:
        print(f"not refined yet, left out: {', '.join(left_out)}", file=sys.stderr)
    if getattr(args, "reviewed_only", False):
        if unchecked:
            print(f"not ticked as reviewed, left out: {', '.join(unchecked)}", file=sys.stderr)
        ids = [s for s in ids if s not in unchecked]
        if not ids:
            raise ProtorefineError(
                f"{args.project}: no outline is ticked as reviewed (as it is now); tick them in "
                "napari's Review pane, or export without --reviewed-only"
            )
    _check_masks(project, ids, args)
    with project.reading():  # the coarse outline named as such, before anything is written
        project.check_export_targets(Path(args.out), _outline_suffixes(args), ids)
    _refuse_folder_targets(Path(args.out), ids, args)
    out = _output_folder(args)
    bars = StageBars()
    write_outputs(project, ids, out, args, bars)
    say_results(project, ids)
    print(f"exported {len(ids)} slide(s) to {out}")
    return 0


def _say(note: str) -> None:
    """A note for the user (a reading note, a stale lock taken over): one line on stderr
    (none with ``--quiet``)."""
    if not is_quiet():
        print(note, file=sys.stderr)


def _output_folder(args: argparse.Namespace) -> Path:
    """``--out``, made now and refused when it cannot be written (before a long run, not
    after it); ``--mask-downsample`` checked too."""
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ProtorefineError(f"{out}: output path exists and is not a folder")
    d = getattr(args, "mask_downsample", None)
    if d is not None and not d >= 1:
        raise ProtorefineError(f"--mask-downsample {d:g}: must be 1 (full resolution) or more")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ProtorefineError(f"{out}: cannot create the output folder ({exc.strerror})") from None
    if not os.access(out, os.W_OK):
        raise ProtorefineError(f"{out}: the output folder is not writable")
    return out


def _check_masks(project: Project, ids: list[str], args: argparse.Namespace) -> None:
    """Refuse a ``--mask-downsample`` at which some slide's mask would not fit in memory."""
    d = getattr(args, "mask_downsample", None)
    if d is not None:
        for sid in ids:
            check_mask_size(project.slide(sid).shape, d, f"{sid}{MASK_SUFFIX}")


def write_outputs(
    project: Project, ids: list[str], out: Path, args: argparse.Namespace, bars: StageBars
) -> None:
    """Per slide ``<id>.geojson`` and ``<id>_refined.png``, ``tumour_measurements.csv``, and
    what the options ask for: ``<id>.xml``, ``<id>_mask.tif``, ``<id>.ome.zarr``."""
    downsample = getattr(args, "mask_downsample", None)
    project.export_refined(out, _outline_suffixes(args), downsample=downsample, slides=ids)
    for sid in ids:
        _write_png(out / f"{sid}{GRID_PNG_SUFFIX}", project.result_grid(sid, "refined"))
    if getattr(args, "ome_zarr", False):
        for sid in ids:  # the slide as OME-Zarr (kept when rerun), labels/refined inside
            try:
                export_refined_labels(
                    project,
                    sid,
                    out / f"{sid}.ome.zarr",
                    progress=_under_stage(bars, f"{sid}.ome.zarr"),
                )
            finally:
                bars.close()


def _under_stage(bars: StageBars, stage: str) -> Progress:
    """A progress callback that feeds ``bars`` under the stage name ``stage``."""

    def progress(done: int, total: int, message: str = "") -> None:
        bars(done, total, f"{stage}: {message}")

    return progress


def say_results(project: Project, ids: list[str]) -> None:
    """One line per slide (tumour now and in the coarse outline, how unsure the model is) and,
    for a batch, the least sure slides, where review should start."""
    unsure = project.unsure_shares()
    for sid in ids:
        m = project.measurements(sid)
        print(
            f"{sid}: tumour {m['refined'].summary()} (coarse: {m['coarse'].summary()}); "
            f"model unsure on {unsure[sid]:.0%} of the tissue"
        )
    if len(ids) > 1:
        first = sorted(ids, key=lambda sid: -unsure[sid])[:CHECK_FIRST]
        print("check first (least sure): " + ", ".join(f"{s} ({unsure[s]:.0%})" for s in first))


def _write_png(path: Path, mask: np.ndarray) -> None:
    """A bool grid mask as an 8-bit PNG (255 = tumour), atomically."""
    buf = io.BytesIO()
    iio.imwrite(buf, (np.asarray(mask, dtype=bool) * 255).astype(np.uint8), extension=".png")
    atomic_write_bytes(path, buf.getvalue())


def software_versions() -> dict[str, str]:
    """Versions that decide the numbers (for a report someone re-runs later), and the GPU."""
    out = {"protorefine": protorefine.__version__, "python": platform.python_version()}
    for dist in ("torch", "numpy", "scikit-learn", "scikit-image", "zarr", "tifffile"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def make_report(project: Project, pipe: Pipeline, total: float) -> dict:
    """Config, per-stage time (and whether it was reused), patch counts, device, and per slide
    the tumour's measurements and the largest changes to the coarse outline."""
    stages = {}
    for name in pipe.STAGES:
        info = project.stage_info(name)
        stages[name] = {
            "seconds": round(float(info.get("seconds", 0.0)), 3),
            "ran_now": name in pipe.times,
        }
    grid_info = project.stage_info("grid").get("patches", {})
    out_info = project.stage_info("output").get("slides", {})
    slides = {}
    unsure = project.unsure_shares()
    for s in project.slides:
        g = grid_info.get(s.id, {})
        slides[s.id] = {
            "path": s.path,
            "patches": g.get("patches"),
            "tissue_patches": g.get("tissue"),
            "refined_patches": out_info.get(s.id, {}).get("refined_patches"),
            "mpp": s.mpp,
            "tumour": {k: m.as_dict() for k, m in project.measurements(s.id).items()},
            "changes": changes_report(project, s.id),
            "unsure": round(unsure[s.id], 4) if s.id in unsure else None,
        }
    if isinstance(pipe, ClusterPipeline):  # which worker ran each slide's work, how long
        for sid, row in slides.items():
            row["workers"] = {st: runs[sid] for st, runs in pipe.slide_runs.items() if sid in runs}
    return {
        "scheduler": _scheduler_report(pipe),
        "config": project.config.to_dict(),
        "encoder": project.encoder_info,
        "device": str(resolve_device(project.config.device)),
        "host": platform.node(),
        "software": software_versions(),
        "total_seconds": round(total, 3),
        "stages": stages,
        "slides": slides,
        "history": project.stage_info("classifier").get("history", []),
        "prototypes": {k: project.stage_info("prototypes").get(k) for k in ("local", "global")},
        "project": str(project.folder),
    }


def _scheduler_report(pipe: Pipeline) -> dict | None:
    """The dask scheduler a ``--scheduler`` run used and its workers (None: this machine)."""
    if not isinstance(pipe, ClusterPipeline):
        return None
    cluster = pipe.cluster
    return {
        "address": cluster.address,
        "scheduler": cluster.scheduler,
        "workers": cluster.workers(),
    }
