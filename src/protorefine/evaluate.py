"""Evaluation against ground truth: overlap metrics (Dice, IoU, precision, recall), a folder
of predictions scored by stem (``protorefine evaluate``), and one project slide's coarse and
refined outlines scored (napari's Review pane)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from protorefine.annotations import rasterize, read_annotations, tumour_geometry
from protorefine.annotations.masks import MAX_MASK_PIXELS, mask_file_shape
from protorefine.errors import ProtorefineError
from protorefine.slides import open_slide, tissue_mask

ANNOTATION_SUFFIXES = (
    ".geojson",
    ".json",
    ".xml",
    ".png",
    ".tif",
    ".tiff",
    ".jpg",
    ".jpeg",
    ".bmp",
)
SLIDE_SUFFIXES = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".zarr",
    ".png",
    ".jpg",
    ".jpeg",
)
METRICS = ("dice", "iou", "precision", "recall")


def _counts(pred, truth, mask=None) -> tuple[int, int, int]:
    """True positives, false positives, false negatives (inside ``mask`` when given)."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ProtorefineError(f"prediction shape {p.shape} differs from truth shape {t.shape}")
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        p, t = p & m, t & m
    tp = int((p & t).sum())
    return tp, int((p & ~t).sum()), int((~p & t).sum())


def dice(pred, truth, mask=None) -> float:
    """Dice = 2TP / (2TP + FP + FN); 1.0 when both are empty."""
    tp, fp, fn = _counts(pred, truth, mask)
    d = 2 * tp + fp + fn
    return 1.0 if d == 0 else 2 * tp / d


def iou(pred, truth, mask=None) -> float:
    """IoU = TP / (TP + FP + FN); 1.0 when both are empty."""
    tp, fp, fn = _counts(pred, truth, mask)
    d = tp + fp + fn
    return 1.0 if d == 0 else tp / d


def precision(pred, truth, mask=None) -> float:
    """TP / (TP + FP); 1.0 when nothing is predicted."""
    tp, fp, _ = _counts(pred, truth, mask)
    return 1.0 if tp + fp == 0 else tp / (tp + fp)


def recall(pred, truth, mask=None) -> float:
    """TP / (TP + FN); 1.0 when the truth is empty."""
    tp, _, fn = _counts(pred, truth, mask)
    return 1.0 if tp + fn == 0 else tp / (tp + fn)


def all_metrics(pred, truth, mask=None) -> dict[str, float]:
    """Dice, IoU, precision and recall in one dict."""
    return {
        "dice": dice(pred, truth, mask),
        "iou": iou(pred, truth, mask),
        "precision": precision(pred, truth, mask),
        "recall": recall(pred, truth, mask),
    }


# ---- folders of predictions ------------------------------------------------------------
def _by_stem(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """Files (or .zarr folders) in ``folder`` by stem; ``<stem>.geojson`` wins over masks."""
    if not folder.is_dir():
        raise ProtorefineError(f"{folder}: {what} folder not found")
    found: dict[str, Path] = {}
    rank = {s: i for i, s in enumerate(suffixes)}
    for p in sorted(folder.iterdir()):
        suf = p.suffix.lower()
        if suf not in rank or p.name.startswith("."):
            continue
        stem = p.name[: -len(p.suffix)]
        if stem.endswith(".ome"):
            stem = stem[:-4]
        if stem.endswith("_refined") and stem[: -len("_refined")] not in found:
            stem = stem[: -len("_refined")]
        if stem not in found or rank[suf] < rank[found[stem].suffix.lower()]:
            found[stem] = p
    return found


def _frame(
    stem: str, slides: dict[str, Path], gt_path: Path
) -> tuple[tuple[int, int], float, np.ndarray | None]:
    """Level-0 shape, evaluation downsample and tissue mask (None: all pixels) for one slide."""
    if stem in slides:
        slide = open_slide(slides[stem])
        mask, ds = tissue_mask(slide)
        return slide.shape, float(ds), np.asarray(mask, dtype=bool)
    if gt_path.suffix.lower() in (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"):
        h, w = mask_file_shape(gt_path)  # the header only: a huge mask is not decoded
        if h * w > MAX_MASK_PIXELS:
            raise ProtorefineError(
                f"{gt_path}: a {w}x{h} mask ({h * w / 1e9:.1f} Gpixel) is too large to evaluate "
                f"without its slide; give --slides DIR or a smaller mask (at most "
                f"{MAX_MASK_PIXELS / 1e9:.1f} Gpixel, e.g. a downsampled one)"
            )
        ds = max(1.0, max(h, w) / 2048)
        return (h, w), ds, None
    raise ProtorefineError(
        f"{gt_path}: cannot size the evaluation of {stem!r} without its slide; pass --slides DIR"
    )


def _raster(path: Path, shape: tuple[int, int], ds: float) -> np.ndarray:
    """The tumour region of an annotation file as a bool mask at downsample ``ds``."""
    ann = read_annotations(path, slide_shape=shape)
    return np.asarray(rasterize(tumour_geometry(ann), shape, ds), dtype=bool)


def evaluate_folders(
    pred: Path, gt: Path, coarse: Path | None = None, slides: Path | None = None
) -> dict:
    """Per-slide and mean metrics of predictions (and coarse annotations) against ground truth."""
    gts = _by_stem(Path(gt), ANNOTATION_SUFFIXES, "ground truth")
    preds = _by_stem(Path(pred), ANNOTATION_SUFFIXES, "prediction")
    coarses = _by_stem(Path(coarse), ANNOTATION_SUFFIXES, "coarse") if coarse else {}
    slide_files = _by_stem(Path(slides), SLIDE_SUFFIXES, "slide") if slides else {}
    stems = [s for s in gts if s in preds]
    if not stems:
        raise ProtorefineError(
            f"{pred}: no prediction matches a ground truth stem "
            f"(ground truth: {', '.join(sorted(gts)) or 'none'}; "
            f"predictions: {', '.join(sorted(preds)) or 'none'})"
        )
    rows: list[dict[str, Any]] = []
    for stem in stems:
        shape, ds, tissue = _frame(stem, slide_files, gts[stem])
        truth = _raster(gts[stem], shape, ds)
        if tissue is not None and tissue.shape != truth.shape:
            from skimage.transform import resize

            tissue = resize(tissue, truth.shape, order=0, preserve_range=True).astype(bool)
        row: dict[str, Any] = {
            "slide": stem,
            "refined": all_metrics(_raster(preds[stem], shape, ds), truth, tissue),
        }
        if stem in coarses:
            row["coarse"] = all_metrics(_raster(coarses[stem], shape, ds), truth, tissue)
        rows.append(row)
    mean = {"refined": {m: float(np.mean([r["refined"][m] for r in rows])) for m in METRICS}}
    with_coarse = [r for r in rows if "coarse" in r]
    if with_coarse:
        mean["coarse"] = {m: float(np.mean([r["coarse"][m] for r in with_coarse])) for m in METRICS}
    missing = sorted(set(gts) - set(preds))
    return {"slides": rows, "mean": mean, "missing_predictions": missing}


def format_table(result: dict) -> str:
    """The evaluation as a plain-text table (coarse beside refined when present)."""
    has_coarse = "coarse" in result["mean"]
    cols = ["slide"]
    for kind in ("coarse", "refined") if has_coarse else ("refined",):
        cols += [f"{kind[:3]} {m}" for m in METRICS]
    width = max(12, *(len(r["slide"]) for r in result["slides"]))
    lines = [f"{cols[0]:<{width}} " + " ".join(f"{c:>11}" for c in cols[1:])]

    def fmt(v: float | None) -> str:
        return (
            f"{'-':>11}" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:>11.4f}"
        )

    for r in [*result["slides"], {"slide": "mean", **result["mean"]}]:
        vals = []
        for kind in ("coarse", "refined") if has_coarse else ("refined",):
            vals += [r.get(kind, {}).get(m) for m in METRICS]
        lines.append(f"{r['slide']:<{width}} " + " ".join(fmt(v) for v in vals))
    return "\n".join(lines)


# ---- one project slide -----------------------------------------------------------------
def score_slide(
    project, slide_id: str, truth: str | os.PathLike[str]
) -> dict[str, dict[str, float]]:
    """Dice, IoU, precision and recall within tissue of the coarse and (when run) refined outlines.

    ``truth`` is a GeoJSON, ASAP XML or mask file for the slide. Returns
    ``{"coarse": {...}, "refined": {...}}`` (a key is absent when that outline is).
    """
    truth = Path(truth)
    slide = project.open_slide(slide_id)
    shape = slide.shape
    truth_set = read_annotations(truth, slide_shape=shape)
    truth_geom = tumour_geometry(truth_set)
    if truth_geom.is_empty:
        raise ProtorefineError(f"{truth}: no tumour region to compare with")
    tissue, ds = tissue_mask(slide)
    tissue = np.asarray(tissue, dtype=bool)

    def raster(geom) -> np.ndarray:
        mask = np.asarray(rasterize(geom, shape, ds), dtype=bool)
        out: np.ndarray = np.zeros(tissue.shape, bool)
        h, w = min(out.shape[0], mask.shape[0]), min(out.shape[1], mask.shape[1])
        out[:h, :w] = mask[:h, :w]
        return out

    truth_mask = raster(truth_geom)
    scores: dict[str, dict[str, float]] = {}
    coarse = project.coarse(slide_id)
    if coarse is not None:
        scores["coarse"] = all_metrics(raster(tumour_geometry(coarse)), truth_mask, tissue)
    if project.has_results(slide_id):
        refined = project.accepted_outline(slide_id)
        scores["refined"] = all_metrics(raster(tumour_geometry(refined)), truth_mask, tissue)
    return scores
