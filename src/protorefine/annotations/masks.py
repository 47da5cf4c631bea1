"""Binary mask images (PNG / TIFF / JPEG) in and out, at any downsample of the slide.

A mask of a ``(H, W)`` slide at downsample ``d`` has shape ``(ceil(H/d), ceil(W/d))``;
pixel ``(r, c)`` covers level-0 ``[c d, (c+1) d) x [r d, (r+1) d)``. Masks we write
carry their downsample and slide shape (PNG text chunk / TIFF description), so they
read back in place without being told; other masks take their downsample from the
slide shape, or are assumed to be at level 0.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import box

from protorefine._atomic import atomic_path
from protorefine.annotations._files import check_input_file
from protorefine.annotations.classes import polygonal
from protorefine.annotations.model import TUMOR, AnnotationSet
from protorefine.annotations.raster import mask_shape, rasterize, vectorize
from protorefine.annotations.validate import clean
from protorefine.errors import ProtorefineError

MASK_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg")
#: Largest mask written (pixels): one byte each while it is built, twice over.
MAX_MASK_PIXELS = 2**30
_META_KEY = "protorefine"
#: More distinct colours (grey levels aside) than this in an RGB image: a slide or a photo,
#: not a mask (0/255 or 0/1, a few label colours, or one colour's anti-aliased shades).
MAX_MASK_COLOURS = 256


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _refuse_declared_size(path: Path, shape: Sequence[int]) -> None:
    """Refuse a mask whose header declares more than :data:`MAX_MASK_PIXELS`, before any
    pixel is decoded (a few MB of PNG can declare gigapixels: a decompression bomb)."""
    h, w = int(shape[0]), int(shape[1])
    if h * w > MAX_MASK_PIXELS:
        raise ProtorefineError(
            f"{path}: a {w}x{h} mask ({h * w / 1e9:.1f} Gpixel) is larger than protorefine reads "
            f"({MAX_MASK_PIXELS / 1e9:.1f} Gpixel); save it at a downsample of the slide "
            "(e.g. 1/16 of its size)"
        )


def _load_pixels(path: Path) -> tuple[np.ndarray, dict]:
    """The image array of a mask file and the metadata protorefine wrote into it."""
    check_input_file(path)
    meta: dict = {}
    suffix = _suffix(path)
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                desc = getattr(page, "description", "") or ""
                if tif.series:
                    _refuse_declared_size(path, tif.series[0].levels[0].shape[:2])
                if tif.series and len(tif.series[0].levels) > 1:  # a pyramid: look small first
                    refuse_slide_colours(tif.series[0].levels[-1].asarray(), path)
                arr = tif.series[0].levels[0].asarray() if tif.series else page.asarray()
            if desc.startswith("{") and _META_KEY in desc:
                meta = json.loads(desc).get(_META_KEY, {})
        else:
            from PIL import Image

            old = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None  # masks of whole slides are legitimately large
            try:
                with Image.open(path) as im:
                    _refuse_declared_size(path, (im.size[1], im.size[0]))  # before decoding
                    text = getattr(im, "text", {}) or {}
                    if _META_KEY in text:
                        meta = json.loads(text[_META_KEY])
                    if im.mode in ("P", "PA"):
                        arr = np.asarray(im.convert("RGBA" if "transparency" in im.info else "RGB"))
                    else:
                        arr = np.asarray(im)
            finally:
                Image.MAX_IMAGE_PIXELS = old
    except ProtorefineError:
        raise
    except Exception as e:  # any decoder failure is the user's file, not our bug
        raise ProtorefineError(f"{path}: cannot read as a {suffix[1:].upper()} mask ({e})") from e
    return arr, meta


def mask_file_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
    """The ``(H, W)`` a mask file declares in its header, read without decoding its pixels
    (so a decompression bomb is sized before it is opened)."""
    p = check_input_file(path)
    try:
        if _suffix(p) in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                shape = tif.series[0].levels[0].shape if tif.series else tif.pages[0].shape
                axes = tif.series[0].axes if tif.series else "YX"
            if "Y" in axes and "X" in axes:
                return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
            return int(shape[0]), int(shape[1])
        from PIL import Image

        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None  # only the header is read here
        try:
            with Image.open(p) as im:
                w, h = im.size
        finally:
            Image.MAX_IMAGE_PIXELS = old
        return int(h), int(w)
    except ProtorefineError:
        raise
    except Exception as e:  # any decoder failure is the user's file, not our bug
        raise ProtorefineError(f"{p}: cannot read as a {_suffix(p)[1:].upper()} mask ({e})") from e


def refuse_slide_colours(arr: np.ndarray, path: str | os.PathLike[str]) -> None:
    """One-line error when ``arr`` is an RGB(A) image in the colours of a slide or photo
    (more than :data:`MAX_MASK_COLOURS` distinct non-grey colours in a sample of it), where
    a mask is expected: read as a mask, its every non-black pixel would count as tumour."""
    a = np.asarray(arr)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        return
    step = max(1, max(a.shape[0], a.shape[1]) // 512)
    sample = a[::step, ::step, :3].reshape(-1, 3)
    colour = sample[sample.max(axis=1) != sample.min(axis=1)]
    n = len(np.unique(colour, axis=0))
    if n > MAX_MASK_COLOURS:
        raise ProtorefineError(
            f"{path}: an RGB image with {n} or more colours, not a mask (a 0/255 or 0/1 image, "
            "or a few label colours); is it a slide?"
        )


def _binary(arr: np.ndarray, path: Path, lossy: bool) -> tuple[np.ndarray, list[str]]:
    """A 2-D bool mask from any grey / RGB(A) / label image: non-zero (or > half on JPEG).
    An RGB image in a slide's colours is refused (:func:`refuse_slide_colours`; not for
    JPEG, whose artefacts blend colours)."""
    a = np.asarray(arr)
    notes: list[str] = []
    if not lossy:
        refuse_slide_colours(a, path)
    if a.ndim == 3 and a.shape[-1] in (2, 4):
        a = a[..., : a.shape[-1] - 1]  # drop alpha
    if a.ndim == 3 and a.shape[-1] in (1, 3):
        a = a.max(axis=-1)
    a = np.squeeze(a)
    if a.ndim != 2:
        raise ProtorefineError(f"{path}: mask image has shape {arr.shape}, expected a 2-D image")
    if a.dtype == bool:
        return a, notes
    if lossy:
        top = 255 if a.dtype == np.uint8 else float(a.max())
        return a > top / 2, notes
    values = np.unique(a[:: max(1, a.shape[0] // 512), :: max(1, a.shape[1] // 512)])
    if len(values) > 2:
        notes.append(
            f"{path}: mask has {len(values)} values; every non-zero pixel counts as tumour"
        )
    return a != 0, notes


def infer_downsample(
    mask_hw: Sequence[int], slide_shape: Sequence[int], source: str = "mask"
) -> tuple[float, str | None]:
    """The downsample at which a ``mask_hw`` mask covers a ``slide_shape`` slide, and a note.

    Exact when ``mask_hw == (ceil(H/d), ceil(W/d))`` for some ``d`` (whole numbers and
    powers of two preferred); rounding down is accepted with a note. A mask whose aspect
    ratio does not match the slide's is an error.
    """
    h, w = int(mask_hw[0]), int(mask_hw[1])
    sh, sw = int(slide_shape[0]), int(slide_shape[1])
    if h <= 0 or w <= 0:
        raise ProtorefineError(f"{source}: mask is empty ({w}x{h} pixels)")

    def interval(n: int, size: int, lo_round: int, hi_round: int) -> tuple[float, float]:
        lo = size / (n + lo_round)
        hi = size / (n - hi_round) if n - hi_round > 0 else math.inf
        return lo, hi

    for lo_r, hi_r, note in ((0, 1, None), (1, 1, "rounded")):
        ylo, yhi = interval(h, sh, lo_r, hi_r)
        xlo, xhi = interval(w, sw, lo_r, hi_r)
        lo, hi = max(ylo, xlo), min(yhi, xhi)
        if lo < hi or math.isclose(lo, hi):
            nice = [2.0**k for k in range(0, 12)] + [float(k) for k in range(1, 1025)]
            fits = [d for d in nice if lo <= d < hi or math.isclose(d, lo)]
            d = min(fits) if fits else lo
            if note:
                return d, (
                    f"{source}: {w}x{h} mask is about downsample {d:g} of the {sw}x{sh} slide "
                    "(sizes rounded down, not up)"
                )
            return d, None
    raise ProtorefineError(
        f"{source}: {w}x{h} mask does not match the {sw}x{sh} slide's aspect ratio "
        f"(downsample {sw / w:.3g} in x but {sh / h:.3g} in y); wrong slide or a cropped mask?"
    )


def _read(p: Path, slide_shape: Sequence[int] | None) -> tuple[np.ndarray, float, list[str], dict]:
    arr, meta = _load_pixels(p)
    mask, notes = _binary(arr, p, lossy=_suffix(p) in (".jpg", ".jpeg"))
    stored = meta.get("downsample")
    if slide_shape is not None:
        d, note = infer_downsample(mask.shape, slide_shape, str(p))
        if stored and mask_shape(slide_shape, float(stored)) == mask.shape:
            d, note = float(stored), None
        notes.append(
            note
            or f"{p}: {mask.shape[1]}x{mask.shape[0]} mask read at downsample {d:g} "
            f"of the {int(slide_shape[1])}x{int(slide_shape[0])} slide"
        )
    elif stored:
        d = float(stored)
    else:
        d = 1.0
        notes.append(f"{p}: no slide shape given, mask taken as level 0 (downsample 1)")
    return mask, d, notes, meta


def read_mask_array(
    path: str | os.PathLike[str], slide_shape: Sequence[int] | None = None
) -> tuple[np.ndarray, float, list[str]]:
    """A mask file as ``(bool mask, downsample, notes)``; see :func:`read_mask`."""
    mask, d, notes, _ = _read(check_input_file(path), slide_shape)
    return mask, d, notes


def read_mask(
    path: str | os.PathLike[str],
    slide_shape: Sequence[int] | None = None,
    *,
    allow_empty: bool = False,
) -> AnnotationSet:
    """A binary mask image as Tumor polygons in level-0 pixels (exact pixel outlines).

    With ``slide_shape`` ``(H, W)`` the downsample is inferred from the mask size
    (and the mask must have the slide's aspect ratio); without it, the downsample
    stored by :func:`write_mask` is used, else 1. How it was read is in ``warnings``.
    An all-zero mask is an error unless ``allow_empty``.
    """
    p = check_input_file(path)
    mask, d, notes, meta = _read(p, slide_shape)
    if not mask.any() and not allow_empty:
        raise ProtorefineError(f"{p}: mask has no tumour pixels (empty annotation)")
    annset = vectorize(mask, d, classification=TUMOR)
    if slide_shape is None and "slide_shape" in meta:
        slide_shape = meta["slide_shape"]
    if slide_shape is not None:
        # the last mask row / column may reach past the slide edge by design: trim silently
        frame = box(0, 0, int(slide_shape[1]), int(slide_shape[0]))
        for a in annset:
            if not frame.contains(a.geometry):
                a.geometry = polygonal(shapely.intersection(a.geometry, frame))
        annset.annotations = [a for a in annset if not a.geometry.is_empty]
    annset.warnings = notes
    return clean(annset, str(p), slide_shape=slide_shape, allow_empty=allow_empty)


def check_mask_size(shape: Sequence[int], downsample: float, source: str = "mask") -> None:
    """Refuse a mask of a ``shape`` slide at ``downsample`` that would not fit in memory,
    naming the smallest power-of-two downsample that fits."""
    h, w = mask_shape(shape, downsample)
    if h * w <= MAX_MASK_PIXELS:
        return
    fits = next(2**k for k in range(0, 16) if math.prod(mask_shape(shape, 2**k)) <= MAX_MASK_PIXELS)
    raise ProtorefineError(
        f"{source}: a mask at downsample {downsample:g} of the {int(shape[1])}x{int(shape[0])} "
        f"slide would be {w}x{h} pixels ({h * w / 1e9:.1f} Gpixel); use downsample {fits} or more"
    )


def write_mask(
    annset_or_mask: AnnotationSet | np.ndarray,
    path: str | os.PathLike[str],
    shape: Sequence[int],
    downsample: float = 1.0,
    *,
    classes: Sequence[str] | None = None,
    mpp: float | None = None,
) -> Path:
    """Write a 0/255 mask (PNG or TIFF) of the tumour region at ``downsample``, atomically.

    ``shape`` is the slide's level-0 ``(H, W)``; the file gets ``(ceil(H/d), ceil(W/d))``
    pixels and records ``downsample`` and ``shape`` so :func:`read_mask` puts it back in
    place. A bool array of that size is written as is. With the slide's ``mpp`` the file
    also carries its pixel size (``mpp * downsample``) where other tools look: TIFF
    XResolution / YResolution in pixels per centimetre (tiffslide's and QuPath's mpp), PNG
    pHYs. TIFFs are always tiled, as slide readers expect.
    """
    p = Path(path)
    suffix = _suffix(p)
    if suffix in (".jpg", ".jpeg"):
        raise ProtorefineError(f"{p}: JPEG would blur the mask edges; write .png or .tif")
    if suffix not in (".png", ".tif", ".tiff"):
        raise ProtorefineError(f"{p}: unsupported mask extension {suffix!r} (use .png or .tif)")
    want = mask_shape(shape, downsample)
    if isinstance(annset_or_mask, AnnotationSet):
        check_mask_size(shape, downsample, str(p))
        mask = rasterize(annset_or_mask, shape, downsample, classes=classes)
    else:
        mask = np.asarray(annset_or_mask).astype(bool)
        if mask.shape != want:
            raise ProtorefineError(
                f"{p}: mask of shape {mask.shape} does not fit a {tuple(shape)} slide at "
                f"downsample {downsample:g} (expected {want})"
            )
    img = mask.astype(np.uint8) * 255
    meta: dict = {"downsample": float(downsample), "slide_shape": [int(shape[0]), int(shape[1])]}
    um = None
    if mpp:
        um = float(mpp) * float(downsample)  # the mask's own pixel size
        meta["slide_mpp"] = float(mpp)
    with atomic_path(p) as tmp:
        if suffix == ".png":
            from PIL import Image, PngImagePlugin

            info = PngImagePlugin.PngInfo()
            info.add_text(_META_KEY, json.dumps(meta))
            extra = {"dpi": (25400.0 / um, 25400.0 / um)} if um else {}
            Image.fromarray(img).save(tmp, format="PNG", pnginfo=info, optimize=False, **extra)
        else:
            import tifffile

            # tiles of 16..256 pixels (a multiple of 16, as TIFF asks), whatever the size
            tile = tuple(min(256, -(-max(n, 1) // 16) * 16) for n in img.shape)
            tifffile.imwrite(
                tmp,
                img,
                compression="zlib",
                tile=tile,
                description=json.dumps({_META_KEY: meta}),
                metadata=None,
                resolution=(1e4 / um, 1e4 / um) if um else None,
                resolutionunit="CENTIMETER" if um else None,
            )
    return p


def mask_metadata(path: str | os.PathLike[str]) -> dict | None:
    """What :func:`write_mask` recorded in a mask file (``downsample``, ``slide_shape``,
    ``slide_mpp``), or None when the file is not a mask protorefine wrote. Reads only the
    file's header."""
    p = Path(path)
    try:
        if _suffix(p) in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(p) as tif:
                desc = tif.pages[0].description or ""  # type: ignore[union-attr]
            meta = json.loads(desc).get(_META_KEY) if desc.startswith("{") else None
        elif _suffix(p) == ".png":
            from PIL import Image

            with Image.open(p) as im:
                text = getattr(im, "text", {}).get(_META_KEY)
            meta = json.loads(text) if text else None
        else:
            return None
    except Exception:  # noqa: BLE001 - any unreadable file is simply not our mask
        return None
    if not isinstance(meta, dict) or "downsample" not in meta or "slide_shape" not in meta:
        return None
    return meta
