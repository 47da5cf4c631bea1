"""Benchmark cohorts: slides with a known tumour map and a simulated coarse outline.

Four cohorts, each a list of :class:`BenchSlide` built deterministically from a seed:

- ``synthetic``: lazy H&E-like slides from :func:`protorefine.synthetic.synthetic_slide`.
- ``camelyon-canvas`` / ``ocdc-canvas``: large canvases tiled with pure-tumour and
  pure-normal squares cut from the real tiles in ``../shared/data``, laid out along a
  random smooth tumour map (blobs with normal islands inside and tumour satellites
  outside), shifted by half a square so every patch straddles squares.
- ``camelyon-tiles`` / ``ocdc-tiles``: the CAMELYON or OCDC tiles themselves, one small
  slide per tile, with their real tumour/stroma boundaries.

Coarse outlines come from :func:`protorefine.synthetic.simulate_coarse`, with its
strength calibrated per cohort so the mean coarse Dice sits near 0.80 (see
``docs/benchmarks.md``). Built cohorts are cached as ``.npz`` under
``$PROTOREFINE_BENCH_CACHE`` (default ``/tmp/protorefine-bench``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from protorefine.annotations import fit_mask

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PROTOREFINE_DATA", REPO.parent / "shared" / "data"))
CACHE = Path(os.environ.get("PROTOREFINE_BENCH_CACHE", "/tmp/protorefine-bench"))
COHORTS = (
    "synthetic",
    "camelyon-canvas",
    "ocdc-canvas",
    "camelyon-tiles",
    "ocdc-tiles",
    "kather-canvas",
)
# Strengths tried when calibrating the coarse simulator to the target coarse Dice.
STRENGTHS = tuple(round(0.25 * i, 2) for i in range(1, 49))
# Published coarse outlines score about 0.78 F1 against fine ones (CAMELYON16).
TARGET_COARSE_DICE = 0.78
# The simulator works on a mask at least this many pixels on its longer side.
SIM_SIDE = 128
BUILD_VERSION = 5  # bump when the construction changes, so stale caches are ignored


@dataclass
class BenchSlide:
    """One benchmark slide: the RGB image, its true tumour map and the simulated coarse outline.

    ``truth``, ``tissue`` and ``coarse_mask`` are boolean maps at ``eval_downsample``
    (level-0 pixels per map pixel); ``coarse`` is the outline as an AnnotationSet in
    level-0 pixels, the form a user would give.
    """

    name: str
    image: np.ndarray
    truth: np.ndarray
    tissue: np.ndarray
    eval_downsample: int
    coarse: object = None
    coarse_mask: np.ndarray | None = None
    sources: list[str] = field(default_factory=list)

    def slide(self):
        """The image as a one-level protorefine Slide."""
        from protorefine.slides.base import Slide

        return Slide.from_array(self.image, name=self.name, mpp=0.5)


@dataclass
class Cohort:
    """A named list of slides sharing a patch size, with notes on how it was built."""

    name: str
    slides: list[BenchSlide]
    patch_size: int
    key: str
    notes: dict = field(default_factory=dict)


# ---------------------------------------------------------------- tumour maps


def tumour_map(
    shape: tuple[int, int], rng: np.random.Generator, *, fraction: float = 0.4
) -> np.ndarray:
    """Random smooth tumour map: thresholded Gaussian field plus normal islands and satellites."""
    h, w = shape
    sigma = max(min(h, w) / 9.0, 1.5)
    field_ = ndi.gaussian_filter(rng.standard_normal((h, w)), sigma, mode="reflect")
    m = field_ > np.quantile(field_, 1.0 - fraction)
    m = ndi.binary_opening(m, iterations=1)
    yy, xx = np.mgrid[:h, :w]
    inside = ndi.distance_transform_edt(m)
    outside = ndi.distance_transform_edt(~m)
    # normal islands inside large blobs
    cand = np.argwhere(inside >= 3)
    for idx in rng.permutation(len(cand))[: max(1, len(cand) // 60)]:
        cy, cx = cand[idx]
        r = rng.uniform(0.8, 1.8)
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = False
    # small tumour satellites away from the main blobs
    cand = np.argwhere(outside >= 4)
    for idx in rng.permutation(len(cand))[: max(2, len(cand) // 120)]:
        cy, cx = cand[idx]
        r = rng.uniform(0.6, 1.6)
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = True
    return m


# ---------------------------------------------------------------- squares from tiles


def _tile_pairs(folder: Path) -> list[tuple[str, Path, Path]]:
    """(stem, image, mask) for every tile of a data folder that has a mask."""
    out = []
    for img in sorted((folder / "images").glob("*.jpg")):
        mask = folder / "masks" / f"{img.stem}.png"
        if mask.exists():
            out.append((img.stem, img, mask))
    return out


def _read_tile(img: Path, mask: Path) -> tuple[np.ndarray, np.ndarray]:
    from skimage.io import imread

    im = imread(img)[..., :3].astype(np.uint8)
    m = imread(mask)
    if m.ndim == 3:
        m = m[..., 0]
    return im, m > 127


def cut_squares(
    image: np.ndarray,
    mask: np.ndarray,
    size: int,
    *,
    purity: float = 0.95,
    max_background: float = 0.5,
) -> dict[int, list[np.ndarray]]:
    """Pure squares of a tile by class (1 tumour, 0 normal), cut on a half-square stride.

    "Pure" means at least ``purity`` of the square is one class; squares that are
    more than ``max_background`` near-white (glass, fat) are left out.
    """
    out: dict[int, list[np.ndarray]] = {0: [], 1: []}
    step = size // 2
    h, w = mask.shape
    white = image.min(axis=-1) > 210
    for y in range(0, h - size + 1, step):
        for x in range(0, w - size + 1, step):
            if white[y : y + size, x : x + size].mean() > max_background:
                continue  # mostly glass or fat: not a tissue square
            frac = float(mask[y : y + size, x : x + size].mean())
            if frac >= purity:
                out[1].append(image[y : y + size, x : x + size])
            elif frac <= 1.0 - purity:
                out[0].append(image[y : y + size, x : x + size])
    return out


def _assign_tiles(fracs: list[float], n_slides: int) -> list[list[int]]:
    """Split tiles between slides so each gets a mix of tumour-rich and normal-rich tiles."""
    order = np.argsort(fracs)
    groups: list[list[int]] = [[] for _ in range(n_slides)]
    # snake order over sorted tumour fraction balances classes between slides
    for i, t in enumerate(order):
        r, c = divmod(i, n_slides)
        groups[c if r % 2 == 0 else n_slides - 1 - c].append(int(t))
    return groups


def render_canvas(
    tmap: np.ndarray,
    pools: dict[int, list[np.ndarray]],
    size: int,
    out_shape: tuple[int, int],
    rng: np.random.Generator,
    offset: int | None = None,
) -> np.ndarray:
    """Paint a canvas: map cell (i, j) gets a random pure square of its class, randomly flipped/rotated.

    The canvas starts ``offset`` pixels (default half a square) into the map, so
    square borders fall inside patches.
    """
    off = size // 2 if offset is None else int(offset)
    H, W = out_shape
    big = np.zeros((tmap.shape[0] * size, tmap.shape[1] * size, 3), np.uint8)
    for i in range(tmap.shape[0]):
        for j in range(tmap.shape[1]):
            pool = pools[int(tmap[i, j])]
            sq = pool[rng.integers(len(pool))]
            sq = np.rot90(sq, int(rng.integers(4)))
            if rng.integers(2):
                sq = sq[:, ::-1]
            big[i * size : (i + 1) * size, j * size : (j + 1) * size] = sq
    return np.ascontiguousarray(big[off : off + H, off : off + W])


def truth_at(
    tmap: np.ndarray, size: int, shape: tuple[int, int], ds: int, offset: int | None = None
) -> np.ndarray:
    """The square-resolution map as a boolean mask of the canvas at downsample ``ds``."""
    off = size // 2 if offset is None else int(offset)
    ys = (np.arange(shape[0] // ds) * ds + ds // 2 + off) // size
    xs = (np.arange(shape[1] // ds) * ds + ds // 2 + off) // size
    return tmap[np.ix_(ys, xs)]


# ---------------------------------------------------------------- coarse outlines


def _raster(annset, shape: tuple[int, int], ds: int) -> np.ndarray:
    from protorefine.annotations import rasterize, tumour_geometry

    return rasterize(tumour_geometry(annset), shape, ds)


def dice(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Dice of two boolean maps (within ``mask``); 1.0 when both are empty."""
    if mask is not None:
        a, b = a & mask, b & mask
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def add_coarse(slides: list[BenchSlide], seed: int, *, target: float = TARGET_COARSE_DICE) -> dict:
    """Simulate a coarse outline per slide, calibrating the simulator's strength to ``target`` mean Dice.

    The simulator runs on the truth upsampled (nearest) to at least ``SIM_SIDE``
    pixels, so its integer radii can be tuned finely. Coarse Dice falls as the
    strength grows, so a bisection over ``STRENGTHS`` finds the strength whose
    cohort mean Dice is closest to ``target``; the same strength serves every slide.
    """
    from protorefine.synthetic import simulate_coarse

    tried: dict[float, tuple[float, list]] = {}

    def attempt(strength: float) -> float:
        if strength not in tried:
            results = []
            for k, s in enumerate(slides):
                f = max(1, math.ceil(SIM_SIDE / max(s.truth.shape)))
                fine = np.kron(s.truth, np.ones((f, f), bool))
                ann = simulate_coarse(
                    fine, s.eval_downsample / f, strength=strength, seed=seed * 1000 + k
                )
                cm = fit_mask(_raster(ann, s.image.shape[:2], s.eval_downsample), s.truth.shape)
                results.append((ann, cm, dice(cm, s.truth, s.tissue)))
            tried[strength] = (float(np.mean([r[2] for r in results])), results)
        return tried[strength][0]

    lo, hi = 0, len(STRENGTHS) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(STRENGTHS[mid]) > target:
            lo = mid
        else:
            hi = mid
    for i in (lo, hi):
        attempt(STRENGTHS[i])
    strength = min(tried, key=lambda st: abs(tried[st][0] - target))
    mean, results = tried[strength]
    for s, (ann, cm, _) in zip(slides, results, strict=True):
        s.coarse, s.coarse_mask = ann, cm
    return {
        "coarse_strength": strength,
        "coarse_dice": round(mean, 4),
        "strengths_tried": {str(st): round(v[0], 4) for st, v in sorted(tried.items())},
    }


# ---------------------------------------------------------------- builders


def build_canvas_cohort(
    folder: Path,
    *,
    n_slides: int,
    squares: int,
    size: int,
    patch_size: int,
    seed: int,
    offset: int | None = None,
    fraction: float = 0.4,
) -> tuple[list[BenchSlide], dict]:
    """Canvas slides built from pure squares of the tiles in ``folder`` (each slide its own tiles).

    The canvas is shifted ``offset`` pixels (default half a square) against the
    squares; the truth is kept at the largest downsample that resolves both the
    square borders and the patch grid.
    """
    pairs = _tile_pairs(folder)
    tiles = [_read_tile(i, m) for _, i, m in pairs]
    fracs = [float(m.mean()) for _, m in tiles]
    groups = _assign_tiles(fracs, n_slides)
    rng = np.random.default_rng(seed)
    canvas = squares * size
    canvas -= canvas % patch_size
    off = size // 2 if offset is None else int(offset)
    ds = math.gcd(math.gcd(size, off), patch_size)
    slides, borrowed = [], {}
    for k, group in enumerate(groups):
        pools: dict[int, list[np.ndarray]] = {0: [], 1: []}
        for t in group:
            for c, lst in cut_squares(*tiles[t], size).items():
                pools[c].extend(lst)
        for c in (0, 1):
            if len(pools[c]) < 8:  # too few of a class in this slide's own tiles: borrow
                others = [t for t in range(len(tiles)) if t not in group]
                for t in others:
                    pools[c].extend(cut_squares(*tiles[t], size)[c])
                borrowed[f"slide{k}"] = (
                    f"{'tumour' if c else 'normal'} squares from other slides' tiles"
                )
        tmap = tumour_map((squares + 1, squares + 1), rng, fraction=fraction)
        img = render_canvas(tmap, pools, size, (canvas, canvas), rng, off)
        truth = truth_at(tmap, size, (canvas, canvas), ds, off)
        slides.append(
            BenchSlide(
                name=f"{folder.name}-canvas{k}",
                image=img,
                truth=truth,
                tissue=np.ones_like(truth),
                eval_downsample=ds,
                sources=[pairs[t][0] for t in group],
            )
        )
    notes = {
        "tiles": len(tiles),
        "canvas_px": canvas,
        "square_px": size,
        "offset_px": off,
        "eval_downsample": ds,
        "tiles_per_slide": {s.name: len(s.sources) for s in slides},
        "borrowed": borrowed,
    }
    return slides, notes


def build_tiles_cohort(
    folder: Path, *, ds: int = 8, min_frac: float = 0.05
) -> tuple[list[BenchSlide], dict]:
    """The tiles themselves as small slides: only tiles with both tumour and normal tissue."""
    slides = []
    skipped = []
    for stem, i, m in _tile_pairs(folder):
        im, mask = _read_tile(i, m)
        frac = float(mask.mean())
        if not min_frac <= frac <= 1.0 - min_frac:
            skipped.append(stem)
            continue
        h, w = mask.shape
        truth = (
            mask[: h - h % ds, : w - w % ds].reshape(h // ds, ds, w // ds, ds).mean(axis=(1, 3))
            >= 0.5
        )
        slides.append(
            BenchSlide(
                name=f"tile-{stem}",
                image=im,
                truth=truth,
                tissue=np.ones_like(truth),
                eval_downsample=ds,
                sources=[stem],
            )
        )
    return slides, {"tiles": len(slides), "skipped_one_class": skipped, "eval_downsample": ds}


def build_kather_cohort(
    folder: Path, *, n_slides: int, squares: int, seed: int, fraction: float = 0.4
) -> tuple[list[BenchSlide], dict]:
    """Canvases of whole Kather colorectal tiles (150 px, about 0.5 µm/px): tumour epithelium
    where the tumour map says tumour, a tile of any of the other seven classes elsewhere
    (stroma, lymphocytes, debris, mucosa, fat, glass); a third organ with a multi-class
    normal side. The tiles are split between slides so no slide reuses another's."""
    import csv

    from skimage.io import imread

    rows = list(csv.DictReader((folder / "labels.csv").open()))
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[Path]] = {0: [], 1: []}
    for r in rows:
        by_class[1 if r["class_code"] == "01_TUMOR" else 0].append(folder / r["file"])
    size = 150
    slides = []
    for k in range(n_slides):
        pools = {
            c: [imread(f)[:size, :size, :3].astype(np.uint8) for f in paths[k::n_slides]]
            for c, paths in by_class.items()
        }
        tmap = tumour_map((squares + 1, squares + 1), rng, fraction=fraction)
        canvas = squares * size
        img = render_canvas(tmap, pools, size, (canvas, canvas), rng, size // 2)
        ds = 25  # a divisor of the square and of its half-square offset
        truth = truth_at(tmap, size, (canvas, canvas), ds, size // 2)
        slides.append(
            BenchSlide(
                name=f"kather-canvas{k}",
                image=img,
                truth=truth,
                tissue=np.ones_like(truth),
                eval_downsample=ds,
                sources=[f"{len(pools[1])} tumour, {len(pools[0])} other tiles"],
            )
        )
    return slides, {"square_px": size, "eval_downsample": 25, "classes": "tumour vs 7 others"}


def build_synthetic_cohort(
    *, n_slides: int, shape: tuple[int, int], seed: int
) -> tuple[list[BenchSlide], dict]:
    """Slides from the project's synthetic generator, materialised in memory."""
    from protorefine.synthetic import synthetic_slide

    slides = []
    for k in range(n_slides):
        slide, truth, tds = synthetic_slide(shape, seed=seed + k)
        img = np.asarray(slide.levels[0])
        tds = int(round(tds))
        truth = fit_mask(np.asarray(truth, bool), (shape[0] // tds, shape[1] // tds))
        small = img[: truth.shape[0] * tds, : truth.shape[1] * tds]
        small = small.reshape(truth.shape[0], tds, truth.shape[1], tds, 3).mean(axis=(1, 3))
        tissue = small.min(axis=-1) < 215  # not background: any channel clearly below white
        slides.append(
            BenchSlide(
                name=f"synthetic{k}",
                image=img,
                truth=truth,
                tissue=tissue,
                eval_downsample=tds,
                sources=[],
            )
        )
    return slides, {
        "shape": list(shape),
        "eval_downsample": slides[0].eval_downsample if slides else None,
    }


# ---------------------------------------------------------------- registry + cache

SPECS: dict[str, dict] = {
    "synthetic": {"n_slides": 3, "shape": (1536, 1536), "patch_size": 64, "seed": 11},
    "camelyon-canvas": {
        "n_slides": 4,
        "squares": 14,
        "size": 128,
        "offset": 48,
        "patch_size": 64,
        "seed": 21,
    },
    "ocdc-canvas": {
        "n_slides": 4,
        "squares": 14,
        "size": 128,
        "offset": 48,
        "patch_size": 64,
        "seed": 31,
    },
    "camelyon-tiles": {"ds": 8, "patch_size": 64, "seed": 41},
    "ocdc-tiles": {"ds": 8, "patch_size": 64, "seed": 51},
    "kather-canvas": {"n_slides": 4, "squares": 12, "patch_size": 64, "seed": 61},
}
QUICK = {
    "synthetic": {"n_slides": 2, "shape": (1024, 1024)},
    "camelyon-canvas": {"n_slides": 3, "squares": 8},
    "ocdc-canvas": {"n_slides": 3, "squares": 8},
    "camelyon-tiles": {"limit": 16},
    "ocdc-tiles": {"limit": 4},
    "kather-canvas": {"n_slides": 2, "squares": 8},
}


def spec_for(name: str, quick: bool = False) -> dict:
    """The construction parameters of a cohort (smaller with ``quick``)."""
    spec = dict(SPECS[name])
    if quick:
        spec.update(QUICK[name])
    return spec


def cohort_key(name: str, spec: dict) -> str:
    """A short hash naming a cohort's construction, used for cache file names."""
    blob = json.dumps({"name": name, "spec": spec, "v": BUILD_VERSION}, sort_keys=True, default=str)
    return f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def data_folder(name: str, data: Path = DATA) -> Path | None:
    """The real-data folder a cohort needs (None for synthetic)."""
    return {
        "camelyon-canvas": data / "camelyon-tiles",
        "ocdc-canvas": data / "ocdc",
        "camelyon-tiles": data / "camelyon-tiles",
        "ocdc-tiles": data / "ocdc",
        "kather-canvas": data / "kather-crc",
    }.get(name)


def build_cohort(
    name: str,
    *,
    quick: bool = False,
    data: Path = DATA,
    cache: Path = CACHE,
    log: Callable[[str], None] = print,
) -> Cohort | None:
    """Build (or load from cache) one cohort; None with a message when its data folder is absent."""
    if name not in SPECS:
        raise ValueError(f"unknown cohort {name!r}; known: {', '.join(COHORTS)}")
    spec = spec_for(name, quick)
    folder = data_folder(name, data)
    if folder is not None and not folder.is_dir():
        log(f"skip cohort {name}: data folder {folder} is absent")
        return None
    key = cohort_key(name, spec)
    path = cache / "cohorts" / f"{key}.npz"
    if path.exists():
        return _load(path, name, key, spec["patch_size"])
    log(f"building cohort {name} ...")
    if name == "synthetic":
        slides, notes = build_synthetic_cohort(
            n_slides=spec["n_slides"], shape=tuple(spec["shape"]), seed=spec["seed"]
        )
    elif name == "kather-canvas":
        slides, notes = build_kather_cohort(
            folder, n_slides=spec["n_slides"], squares=spec["squares"], seed=spec["seed"]
        )
    elif name in ("camelyon-tiles", "ocdc-tiles"):
        slides, notes = build_tiles_cohort(folder, ds=spec["ds"])
        if "limit" in spec:
            slides = slides[: spec["limit"]]
    else:
        slides, notes = build_canvas_cohort(
            folder,
            n_slides=spec["n_slides"],
            squares=spec["squares"],
            size=spec["size"],
            patch_size=spec["patch_size"],
            seed=spec["seed"],
            offset=spec.get("offset"),
        )
    notes.update(add_coarse(slides, spec["seed"]))
    notes["slides"] = len(slides)
    cohort = Cohort(name=name, slides=slides, patch_size=spec["patch_size"], key=key, notes=notes)
    _save(path, cohort)
    return cohort


def _save(path: Path, cohort: Cohort) -> None:
    import pickle

    from protorefine._atomic import atomic_path

    arrays = {}
    for k, s in enumerate(cohort.slides):
        for f in ("image", "truth", "tissue", "coarse_mask"):
            arrays[f"{k}_{f}"] = getattr(s, f)
    meta = {
        "notes": cohort.notes,
        "slides": [
            {"name": s.name, "eval_downsample": s.eval_downsample, "sources": s.sources}
            for s in cohort.slides
        ],
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    arrays["coarse"] = np.frombuffer(pickle.dumps([s.coarse for s in cohort.slides]), np.uint8)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)


def _load(path: Path, name: str, key: str, patch_size: int) -> Cohort:
    import pickle

    z = np.load(path)
    meta = json.loads(z["meta"].tobytes().decode())
    coarse = pickle.loads(z["coarse"].tobytes())  # our own cache file, written by _save
    slides = []
    for k, m in enumerate(meta["slides"]):
        slides.append(
            BenchSlide(
                name=m["name"],
                image=z[f"{k}_image"],
                truth=z[f"{k}_truth"],
                tissue=z[f"{k}_tissue"],
                eval_downsample=m["eval_downsample"],
                coarse=coarse[k],
                coarse_mask=z[f"{k}_coarse_mask"],
                sources=m["sources"],
            )
        )
    return Cohort(name=name, slides=slides, patch_size=patch_size, key=key, notes=meta["notes"])
