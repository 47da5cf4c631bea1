"""The bad-input matrix: over a hundred bad or unusual inputs to ``refine``, ``export``,
``evaluate``, ``convert`` and the readers, each run in-process.

Every case checks what a user sees: the exit status (non-zero for bad input, zero where
the input is merely unusual), no traceback, the error as one line naming the file or
value, and every file the user had before the run unchanged (hashed before and after).
``docs/reliability.md`` has the summary table this file gives.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from protorefine.cli import main
from protorefine.errors import ProtorefineError
from refine_synth import write_slide_case

#: Settings that keep a real run small (the CLI tests' flags, no pixel stage).
FAST = ["--patch-size", "64", "--encoder", "colour-texture", "--device", "cpu"]
TINY = [*FAST, "--no-pixel-stage"]
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


@dataclass
class Env:
    """One case's folders: ``user`` holds the user's files (hashed), ``out`` the outputs."""

    user: Path
    out: Path
    slide: Path
    coarse: Path
    gt: Path
    project: Path | None

    def file(self, name: str, data: bytes | str) -> Path:
        """A user file ``name`` (folders made) holding ``data``."""
        path = self.user / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, str):
            path.write_text(data)
        else:
            path.write_bytes(data)
        return path

    def folder(self, name: str) -> Path:
        """A user folder ``name`` holding a file of the user's (it must survive)."""
        path = self.user / name
        path.mkdir(parents=True, exist_ok=True)
        (path / "keep.txt").write_text("the user's work")
        return path

    def refine(self, slide: Path | str | None = None, coarse: Path | str | None = None, *extra):
        """``refine SLIDE --coarse COARSE --out OUT`` with the tiny settings and ``extra``."""
        slide = self.slide if slide is None else slide
        coarse = self.coarse if coarse is None else coarse
        return [
            "refine",
            str(slide),
            "--coarse",
            str(coarse),
            "--out",
            str(self.out),
            *TINY,
            *extra,
        ]

    def coarse_json(self, features: object, name: str = "s1.geojson") -> Path:
        """A coarse GeoJSON ``FeatureCollection`` of ``features`` (written as given)."""
        return self.file(name, json.dumps({"type": "FeatureCollection", "features": features}))

    def evaluate(self, *extra: str) -> list[str]:
        """``evaluate`` of the user's coarse folder against the truth folder, and ``extra``."""
        return [
            "evaluate",
            "--pred",
            str(self.coarse.parent),
            "--gt",
            str(self.gt.parent),
            "--slides",
            str(self.slide.parent),
            *extra,
        ]

    def project_copy(self) -> Path:
        """A copy of the refined project beside the user folder: a project's files are
        protorefine's own (a rerun rewrites them), the user's files are checked."""
        assert self.project is not None
        target = self.user.parent / "project"
        shutil.copytree(self.project, target)
        return target


@dataclass
class Case:
    """A bad input: ``build`` makes the files and returns the argv (or a callable for a
    reader); ``names`` must appear in the error line; ``ok`` when it should succeed."""

    id: str
    build: Callable[[Env], list[str] | Callable[[], object]]
    names: tuple[str, ...] = ()
    ok: bool = False
    slow: bool = False
    needs_project: bool = False
    not_root: bool = False
    known: str | None = None


def feature(coords, classification: str | None = "Tumor", gtype: str = "Polygon", **extra):
    """A GeoJSON feature of one geometry, classified as QuPath writes it."""
    props: dict = {"objectType": "annotation"}
    if classification is not None:
        props["classification"] = {"name": classification}
    props.update(extra)
    return {
        "type": "Feature",
        "geometry": {"type": gtype, "coordinates": coords},
        "properties": props,
    }


SQUARE = [[[100, 100], [400, 100], [400, 400], [100, 400], [100, 100]]]


def qupath(version: float, kind: str) -> dict:
    """A Tumor-classified square as QuPath ``version`` writes an object of ``kind``: 0.2 in
    the feature's ``id``, 0.3 as ``object_type``, 0.4+ as ``objectType``."""
    props: dict = {"classification": {"name": "Tumor"}}
    feat = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": SQUARE}}
    if version == 0.2:
        feat["id"] = kind
    else:
        props["object_type" if version == 0.3 else "objectType"] = kind
    return {**feat, "properties": props}


def png_header(width: int, height: int, colour: int = 2) -> bytes:
    """A PNG that declares ``width`` x ``height`` with a few bytes of pixels (a decompression
    bomb's header: the size is declared, the pixels never come)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def png_bytes(array: np.ndarray) -> bytes:
    """``array`` encoded as PNG."""
    return iio.imwrite("<bytes>", array, extension=".png")


JUNK = bytes(range(256)) * 8
XXE = (
    '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]>\n'
    '<ASAP_Annotations><Annotations><Annotation Name="&x;" PartOfGroup="Tumor">'
    '<Coordinates><Coordinate Order="0" X="1" Y="1"/></Coordinates></Annotation>'
    "</Annotations></ASAP_Annotations>"
)
BOMB = (
    '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(8))
    + ']>\n<ASAP_Annotations><Annotations><Annotation Name="&i;"/></Annotations></ASAP_Annotations>'
)


def asap(coords: list[tuple[str, str]], group: str = "Tumor") -> str:
    """ASAP XML with one polygon of ``coords`` (as text, so junk can be given)."""
    pts = "".join(f'<Coordinate Order="{i}" X="{x}" Y="{y}"/>' for i, (x, y) in enumerate(coords))
    return (
        '<?xml version="1.0"?><ASAP_Annotations><Annotations>'
        f'<Annotation Name="a" Type="Polygon" PartOfGroup="{group}"><Coordinates>{pts}'
        "</Coordinates></Annotation></Annotations><AnnotationGroups/></ASAP_Annotations>"
    )


def set_config(env: Env, key: str, value: object) -> list[str]:
    """The refined project with ``config.json``'s refine field ``key`` set to ``value``."""
    proj = env.project_copy()
    cfg = json.loads((proj / "config.json").read_text())
    cfg["refine"][key] = value
    (proj / "config.json").write_text(json.dumps(cfg))
    return env.refine(None, None, "--project", str(proj))


def damage(env: Env, pattern: str, how: str, command: str = "refine") -> list[str]:
    """The refined project with its first file matching ``pattern`` truncated, emptied or pickled."""
    proj = env.project_copy()
    target = next(iter(sorted(proj.glob(pattern))))
    data = target.read_bytes()
    if how == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        target.write_bytes(b"")
    elif how == "pickle":
        with target.open("wb") as fh:
            np.save(fh, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    else:
        target.write_bytes(JUNK)
    if command == "export":
        return ["export", str(proj), "--out", str(env.out)]
    return env.refine(None, None, "--project", str(proj))


def edit_slides(env: Env, change: Callable[[list], object]) -> list[str]:
    """The refined project with ``slides.json`` changed by ``change``."""
    proj = env.project_copy()
    slides = json.loads((proj / "slides.json").read_text())
    slides = change(slides) or slides
    (proj / "slides.json").write_text(json.dumps(slides))
    return ["export", str(proj), "--out", str(env.out)]


def _rename_id(slides: list, new: str) -> list:
    slides[0]["id"] = new
    return slides


def ev(env: Env, pred: Path, gt: Path, *extra: str) -> list[str]:
    """``evaluate --pred PRED --gt GT --slides SLIDES`` and ``extra``."""
    return [
        "evaluate",
        "--pred",
        str(pred),
        "--gt",
        str(gt),
        "--slides",
        str(env.slide.parent),
        *extra,
    ]


def option(env: Env, name: str, value: str) -> list[str]:
    return [*env.refine(), name, value]


# ------------------------------------------------------------------ the cases

CASES: list[Case] = []


def case(id: str, build, names=(), **kw) -> None:
    CASES.append(Case(id, build, tuple(names), **kw))


# --- slides given to refine (the coarse outline is good)
case("slide-missing", lambda e: e.refine(e.user / "s1.png"), ["s1.png"])
case("slide-zero-byte-png", lambda e: e.refine(e.file("s1.png", b"")), ["s1.png"])
case("slide-zero-byte-tif", lambda e: e.refine(e.file("s1.tif", b"")), ["s1.tif"])
case("slide-zero-byte-svs", lambda e: e.refine(e.file("s1.svs", b"")), ["s1.svs"])
case("slide-junk-png", lambda e: e.refine(e.file("s1.png", JUNK)), ["s1.png"])
case("slide-junk-tif", lambda e: e.refine(e.file("s1.tif", JUNK)), ["s1.tif"])
case("slide-junk-svs", lambda e: e.refine(e.file("s1.svs", JUNK)), ["s1.svs"])
case("slide-junk-jpg", lambda e: e.refine(e.file("s1.jpg", JUNK)), ["s1.jpg"])
case("slide-text-as-jpg", lambda e: e.refine(e.file("s1.jpg", "not an image\n")), ["s1.jpg"])
case(
    "slide-truncated-png",
    lambda e: e.refine(e.file("s1.png", e.slide.read_bytes()[:5000])),
    ["s1.png"],
)
case("slide-folder-named-png", lambda e: e.refine(e.folder("s1.png")), ["s1.png"])
case("slide-empty-zarr-folder", lambda e: e.refine(e.folder("s1.zarr")), ["s1.zarr"])
case(
    "slide-junk-zarr-attrs",
    lambda e: (
        e.file("s1.zarr/.zattrs", "{junk"),
        e.file("s1.zarr/.zgroup", "{junk"),
        e.refine(e.user / "s1.zarr"),
    )[-1],
    ["s1.zarr"],
)
case(
    "slide-unknown-extension",
    lambda e: e.refine(e.file("s1.txt", e.slide.read_bytes())),
    ["s1.txt"],
)
case("slide-no-extension", lambda e: e.refine(e.file("s1", e.slide.read_bytes())), ["s1"])
case(
    "slide-decompression-bomb-png",
    lambda e: e.refine(e.file("s1.png", png_header(60000, 60000))),
    ["s1.png"],
)
case(
    "slide-1x1-png",
    lambda e: e.refine(e.file("s1.png", png_bytes(np.zeros((1, 1, 3), np.uint8)))),
    ["1x1"],
)
case(
    "slide-one-row-png",
    lambda e: e.refine(e.file("s1.png", png_bytes(np.full((1, 900, 3), 120, np.uint8)))),
    ["900x1"],
)
case(
    "slide-grayscale-png",
    lambda e: e.refine(
        e.file("s1.png", png_bytes(iio.imread(e.slide).mean(axis=-1).astype(np.uint8)))
    ),
    ok=True,
    slow=True,
)
case(
    "slide-blank-png",
    lambda e: e.refine(e.file("s1.png", png_bytes(np.full((512, 512, 3), 245, np.uint8)))),
    ["s1.png", "tissue"],
)
case(
    "slide-black-png",
    lambda e: e.refine(e.file("s1.png", png_bytes(np.zeros((512, 512, 3), np.uint8)))),
    ok=True,
    slow=True,
)
case(
    "slide-16-bit-tif",
    lambda e: e.refine(
        e.file(
            "s1.tif",
            iio.imwrite("<bytes>", iio.imread(e.slide).astype(np.uint16) * 257, extension=".tif"),
        )
    ),
    ok=True,
    slow=True,
)
case(
    "slide-rgba-png",
    lambda e: e.refine(
        e.file(
            "s1.png",
            png_bytes(np.dstack([iio.imread(e.slide), np.full((512, 512), 255, np.uint8)])),
        )
    ),
    ok=True,
    slow=True,
)
case("slide-png-named-tif", lambda e: e.refine(e.file("s1.tif", e.slide.read_bytes())), ["s1.tif"])
case(
    "slide-unreadable",
    lambda e: (e.file("s1.png", e.slide.read_bytes()).chmod(0), e.refine(e.user / "s1.png"))[-1],
    ["s1.png"],
    not_root=True,
)
case(
    "slide-two-same-stem",
    lambda e: [
        "refine",
        str(e.slide),
        str(e.file("other/s1.png", e.slide.read_bytes())),
        "--coarse",
        str(e.coarse),
        "--out",
        str(e.out),
        *TINY,
    ],
    ["s1"],
)
case(
    "slide-without-coarse",
    lambda e: e.refine(e.file("s2.png", e.slide.read_bytes())),
    ["s2.png", "'s2'"],
)

# --- coarse outlines: GeoJSON
case("coarse-missing", lambda e: e.refine(None, e.user / "s1.geojson"), ["s1.geojson"])
case("coarse-zero-byte", lambda e: e.refine(None, e.file("s1.geojson", b"")), ["s1.geojson"])
case("coarse-junk-geojson", lambda e: e.refine(None, e.file("s1.geojson", JUNK)), ["s1.geojson"])
case(
    "coarse-truncated-geojson",
    lambda e: e.refine(None, e.file("s1.geojson", e.coarse.read_bytes()[:200])),
    ["s1.geojson"],
)
case(
    "coarse-json-list", lambda e: e.refine(None, e.file("s1.geojson", "[1, 2, 3]")), ["s1.geojson"]
)
case("coarse-json-number", lambda e: e.refine(None, e.file("s1.geojson", "42")), ["s1.geojson"])
case("coarse-json-null", lambda e: e.refine(None, e.file("s1.geojson", "null")), ["s1.geojson"])
case(
    "coarse-json-string", lambda e: e.refine(None, e.file("s1.geojson", '"Tumor"')), ["s1.geojson"]
)
case(
    "coarse-deeply-nested",
    lambda e: e.refine(None, e.file("s1.geojson", "[" * 100000 + "]" * 100000)),
    ["s1.geojson"],
)
case(
    "coarse-utf16",
    lambda e: e.refine(None, e.file("s1.geojson", e.coarse.read_text().encode("utf-16"))),
    ["s1.geojson"],
)
case("coarse-empty-collection", lambda e: e.refine(None, e.coarse_json([])), ["s1.geojson"])
case("coarse-features-not-list", lambda e: e.refine(None, e.coarse_json({"a": 1})), ["s1.geojson"])
case("coarse-feature-is-string", lambda e: e.refine(None, e.coarse_json(["Tumor"])), ["s1.geojson"])
case(
    "coarse-null-geometry",
    lambda e: e.refine(
        None, e.coarse_json([{"type": "Feature", "geometry": None, "properties": {}}])
    ),
    ["s1.geojson"],
)
case(
    "coarse-nan-coordinates",
    lambda e: e.refine(
        None,
        e.file(
            "s1.geojson",
            json.dumps(
                {
                    "type": "FeatureCollection",
                    "features": [
                        feature([[[100, 100], [float("nan"), 100], [400, 400], [100, 100]]])
                    ],
                }
            ),
        ),
    ),
    ["s1.geojson"],
)
case(
    "coarse-infinity-coordinates",
    lambda e: e.refine(
        None,
        e.file(
            "s1.geojson",
            json.dumps(
                {
                    "type": "FeatureCollection",
                    "features": [
                        feature([[[100, 100], [float("inf"), 100], [400, 400], [100, 100]]])
                    ],
                }
            ),
        ),
    ),
    ["s1.geojson"],
)
case(
    "coarse-huge-coordinates",
    lambda e: e.refine(
        None,
        e.coarse_json(
            [feature([[[1e300, 1e300], [2e300, 1e300], [2e300, 2e300], [1e300, 1e300]]])]
        ),
    ),
    ["s1.geojson"],
)
case(
    "coarse-string-coordinates",
    lambda e: e.refine(
        None, e.coarse_json([feature([[["a", "b"], ["c", "d"], ["e", "f"], ["a", "b"]]])])
    ),
    ["s1.geojson"],
)
case(
    "coarse-null-coordinates",
    lambda e: e.refine(None, e.coarse_json([feature(None)])),
    ["s1.geojson"],
)
case(
    "coarse-two-point-polygon",
    lambda e: e.refine(None, e.coarse_json([feature([[[100, 100], [400, 400]]])])),
    ["s1.geojson"],
)
case(
    "coarse-point-only",
    lambda e: e.refine(None, e.coarse_json([feature([100, 100], gtype="Point")])),
    ["s1.geojson"],
)
case(
    "coarse-unknown-geometry-type",
    lambda e: e.refine(None, e.coarse_json([feature(SQUARE, gtype="Blob")])),
    ["s1.geojson"],
)
case(
    "coarse-outside-slide",
    lambda e: e.refine(
        None, e.coarse_json([feature([[[5000, 5000], [6000, 5000], [6000, 6000], [5000, 5000]]])])
    ),
    ["s1.geojson"],
)
case(
    "coarse-negative-outside-slide",
    lambda e: e.refine(
        None, e.coarse_json([feature([[[-900, -900], [-600, -900], [-600, -600], [-900, -900]]])])
    ),
    ["s1.geojson"],
)
case(
    "coarse-exclusion-only",
    lambda e: e.refine(None, e.coarse_json([feature(SQUARE, "Exclusion")])),
    ["'s1'", "no tumour region"],
)
case(
    "coarse-stroma-only",
    lambda e: e.refine(None, e.coarse_json([feature(SQUARE, "Stroma")])),
    ok=True,
    slow=True,
)
case(
    "coarse-covers-all-tissue",
    lambda e: e.refine(
        None,
        e.coarse_json([feature([[[-10, -10], [600, -10], [600, 600], [-10, 600], [-10, -10]]])]),
    ),
    ["covers all tissue"],
)
case(
    "coarse-qupath02-detections",
    lambda e: e.refine(None, e.coarse_json([qupath(0.2, "PathDetectionObject")])),
    ["s1.geojson"],
)
case(
    "coarse-qupath02-cells",
    lambda e: e.refine(None, e.coarse_json([qupath(0.2, "PathCellObject")])),
    ["s1.geojson"],
)
case(
    "coarse-qupath03-detections",
    lambda e: e.refine(None, e.coarse_json([qupath(0.3, "detection")])),
    ["s1.geojson"],
)
case(
    "coarse-qupath03-cells",
    lambda e: e.refine(None, e.coarse_json([qupath(0.3, "cell")])),
    ["s1.geojson"],
)
case(
    "coarse-qupath04-detections",
    lambda e: e.refine(None, e.coarse_json([qupath(0.4, "detection")])),
    ["s1.geojson"],
)
case(
    "coarse-classification-not-object",
    lambda e: e.refine(
        None, e.coarse_json([{**feature(SQUARE, None), "properties": {"classification": [1, 2]}}])
    ),
    ok=True,
    slow=True,
)
case(
    "coarse-folder-named-geojson", lambda e: e.refine(None, e.folder("s1.geojson")), ["s1.geojson"]
)
case(
    "coarse-unknown-extension",
    lambda e: e.refine(None, e.file("s1.txt", e.coarse.read_bytes())),
    ["s1.txt"],
)
case("coarse-no-extension", lambda e: e.refine(None, e.file("s1", e.coarse.read_bytes())), ["s1"])
case(
    "coarse-two-same-stem",
    lambda e: [
        "refine",
        str(e.slide),
        "--coarse",
        str(e.coarse),
        str(e.file("s1.xml", asap([("1", "1")]))),
        "--out",
        str(e.out),
        *TINY,
    ],
    ["s1"],
)
case(
    "coarse-unreadable",
    lambda e: (
        e.file("s1.geojson", e.coarse.read_bytes()).chmod(0),
        e.refine(None, e.user / "s1.geojson"),
    )[-1],
    ["s1.geojson"],
    not_root=True,
)

# --- coarse outlines: ASAP XML
case("xml-zero-byte", lambda e: e.refine(None, e.file("s1.xml", b"")), ["s1.xml"])
case("xml-junk", lambda e: e.refine(None, e.file("s1.xml", JUNK)), ["s1.xml"])
case(
    "xml-geojson-inside",
    lambda e: e.refine(None, e.file("s1.xml", e.coarse.read_bytes())),
    ["s1.xml"],
)
case(
    "xml-truncated",
    lambda e: e.refine(
        None, e.file("s1.xml", asap([("1", "1"), ("300", "1"), ("300", "300")])[:120])
    ),
    ["s1.xml"],
)
case(
    "xml-html",
    lambda e: e.refine(None, e.file("s1.xml", "<html><body>hello</body></html>")),
    ["s1.xml"],
)
case("xml-xxe", lambda e: e.refine(None, e.file("s1.xml", XXE)), ["s1.xml"])
case("xml-entity-bomb", lambda e: e.refine(None, e.file("s1.xml", BOMB)), ["s1.xml"])
case(
    "xml-no-annotations",
    lambda e: e.refine(
        None, e.file("s1.xml", "<ASAP_Annotations><Annotations/></ASAP_Annotations>")
    ),
    ["s1.xml"],
)
case(
    "xml-nan-coordinates",
    lambda e: e.refine(
        None, e.file("s1.xml", asap([("100", "100"), ("nan", "100"), ("400", "400")]))
    ),
    ["s1.xml"],
)
case(
    "xml-inf-coordinates",
    lambda e: e.refine(
        None, e.file("s1.xml", asap([("100", "100"), ("inf", "100"), ("400", "400")]))
    ),
    ["s1.xml"],
)
case(
    "xml-text-coordinates",
    lambda e: e.refine(None, e.file("s1.xml", asap([("a", "b"), ("c", "d"), ("e", "f")]))),
    ["s1.xml"],
)
case(
    "xml-one-point", lambda e: e.refine(None, e.file("s1.xml", asap([("100", "100")]))), ["s1.xml"]
)
case(
    "xml-exclusion-only",
    lambda e: e.refine(
        None,
        e.file("s1.xml", asap([("100", "100"), ("400", "100"), ("400", "400")], group="Exclusion")),
    ),
    ["'s1'", "no tumour region"],
)

# --- coarse outlines: masks
case("mask-zero-byte-png", lambda e: e.refine(None, e.file("s1.png", b"")), ["s1.png"])
case("mask-junk-png", lambda e: e.refine(None, e.file("s1.png", JUNK)), ["s1.png"])
case("mask-junk-tif", lambda e: e.refine(None, e.file("s1.tif", JUNK)), ["s1.tif"])
case(
    "mask-decompression-bomb-png",
    lambda e: e.refine(None, e.file("s1.png", png_header(40000, 40000, colour=0))),
    ["s1.png"],
)
case(
    "mask-all-zero",
    lambda e: e.refine(None, e.file("s1.png", png_bytes(np.zeros((64, 64), np.uint8)))),
    ["s1.png"],
)
case(
    "mask-all-tumour",
    lambda e: e.refine(None, e.file("s1.png", png_bytes(np.full((64, 64), 255, np.uint8)))),
    ["'s1'", "covers all tissue"],
)
case(
    "mask-wrong-aspect",
    lambda e: e.refine(None, e.file("s1.png", png_bytes(np.full((64, 17), 255, np.uint8)))),
    ["s1.png"],
)
case(
    "mask-is-the-slide",
    lambda e: e.refine(None, e.file("s1.png", e.slide.read_bytes())),
    ["s1.png"],
)

# --- refine options
for name, value, named in [
    ("--mpp", "inf", "inf"),
    ("--mpp", "nan", "nan"),
    ("--mpp", "0", "0"),
    ("--mpp", "-1", "-1"),
    ("--mpp", "abc", "abc"),
    ("--mpp", "1e400", "1e400"),
    ("--seed", str(2**70), str(2**70)),
    ("--seed", "-1", "-1"),
    ("--seed", "1.5", "1.5"),
    ("--seed", "abc", "abc"),
    ("--threshold", "0", "threshold"),
    ("--threshold", "1", "threshold"),
    ("--threshold", "-0.5", "threshold"),
    ("--threshold", "2", "threshold"),
    ("--threshold", "nan", "threshold"),
    ("--threshold", "inf", "threshold"),
    ("--threshold", "abc", "abc"),
    ("--patch-size", "0", "patch"),
    ("--patch-size", "-64", "patch"),
    ("--patch-size", "100000", "patch"),
    ("--patch-size", "abc", "abc"),
    ("--stride", "0", "stride"),
    ("--stride", "-8", "stride"),
    ("--level", "99", "level"),
    ("--level", "-1", "level"),
    ("--slide-mpp", "0", "0"),
    ("--slide-mpp", "nan", "nan"),
    ("--slide-mpp", "inf", "inf"),
    ("--slide-mpp", "-0.5", "-0.5"),
    ("--encoder", "nope", "nope"),
    ("--encoder", "timm:", "timm:"),
    ("--encoder", "colour-texture+", "colour-texture+"),
    ("--colour-prototypes", "-1", "colour"),
    ("--mask-downsample", "0", "0"),
    ("--mask-downsample", "-4", "-4"),
    ("--mask-downsample", "nan", "nan"),
    ("--device", "tpu", "tpu"),
]:
    case(f"option{name}={value}", lambda e, n=name, v=value: option(e, n, v), [named])
case("option--stride=128", lambda e: option(e, "--stride", "128"), ok=True, slow=True)
case(
    "option--mask-downsample=inf",
    lambda e: option(e, "--mask-downsample", "inf"),
    ["inf"],
)
case("encoder-missing-file", lambda e: option(e, "--encoder", str(e.user / "enc.pt")), ["enc.pt"])
case("encoder-junk-file", lambda e: option(e, "--encoder", str(e.file("enc.pt", JUNK))), ["enc.pt"])
case(
    "encoder-zero-byte-file",
    lambda e: option(e, "--encoder", str(e.file("enc.pt", b""))),
    ["enc.pt"],
)
case("encoder-folder", lambda e: option(e, "--encoder", str(e.folder("enc.pt"))), ["enc.pt"])
case(
    "project-is-a-file",
    lambda e: option(e, "--project", str(e.file("notes.txt", "mine"))),
    ["notes.txt"],
)
case(
    "project-is-a-users-folder",
    lambda e: option(e, "--project", str(e.folder("thesis"))),
    ["thesis"],
)
case(
    "project-under-a-file",
    lambda e: option(e, "--project", str(e.file("notes.txt", "mine") / "p")),
    ["notes.txt"],
)
case(
    "out-is-a-file",
    lambda e: [
        "refine",
        str(e.slide),
        "--coarse",
        str(e.coarse),
        "--out",
        str(e.file("out.txt", "mine")),
        *TINY,
    ],
    ["out.txt"],
)
case(
    "out-under-a-file",
    lambda e: [
        "refine",
        str(e.slide),
        "--coarse",
        str(e.coarse),
        "--out",
        str(e.file("out.txt", "mine") / "o"),
        *TINY,
    ],
    ["out.txt"],
)
case(
    "out-holds-the-coarse-file",
    lambda e: [
        "refine",
        str(e.slide),
        "--coarse",
        str(e.coarse),
        "--out",
        str(e.coarse.parent),
        *TINY,
    ],
    ["s1.geojson"],
)
case(
    "out-holds-the-truth",
    lambda e: ["refine", str(e.slide), "--coarse", str(e.coarse), "--out", str(e.gt.parent), *TINY],
    ["s1.geojson"],
)
case(
    "out-folder-named-report",
    lambda e: (
        e.folder("o/report.json"),
        ["refine", str(e.slide), "--coarse", str(e.coarse), "--out", str(e.user / "o"), *TINY],
    )[-1],
    ["report.json"],
)
case(
    "out-folder-named-outline",
    lambda e: (
        e.folder("o/s1.geojson"),
        ["refine", str(e.slide), "--coarse", str(e.coarse), "--out", str(e.user / "o"), *TINY],
    )[-1],
    ["s1.geojson"],
)
case(
    "out-folder-named-measurements",
    lambda e: (
        e.folder("o/tumour_measurements.csv"),
        ["refine", str(e.slide), "--coarse", str(e.coarse), "--out", str(e.user / "o"), *TINY],
    )[-1],
    ["tumour_measurements.csv"],
)

# --- a project's own files damaged or edited (refine resumes it, export reads it)
P = {"needs_project": True}
case(
    "config-not-json",
    lambda e: damage(e, "config.json", "junk"),
    ["config.json"],
    **P,
)
case(
    "config-zero-byte",
    lambda e: damage(e, "config.json", "empty"),
    ["project", "damaged project files"],
    **P,
)
case("config-patch-size-string", lambda e: set_config(e, "patch_size", "big"), ["config.json"], **P)
case("config-patch-size-float", lambda e: set_config(e, "patch_size", 64.5), ["config.json"], **P)
case("config-seed-list", lambda e: set_config(e, "seed", [1, 2]), ["config.json"], **P)
case("config-threshold-string", lambda e: set_config(e, "threshold", "high"), ["config.json"], **P)
case("config-threshold-one", lambda e: set_config(e, "threshold", 1.0), ["threshold"], **P)
case(
    "config-epochs-negative",
    lambda e: set_config(e, "epochs", -3),
    ["config.json"],
    slow=True,
    **P,
)
case(
    "config-unknown-field",
    lambda e: set_config(e, "colour_of_the_sky", "blue"),
    ["config.json", "colour_of_the_sky"],
    **P,
)
case(
    "slides-json-junk",
    lambda e: damage(e, "slides.json", "junk", "export"),
    ["slides.json"],
    **P,
)
case(
    "slides-json-zero-byte",
    lambda e: damage(e, "slides.json", "empty", "export"),
    ["project", "damaged project files"],
    **P,
)
case(
    "slides-json-id-escapes",
    lambda e: edit_slides(e, lambda s: _rename_id(s, "../../escaped")),
    ["../../escaped"],
    **P,
)
case(
    "slides-json-id-absolute",
    lambda e: edit_slides(e, lambda s: _rename_id(s, "/tmp/abs")),
    ["/tmp/abs"],
    **P,
)
case(
    "slides-json-id-with-slash",
    lambda e: edit_slides(e, lambda s: _rename_id(s, "a/b")),
    ["a/b"],
    **P,
)
case(
    "slides-json-id-number",
    lambda e: edit_slides(e, lambda s: _rename_id(s, 7)),
    ["slides.json"],
    **P,
)
case(
    "slides-json-not-a-list",
    lambda e: edit_slides(e, lambda s: {"s1": s}),
    ["project", "damaged project files"],
    **P,
)
case(
    "truncated-prob-npz-export",
    lambda e: damage(e, "stages/output/prob.npz", "truncate", "export"),
    ["prob.npz"],
    **P,
)
case(
    "truncated-grid-npz-export",
    lambda e: damage(e, "stages/grid/s1.npz", "truncate", "export"),
    ["s1.npz"],
    **P,
)
case(
    "truncated-prototypes-npz-refine",
    lambda e: damage(e, "stages/prototypes/*.npz", "truncate"),
    [".npz"],
    ok=True,
    slow=True,
    **P,
)
case(
    "zero-byte-features-npy",
    lambda e: damage(e, "features/*/s1.npy", "empty"),
    ["s1.npy"],
    ok=True,
    slow=True,
    **P,
)
case(
    "pickled-features-npy",
    lambda e: damage(e, "features/*/s1.npy", "pickle"),
    ["s1.npy"],
    ok=True,
    slow=True,
    **P,
)
case(
    "junk-model-pt",
    lambda e: (
        damage(e, "stages/classifier/model.pt", "junk"),
        (e.user.parent / "project/stages/output/done.json").unlink(),
    )[0],
    ["model.pt"],
    **P,
)
case(
    "junk-refined-geojson-export",
    lambda e: damage(e, "stages/output/*.geojson", "junk", "export"),
    [".geojson"],
    **P,
)
case(
    "coarse-in-project-junk-export",
    lambda e: damage(e, "coarse/s1.geojson", "junk", "export"),
    ["s1.geojson"],
    **P,
)
case(
    "ui-state-junk-export",
    lambda e: (
        p := e.project_copy(),
        (p / "ui_state.json").write_bytes(JUNK),
        ["export", str(p), "--out", str(e.out)],
    )[-1],
    ok=True,
    **P,
)

# --- export
case(
    "export-missing-project",
    lambda e: ["export", str(e.user / "nope"), "--out", str(e.out)],
    ["nope"],
)
case(
    "export-project-is-a-file",
    lambda e: ["export", str(e.file("p.txt", "mine")), "--out", str(e.out)],
    ["p.txt"],
)
case(
    "export-users-folder",
    lambda e: ["export", str(e.folder("thesis")), "--out", str(e.out)],
    ["thesis"],
)
case(
    "export-out-is-a-file",
    lambda e: ["export", str(e.project_copy()), "--out", str(e.file("o.txt", "mine"))],
    ["o.txt"],
    **P,
)
case(
    "export-mask-downsample-zero",
    lambda e: ["export", str(e.project_copy()), "--out", str(e.out), "--mask-downsample", "0"],
    ["0"],
    **P,
)
case(
    "export-folder-named-outline",
    lambda e: ["export", str(e.project_copy()), "--out", str(e.folder("o/s1.geojson").parent)],
    ["s1.geojson"],
    **P,
)
case(
    "export-over-the-truth",
    lambda e: (
        e.file("o/s1.geojson", e.gt.read_bytes()),
        ["export", str(e.project_copy()), "--out", str(e.user / "o")],
    )[-1],
    ["s1.geojson"],
    **P,
)
case(
    "export-reviewed-only-none",
    lambda e: ["export", str(e.project_copy()), "--out", str(e.out), "--reviewed-only"],
    ["reviewed"],
    **P,
)

# --- evaluate
case("evaluate-pred-missing", lambda e: ev(e, e.user / "nope", e.gt.parent), ["nope"])
case("evaluate-gt-missing", lambda e: ev(e, e.coarse.parent, e.user / "nope"), ["nope"])
case("evaluate-pred-is-a-file", lambda e: ev(e, e.coarse, e.gt.parent), ["s1.geojson"])
case(
    "evaluate-gt-empty-folder",
    lambda e: ev(e, e.coarse.parent, e.folder("empty")),
    ["ground truth: none"],
)
case(
    "evaluate-gt-junk",
    lambda e: ev(e, e.coarse.parent, e.file("g/s1.geojson", JUNK).parent),
    ["s1.geojson"],
)
case(
    "evaluate-gt-nan",
    lambda e: ev(
        e,
        e.coarse.parent,
        e.file(
            "g/s1.geojson",
            json.dumps(
                {
                    "type": "FeatureCollection",
                    "features": [feature([[[1, 1], [float("nan"), 1], [9, 9], [1, 1]]])],
                }
            ),
        ).parent,
    ),
    ["s1.geojson"],
)
case(
    "evaluate-pred-junk",
    lambda e: ev(e, e.file("p/s1.geojson", JUNK).parent, e.gt.parent),
    ["s1.geojson"],
)
case(
    "evaluate-pred-zero-byte-png",
    lambda e: ev(e, e.file("p/s1.png", b"").parent, e.gt.parent),
    ["s1.png"],
)
case(
    "evaluate-gt-bomb-png",
    lambda e: ev(e, e.coarse.parent, e.file("g/s1.png", png_header(40000, 40000, colour=0)).parent),
    ["s1.png"],
)
case(
    "evaluate-gt-slide-tif",
    lambda e: ev(
        e,
        e.coarse.parent,
        e.file("g/s1.tif", iio.imwrite("<bytes>", iio.imread(e.slide), extension=".tif")).parent,
    ),
    ["s1.tif"],
)
case(
    "evaluate-gt-bomb-png-without-slides",
    lambda e: [
        "evaluate",
        "--pred",
        str(e.coarse.parent),
        "--gt",
        str(e.file("g/s1.png", png_header(40000, 40000, colour=0)).parent),
    ],
    ["s1.png"],
)
case(
    "evaluate-json-is-a-folder",
    lambda e: e.evaluate("--json", str(e.folder("results"))),
    ["results"],
)
case(
    "evaluate-json-under-a-file",
    lambda e: e.evaluate("--json", str(e.file("r.txt", "mine") / "r.json")),
    ["r.txt"],
)
case("evaluate-slides-missing", lambda e: e.evaluate("--slides", str(e.user / "nope")), ["nope"])
case("evaluate-coarse-missing", lambda e: e.evaluate("--coarse", str(e.user / "nope")), ["nope"])
case(
    "evaluate-no-matching-stems",
    lambda e: ev(e, e.file("p/zz.geojson", e.coarse.read_bytes()).parent, e.gt.parent),
    ["s1"],
)
case("evaluate-good", lambda e: e.evaluate("--json", str(e.out / "r.json")), ok=True)

# --- convert
case(
    "convert-missing",
    lambda e: ["convert", str(e.user / "nope.tif"), "--out", str(e.out)],
    ["nope.tif"],
)
case(
    "convert-junk-tif",
    lambda e: ["convert", str(e.file("s.tif", JUNK)), "--out", str(e.out)],
    ["s.tif"],
)
case(
    "convert-zero-byte-svs",
    lambda e: ["convert", str(e.file("s.svs", b"")), "--out", str(e.out)],
    ["s.svs"],
)
case(
    "convert-folder", lambda e: ["convert", str(e.folder("s.tif")), "--out", str(e.out)], ["s.tif"]
)
case(
    "convert-bomb-png",
    lambda e: ["convert", str(e.file("s.png", png_header(60000, 60000))), "--out", str(e.out)],
    ["s.png"],
)
case(
    "convert-tile-zero",
    lambda e: ["convert", str(e.slide), "--out", str(e.out), "--tile", "0"],
    ["tile"],
)
case(
    "convert-tile-negative",
    lambda e: ["convert", str(e.slide), "--out", str(e.out), "--tile", "-5"],
    ["tile"],
)
case(
    "convert-tile-text",
    lambda e: ["convert", str(e.slide), "--out", str(e.out), "--tile", "abc"],
    ["abc"],
)
case(
    "convert-out-is-a-file",
    lambda e: ["convert", str(e.slide), "--out", str(e.file("o.txt", "mine"))],
    ["o.txt"],
)
case(
    "convert-over-a-users-zarr",
    lambda e: ["convert", str(e.slide), "--out", str(e.folder("o/s1.zarr").parent)],
    ["s1.zarr"],
)
case(
    "convert-grayscale",
    lambda e: [
        "convert",
        str(e.file("g.png", png_bytes(np.full((64, 64), 120, np.uint8)))),
        "--out",
        str(e.out),
    ],
    ok=True,
)


# --- readers, called as the library's users call them
def _reader(fn_name: str, module: str, name: str, data: bytes | str | None, **kw):
    def build(e: Env):
        import importlib

        fn = getattr(importlib.import_module(module), fn_name)
        path = e.user / name if data is None else e.file(name, data)
        return lambda: fn(path, **kw)

    return build


for name, data in [
    ("r.png", b""),
    ("r.png", JUNK),
    ("r.tif", JUNK),
    ("r.svs", JUNK),
    ("r.ome.tif", JUNK),
    ("r.png", png_header(70000, 70000)),
    ("r.mrxs", JUNK),
    ("r.txt", "hello"),
    ("missing.tif", None),
]:
    case(
        f"open_slide-{name}-{'missing' if data is None else len(data)}",
        _reader("open_slide", "protorefine.slides", name, data),
        [name],
    )
for name, data in [
    ("r.geojson", b""),
    ("r.geojson", JUNK),
    ("r.json", "{}"),
    ("r.xml", XXE),
    ("r.xml", BOMB),
    ("r.png", png_header(40000, 40000, colour=0)),
    ("r.tif", b""),
    ("r.csv", "x,y\n1,2\n"),
    ("missing.geojson", None),
]:
    case(
        f"read_annotations-{name}-{'missing' if data is None else len(data)}",
        _reader("read_annotations", "protorefine.annotations", name, data),
        [name],
    )


# ------------------------------------------------------------------ the runner


def _hashes(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every readable file under ``folder`` (folders too)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        if p.is_dir():
            out[rel + "/"] = "folder"
        elif os.access(p, os.R_OK):
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = f"unreadable {p.stat().st_size}"
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict:
    return write_slide_case(tmp_path_factory.mktemp("inputs"), size=512)


@pytest.fixture(scope="module")
def refined_project(inputs, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("refined")
    args = ["refine", str(inputs["slide"]), "--coarse", str(inputs["coarse"]), "--out", str(out)]
    assert main([*args, *TINY]) == 0
    return out / "project"


#: Each case's verdict, for the summary table (``PROTOREFINE_BAD_INPUTS_TABLE=FILE``).
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def summary_table():
    """After the cases, write the summary table docs/reliability.md shows, when asked to."""
    yield
    target = os.environ.get("PROTOREFINE_BAD_INPUTS_TABLE")
    if target and RESULTS:
        Path(target).write_text(format_table(RESULTS))


def format_table(results: dict[str, dict]) -> str:
    """Cases, right answers, tracebacks and files lost per kind of input, and the known
    problems by name."""
    rows: dict[str, list[dict]] = {}
    for r in results.values():
        rows.setdefault(r["command"], []).append(r)
    lines = [
        "| inputs | cases | right answer | tracebacks | user files lost or changed |",
        "|---|---|---|---|---|",
    ]
    for name, rs in [*sorted(rows.items()), ("all", list(results.values()))]:
        lines.append(
            f"| {name} | {len(rs)} | {sum(r['right'] for r in rs)} | "
            f"{sum(r['traceback'] for r in rs)} | {sum(r['files_lost'] for r in rs)} |"
        )
    known = [(k, r["known"]) for k, r in sorted(results.items()) if r["known"]]
    if known:
        lines += ["", "Known problems (xfail, strict):", ""]
        lines += [f"- `{k}`: {why}" for k, why in known]
    return "\n".join(lines) + "\n"


def _params():
    for c in CASES:
        marks = []
        if c.slow:
            marks.append(pytest.mark.slow)
        if c.known:
            marks.append(pytest.mark.xfail(strict=True, reason=c.known))
        if c.not_root and AS_ROOT:
            marks.append(pytest.mark.skip(reason="root reads files without permission"))
        yield pytest.param(c, id=c.id, marks=marks)


@pytest.mark.parametrize("c", list(_params()))
def test_bad_input(c: Case, inputs, request, tmp_path, capsys) -> None:
    project = request.getfixturevalue("refined_project") if c.needs_project else None
    user = tmp_path / "user"
    for sub, key in (("slides", "slide"), ("coarse", "coarse"), ("gt", "gt")):
        (user / sub).mkdir(parents=True)
        shutil.copy(inputs[key], user / sub)
    env = Env(
        user,
        tmp_path / "out",
        user / "slides" / "s1.png",
        user / "coarse" / "s1.geojson",
        user / "gt" / "s1.geojson",
        project,
    )
    built = c.build(env)
    before = _hashes(user)
    capsys.readouterr()
    escaped: BaseException | None = None
    rc: int | None
    try:
        if callable(built):
            built()
            rc = 0
        else:
            rc = main(built)
    except SystemExit as exc:  # argparse's refusal: usage and one error line
        rc = exc.code if isinstance(exc.code, int) else 2
    except ProtorefineError as exc:  # a reader's refusal (the CLI prints these)
        rc = 2
        print(f"protorefine: error: {exc}", file=__import__("sys").stderr)
    except Exception as exc:  # noqa: BLE001 - what a user would see as a traceback
        escaped = exc
        rc = None
    err = capsys.readouterr().err
    for p in user.rglob("*"):  # let the cleanup read what a case made unreadable
        if not p.is_symlink():
            p.chmod(0o700 if p.is_dir() else 0o600)
    after = _hashes(user)
    lost = {k: v for k, v in before.items() if after.get(k) != v}
    errors = [line for line in err.splitlines() if "error:" in line]
    traceback = escaped is not None or "Traceback" in err
    RESULTS[c.id] = {
        "command": "readers (library)" if callable(built) else f"protorefine {built[0]}",
        "expected": "success" if c.ok else "refusal",
        "traceback": traceback,
        "files_lost": len(lost),
        "right": not traceback
        and not lost
        and (
            rc == 0
            if c.ok
            else rc not in (0, None)
            and len(errors) == 1
            and all(name in errors[0] for name in c.names)
        ),
        "known": c.known,
    }
    assert escaped is None, f"traceback: {type(escaped).__name__}: {escaped}"
    assert "Traceback" not in err
    assert not lost, f"user files changed or deleted: {sorted(lost)}"
    if c.ok:
        assert rc == 0, err
        return
    assert rc not in (0, None), f"accepted: {err}"
    assert len(errors) == 1, err
    for name in c.names:
        assert name in errors[0], f"{name!r} not named in: {errors[0]}"


def test_the_matrix_has_over_a_hundred_cases() -> None:
    assert len(CASES) >= 100
    assert len({c.id for c in CASES}) == len(CASES)
