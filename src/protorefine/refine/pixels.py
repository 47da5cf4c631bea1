"""The pixel stage: a tumour probability per dense cell (a few µm) learned on the slide's own
pixels, and the outline drawn from it, so the outline follows tissue, not the patch grid.

Supervision comes from where the coarse outline is reliable and from the pathologist: cells
far inside the outline are tumour, cells far outside are normal, painted corrections are
hard labels. A linear model on the dense features (per-slide z-scored) is fitted on those
cells, once on every slide together (what tumour looks like across the cohort) and once per
slide (this slide's stain and tissue); their mean, averaged with the patch stage's refined
outline (the evidence of the patch classifier), scores every cell. The near-outline
band, where the coarse outline is wrong most often, is then decided by self-training: the
slide's confident cells, its far-outside cells and the corrections retrain the per-slide
model, which gives the final probability; beyond ``pixel_outside_um`` outside the coarse
outline it is 0. See ``docs/method.md``, section 6.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from shapely.geometry import box

from protorefine._types import Cancel, Progress
from protorefine.annotations import AnnotationSet, smooth_outline, vectorize
from protorefine.annotations.classes import polygonal
from protorefine.errors import CancelledError, ProtorefineError
from protorefine.features.dense import BLOCK_WIDTHS, drop_pages
from protorefine.refine.config import RefineConfig
from protorefine.refine.postprocess import clean_mask

#: Cells fitted per model at most (a random sample; the cohort model shares it among slides).
MAX_TRAIN = 40000
#: Cells scored per chunk (keeps a whole slide's features out of memory at once).
_CHUNK = 65536
#: Side of the tiles the outline is traced in (fine cells; 2048 at 4 µm is 8 mm of slide).
TRACE_TILE = 2048


@dataclass
class PixelSlide:
    """One slide's dense cells: ``features`` (rows, cols, D) (an array or a memory map),
    ``distance`` (rows, cols) signed distance to the coarse outline in µm (positive inside),
    ``tissue`` (rows, cols) bool, ``labels`` (rows, cols) int8 corrections (-1 none, 0, 1),
    ``prior`` (rows, cols) the patch stage's refined outline on the cells (1 inside),
    ``name`` the slide's id for messages."""

    features: np.ndarray
    distance: np.ndarray
    tissue: np.ndarray
    labels: np.ndarray | None = None
    prior: np.ndarray | None = None
    name: str = "slide"

    def __post_init__(self) -> None:
        shape = self.features.shape[:2]
        for name in ("distance", "tissue", "labels", "prior"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != shape:
                raise ProtorefineError(f"{name}: expected shape {shape}, got {arr.shape}")


class _Standardiser:
    """Per-slide z-scoring of the dense features, each encoder layer weighed equally."""

    def __init__(self, slide: PixelSlide, rng: np.random.Generator) -> None:
        idx = np.flatnonzero(slide.tissue.ravel())
        if len(idx) == 0:
            raise ProtorefineError("pixel stage: a slide has no tissue cells")
        sample = idx if len(idx) <= MAX_TRAIN else rng.choice(idx, MAX_TRAIN, replace=False)
        x = self._rows(slide, np.sort(sample))
        self.mean = x.mean(0)
        self.std = x.std(0) + 1e-6
        widths = BLOCK_WIDTHS if sum(BLOCK_WIDTHS) == x.shape[1] else (x.shape[1],)
        self.weight = np.concatenate([np.full(w, 1 / np.sqrt(w)) for w in widths]).astype(
            np.float32
        )

    @staticmethod
    def _rows(slide: PixelSlide, flat: np.ndarray) -> np.ndarray:
        feats = slide.features.reshape(-1, slide.features.shape[-1])
        rows = np.asarray(feats[flat], dtype=np.float32)
        drop_pages(slide.features)  # a whole slide's memory-mapped features: one chunk resident
        return rows

    def __call__(self, slide: PixelSlide, flat: np.ndarray) -> np.ndarray:
        return ((self._rows(slide, flat) - self.mean) / self.std * self.weight).astype(np.float32)


def _fit(x: np.ndarray, y: np.ndarray, w: np.ndarray, c: float, seed: int, curve=None):
    """A class-balanced L2 logistic regression (None when the labels hold one class only);
    ``curve`` (a :class:`_Curve`) is shown the model after each L-BFGS iteration."""
    from sklearn.linear_model import LogisticRegression

    if len(y) < 4 or y.min() == y.max():
        return None
    clf = LogisticRegression(C=c, class_weight="balanced", max_iter=300, random_state=seed)
    if curve is not None and hasattr(clf, "set_callbacks"):  # scikit-learn >= 1.9
        clf.set_callbacks(curve)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence notes: the fit is still usable
        clf.fit(x, y, sample_weight=w)
    return clf


#: Cells the self-training curve is measured on (training cells; as many held out).
CURVE_CELLS = 4000


class _Curve:
    """The self-training fit's curve: after each L-BFGS iteration, the log-loss on a sample
    of its training cells and the agreement with their labels, and with confident cells it
    was not trained on when the slide has more than it takes (a scikit-learn fit callback;
    it does not change the fit)."""

    def __init__(
        self,
        train: tuple[np.ndarray, np.ndarray],
        held_out: tuple[np.ndarray, np.ndarray] | None,
    ) -> None:
        self.train, self.held_out = train, held_out
        self.points: list[dict] = []

    def setup(self, estimator, context) -> None:
        """Part of scikit-learn's callback protocol: nothing to set up."""

    def teardown(self, estimator, context) -> None:
        """Part of scikit-learn's callback protocol: nothing to tear down."""

    def on_fit_task_begin(self, estimator, context, **_kwargs) -> None:
        """Part of scikit-learn's callback protocol: the curve is read at each task's end."""

    def on_fit_task_end(self, estimator, context, *, fitted_estimator=None, **_kwargs) -> bool:
        """One point after each L-BFGS iteration; never stops the fit."""
        if fitted_estimator is None or getattr(context, "task_name", "") != "lbfgs-iter":
            return False
        x, y = self.train
        p = np.clip(fitted_estimator.predict_proba(x)[:, 1], 1e-7, 1 - 1e-7)
        point = {
            "iteration": len(self.points) + 1,
            "loss": float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))),
            "agreement": float(((p >= 0.5) == (y == 1)).mean()),
        }
        if self.held_out is not None:
            hx, hy = self.held_out
            point["held_out_agreement"] = float((fitted_estimator.predict(hx) == hy).mean())
        self.points.append(point)
        return False


def _reliable(slide: PixelSlide, config: RefineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices and labels of the cells taken as known: far inside the coarse outline
    (tumour), far outside (normal) and the corrections. Small slides whose outline leaves no
    cell that far take half the largest distance instead."""
    d = slide.distance.ravel()
    tissue = slide.tissue.ravel()
    far = float(config.pixel_reliable_um)
    pos, neg = (d >= far) & tissue, (d <= -far) & tissue
    if pos.sum() < 4:
        pos = (d >= min(far, 0.5 * d[tissue].max(initial=0))) & (d > 0) & tissue
    if neg.sum() < 4:
        neg = (d <= max(-far, 0.5 * d[tissue].min(initial=0))) & (d < 0) & tissue
    y = np.full(d.shape, -1, np.int8)
    y[pos], y[neg] = 1, 0
    if slide.labels is not None:
        corr = slide.labels.ravel()
        y[(corr >= 0) & tissue] = corr[(corr >= 0) & tissue]
    idx = np.flatnonzero(y >= 0)
    return idx, y[idx].astype(np.int64)


def _sample(idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return idx if len(idx) <= n else np.sort(rng.choice(idx, n, replace=False))


def _weights(slide: PixelSlide, idx: np.ndarray, config: RefineConfig) -> np.ndarray:
    """Corrections count ``correction_weight`` times a coarse-outline cell."""
    w = np.ones(len(idx), np.float64)
    if slide.labels is not None:
        w[slide.labels.ravel()[idx] >= 0] = float(config.correction_weight)
    return w


def _predict(clf, slide: PixelSlide, norm: _Standardiser) -> np.ndarray:
    """The model's probability for every tissue cell of a slide (0 off tissue), in chunks."""
    flat = np.flatnonzero(slide.tissue.ravel())
    out = np.zeros(slide.tissue.size, np.float32)
    for a in range(0, len(flat), _CHUNK):
        part = flat[a : a + _CHUNK]
        out[part] = clf.predict_proba(norm(slide, part))[:, 1]
    return out.reshape(slide.tissue.shape)


def smooth_on_tissue(prob: np.ndarray, tissue: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a cell map over tissue only (normalised: no pull toward 0 at
    the tissue border)."""
    if sigma <= 0:
        return np.where(tissue, prob, 0).astype(np.float32)
    t = tissue.astype(np.float32)
    num = ndi.gaussian_filter(np.where(tissue, prob, 0).astype(np.float32), sigma, truncate=3.0)
    den = ndi.gaussian_filter(t, sigma, truncate=3.0)
    return np.where(tissue, num / np.maximum(den, 1e-6), 0).astype(np.float32)


@dataclass
class PixelResult:
    """One slide's pixel-stage output: ``prob`` the tumour probability per cell (rows, cols),
    ``pseudo`` the first pass the self-training learnt from (the pixel pseudo-mask, for
    inspection)."""

    prob: np.ndarray
    pseudo: np.ndarray
    #: The self-training fit's curve: per L-BFGS iteration, ``loss`` and ``agreement`` on its
    #: training cells, ``held_out_agreement`` with confident cells it left out (slides with
    #: more than :data:`MAX_TRAIN`); empty when not measured.
    curve: list[dict] = field(default_factory=list)


@dataclass
class PixelPrep:
    """What one slide gives the cohort model, and keeps for its own: its z-scoring, its
    known cells (flat indices, labels) and its share of the cohort model's training cells
    (standardised features, labels, weights). Small: a cluster's worker sends it back."""

    norm: _Standardiser
    known: tuple[np.ndarray, np.ndarray]
    sample: tuple[np.ndarray, np.ndarray, np.ndarray]


#: A :class:`PixelPrep` without a share of the cohort model's cells (a cohort of one slide;
#: a cluster's worker, which does not need it).
NO_SAMPLE = (np.zeros((0, 0), np.float32), np.zeros(0, np.int64), np.zeros(0))


def _slide_rng(config: RefineConfig, index: int, step: int) -> np.random.Generator:
    """The random draws of slide ``index``'s step: the same wherever the slide is computed
    (one machine or a cluster's worker), whatever order the slides run in."""
    return np.random.default_rng([int(config.seed), index, step])


def prepare_slide(slide: PixelSlide, config: RefineConfig, index: int, n_slides: int) -> PixelPrep:
    """Slide ``index`` of ``n_slides``: its z-scoring, known cells and cohort-model share."""
    rng = _slide_rng(config, index, 0)
    norm = _Standardiser(slide, rng)
    idx, y = _reliable(slide, config)
    if not (y == 0).any():
        raise ProtorefineError(
            f"pixel stage: the coarse outline of {slide.name!r} leaves no tissue outside it, "
            "nothing to learn normal tissue from; draw the outline around the tumour, "
            "not the whole slide"
        )
    if n_slides < 2:  # no cohort model to share in
        return PixelPrep(norm, (idx, y), NO_SAMPLE)
    pick = np.searchsorted(idx, _sample(idx, max(200, MAX_TRAIN // n_slides), rng))
    sample = (norm(slide, idx[pick]), y[pick], _weights(slide, idx[pick], config))
    return PixelPrep(norm, (idx, y), sample)


def cohort_model(preps: Sequence[PixelPrep], config: RefineConfig):
    """The model of what tumour looks like across the cohort: every slide's share of known
    cells together (None for a single slide, whose own model says it all)."""
    if len(preps) < 2:
        return None
    x, y, w = (np.concatenate(part) for part in zip(*(p.sample for p in preps), strict=True))
    return _fit(x, y, w, float(config.pixel_c), config.seed)


def refine_slide(
    slide: PixelSlide, prep: PixelPrep, cohort, config: RefineConfig, index: int
) -> PixelResult:
    """Slide ``index``'s probability per cell: its own model and ``cohort`` (with the patch
    stage's outline) give the first pass; self-training on its confident cells the result."""
    rng = _slide_rng(config, index, 1)
    norm, (idx, y) = prep.norm, prep.known
    c_first, c_self = float(config.pixel_c), 10.0 * float(config.pixel_c)
    pick = np.searchsorted(idx, _sample(idx, MAX_TRAIN, rng))
    own = _fit(
        norm(slide, idx[pick]), y[pick], _weights(slide, idx[pick], config), c_first, config.seed
    )
    preds = [_predict(m, slide, norm) for m in (cohort, own) if m is not None]
    if not preds:  # one class only among the known cells: keep the coarse outline
        keep = ((slide.distance > 0) & slide.tissue).astype(np.float32)
        return PixelResult(keep, keep)
    first = np.mean(preds, axis=0)
    if slide.prior is not None:  # the patch stage's outline: the evidence of its head
        first = 0.5 * (first + slide.prior)
    # self-training: the slide's confident cells decide the band near the outline
    tissue = slide.tissue.ravel()
    q = smooth_on_tissue(first, slide.tissue, config.pixel_smooth).ravel()
    conf = np.abs(2 * q - 1) >= config.pixel_confidence
    label = (q >= 0.5).astype(np.int64)
    far_out = slide.distance.ravel() <= -config.pixel_reliable_um
    label[far_out] = 0
    use = (conf | far_out) & tissue
    if slide.labels is not None:
        corr = slide.labels.ravel()
        label[corr >= 0] = corr[corr >= 0]
        use |= (corr >= 0) & tissue
    candidates = np.flatnonzero(use)
    sel = _sample(candidates, MAX_TRAIN, rng)
    x_sel = norm(slide, sel)
    curve = _self_training_curve(
        slide, norm, candidates, sel, x_sel, label, _slide_rng(config, index, 2)
    )
    again = _fit(x_sel, label[sel], _weights(slide, sel, config), c_self, config.seed, curve)
    prob = _predict(again, slide, norm) if again is not None else first
    # coarse outlines miss tumour next to them, not far away: beyond pixel_outside_um
    # outside (where the benchmark cohorts hold no tumour) the probability is 0
    prob = np.where(slide.distance < -config.pixel_outside_um, 0.0, prob)
    if slide.labels is not None:
        prob = np.where(slide.labels >= 0, slide.labels, prob)
    return PixelResult(
        np.where(slide.tissue, prob, 0).astype(np.float32),
        np.where(slide.tissue, first, 0).astype(np.float32),
        curve.points,
    )


def _self_training_curve(
    slide: PixelSlide,
    norm: _Standardiser,
    candidates: np.ndarray,
    sel: np.ndarray,
    x_sel: np.ndarray,
    label: np.ndarray,
    rng: np.random.Generator,
) -> _Curve:
    """The curve of a self-training fit on ``sel`` (standardised ``x_sel``) of the confident
    ``candidates``: measured on up to :data:`CURVE_CELLS` of its training cells and as many
    candidates it leaves out, drawn with ``rng`` (its own: the fit's draws are unchanged)."""
    at = np.sort(rng.choice(len(sel), min(CURVE_CELLS, len(sel)), replace=False))
    train = (x_sel[at], label[sel[at]])
    rest = np.setdiff1d(candidates, sel, assume_unique=True)
    held_out = None
    if len(rest):
        out = np.sort(rng.choice(rest, min(CURVE_CELLS, len(rest)), replace=False))
        held_out = (norm(slide, out), label[out])
    return _Curve(train, held_out)


def pixel_probability(
    slides: Sequence[PixelSlide],
    config: RefineConfig,
    *,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> list[PixelResult]:
    """Tumour probability per dense cell of every slide, corrections forced, with the first
    pass it was self-trained from: :func:`prepare_slide` each, :func:`cohort_model`, then
    :func:`refine_slide` each (what a cluster runs on its workers, slide by slide)."""
    if not slides:
        raise ProtorefineError("pixel stage: no slides")
    n = len(slides)
    total, done = 2 * n + 1, 0

    def step(msg: str) -> None:
        nonlocal done
        if cancel is not None and cancel():
            raise CancelledError("pixel stage cancelled; the patch-level outline is kept")
        done += 1
        if progress is not None:
            progress(done, total, msg)

    preps = []
    for k, s in enumerate(slides):
        preps.append(prepare_slide(s, config, k, n))
        step(f"slide {k + 1}/{n}: known cells")
    cohort = cohort_model(preps, config)
    step("cohort model")
    out = []
    for k, (s, prep) in enumerate(zip(slides, preps, strict=True)):
        out.append(refine_slide(s, prep, cohort, config, k))
        step(f"slide {k + 1}/{n}: self-training")
    return out


def pixel_mask(
    prob: np.ndarray, tissue: np.ndarray, config: RefineConfig, cell_um: float
) -> np.ndarray:
    """The refined mask on cells ``config.pixel_upsample`` times finer than the dense grid:
    the probability smoothed over tissue, resampled bilinearly, thresholded, parts smaller
    than ``pixel_min_area_um2`` dropped and holes that small filled."""
    f = max(1, int(config.pixel_upsample))
    p = smooth_on_tissue(prob, tissue, config.pixel_smooth)
    if f > 1:
        p = ndi.zoom(p, f, order=1, mode="nearest", grid_mode=True)
        t = np.repeat(np.repeat(tissue, f, 0), f, 1)
    else:
        t = tissue
    mask = (p >= config.pixel_threshold) & t
    min_cells = config.pixel_min_area_um2 / (cell_um / f) ** 2  # parts and holes under it
    return clean_mask(mask, t, min_part=min_cells, max_hole=math.ceil(min_cells) - 1)


def pixel_outline(
    mask: np.ndarray,
    step: float,
    shape: tuple[int, int],
    *,
    classification: str,
    smoothing: int,
) -> AnnotationSet:
    """Polygons of a fine mask whose cells are ``step`` level-0 pixels, rounded and clipped
    to the slide (level-0 pixels)."""
    annset = vectorize(mask, step, classification=classification, tile=TRACE_TILE)
    frame = box(0, 0, shape[1], shape[0])
    for ann in annset.annotations:
        ann.geometry = polygonal(smooth_outline(ann.geometry, step, smoothing).intersection(frame))
    annset.annotations = [
        a for a in annset.annotations if not a.geometry.is_empty and a.geometry.area > 0
    ]
    return annset
