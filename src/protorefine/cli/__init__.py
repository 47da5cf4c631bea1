"""Command line: ``protorefine convert | refine | export | evaluate | demo``.

Each subcommand parses its arguments here and runs its module in this package
(``convert``, ``refine`` for refine and export, ``evaluate``, ``demo``); user errors
(:class:`ProtorefineError`) print one line and exit 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from protorefine.cli.progress import set_quiet, tqdm_progress
from protorefine.errors import CancelledError, ProtorefineError

__all__ = ["build_parser", "main", "tqdm_progress"]

#: Pixel sizes the options accept (``protorefine.project.MPP_RANGE``, not imported: the
#: parser answers ``--help`` without loading the library).
_MPP_RANGE = (0.01, 100.0)
#: Seeds every generator the method uses accepts (scikit-learn's k-means takes 0..2**32-1).
_SEED_MAX = 2**32 - 1
#: Mask downsamples the options accept: full resolution up to a mask of a few pixels.
_DOWNSAMPLE_RANGE = (1.0, 65536.0)


def _number_in(text: str, lo: float, hi: float, says: str) -> float:
    """``text`` as a number from ``lo`` to ``hi``, or argparse's one-line error ``text: says``."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not lo <= value <= hi:  # NaN and inf fail too
        raise argparse.ArgumentTypeError(f"{text}: {says}")
    return value


def _mpp_arg(text: str) -> float:
    """A pixel size in microns within :data:`_MPP_RANGE`, or argparse's one-line error."""
    lo, hi = _MPP_RANGE
    return _number_in(
        text,
        lo,
        hi,
        f"microns per pixel must be between {lo} and {hi} (a 40x scan is about 0.25, 20x about 0.5)",
    )


def _seed_arg(text: str) -> int:
    """A seed from 0 to :data:`_SEED_MAX`, or argparse's one-line error."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= _SEED_MAX:
        raise argparse.ArgumentTypeError(
            f"{text}: the seed must be a whole number from 0 to {_SEED_MAX}"
        )
    return value


def _downsample_arg(text: str) -> float:
    """A mask downsample within :data:`_DOWNSAMPLE_RANGE`, or argparse's one-line error."""
    lo, hi = _DOWNSAMPLE_RANGE
    return _number_in(
        text,
        lo,
        hi,
        f"the mask downsample must be a number from {lo:g} (full resolution) to {hi:g}",
    )


# The subcommands import their modules when run: the library pulls in torch, and
# ``protorefine --help`` should answer at once.
def _cmd_convert(args: argparse.Namespace) -> int:
    from protorefine.cli.convert import convert_command

    return convert_command(args)


def _cmd_refine(args: argparse.Namespace) -> int:
    from protorefine.cli.refine import refine_command

    return refine_command(args)


def _cmd_export(args: argparse.Namespace) -> int:
    from protorefine.cli.refine import export_command

    return export_command(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from protorefine.cli.evaluate import evaluate_command

    return evaluate_command(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from protorefine.cli.demo import demo_command

    return demo_command(args)


def _output_options(p: argparse.ArgumentParser) -> None:
    """The optional outputs ``refine`` and ``export`` share."""
    p.add_argument(
        "--asap-xml",
        action="store_true",
        help="also write OUT/<stem>.xml: the refined outline as ASAP XML (CAMELYON's format)",
    )
    p.add_argument(
        "--mask-downsample",
        type=_downsample_arg,
        default=None,
        metavar="D",
        help="also write OUT/<stem>_mask.tif: the refined outline as a 0/255 mask at 1/D of "
        "full resolution (tiled TIFF that records D; e.g. 16), for training segmentation models",
    )
    p.add_argument(
        "--ome-zarr",
        action="store_true",
        help="also write OUT/<stem>.ome.zarr: the slide as OME-Zarr with the refined outline as NGFF labels",
    )


#: What each subcommand does, in a line (its --help's description), and how it is called.
DESCRIPTIONS = {
    "convert": "Convert slides to OME-Zarr pyramids, one OUT/<stem>.zarr per slide.",
    "refine": "Refine coarse tumour outlines: slides and coarse annotations paired by file "
    "stem; a rerun resumes.",
    "export": "Write a project's accepted outlines (napari hand edits included) to OUT "
    "without rerunning.",
    "evaluate": "Score predictions against ground truth paired by file stem: Dice, IoU, "
    "precision, recall.",
    "demo": "Open napari on a sample; without a display, refine it and write a before/after "
    "picture (coarse and refined outlines, Dice of each against the sample's truth).",
}
EXAMPLES = {
    "convert": ["protorefine convert slides/*.svs --out zarr/"],
    "refine": [
        "protorefine refine slides/*.svs --coarse coarse/*.geojson --out results/",
        "protorefine refine a.tif b.tif --coarse a.xml b.xml --out results/ --asap-xml "
        "--mask-downsample 16",
    ],
    "export": ["protorefine export results/project --out reviewed/ --reviewed-only"],
    "evaluate": [
        "protorefine evaluate --pred results/ --gt truth/ --slides slides/ --json scores.json"
    ],
    "demo": [
        "protorefine demo",
        "protorefine demo --headless --out demo/",
        "protorefine demo --headless --sample synthetic",
    ],
}


def _version() -> str:
    """The installed package's version (the source tree's when not installed)."""
    try:
        return version("protorefine")
    except PackageNotFoundError:
        from protorefine import __version__

        return __version__


def _subcommand(sub: Any, name: str, summary: str) -> argparse.ArgumentParser:
    """A subcommand with its one-line description, examples and ``--quiet``."""
    examples = "\n".join(f"  {line}" for line in EXAMPLES[name])
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=DESCRIPTIONS[name],
        epilog=f"example{'s' if len(EXAMPLES[name]) > 1 else ''}:\n{examples}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress and no notes: only errors and the closing summary",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for all subcommands."""
    parser = argparse.ArgumentParser(
        prog="protorefine",
        description="Refine coarse tumour outlines on whole-slide images.",
        epilog="'protorefine COMMAND --help' describes a command, with an example.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _subcommand(sub, "convert", "convert slides to OME-Zarr pyramids")
    p.add_argument(
        "slides", nargs="+", help="slide files (SVS, TIFF, OME-TIFF, PNG, JPEG, OME-Zarr)"
    )
    p.add_argument("--out", required=True, help="output folder; writes OUT/<stem>.zarr")
    p.add_argument("--tile", type=int, default=1024, help="chunk size in pixels (default 1024)")
    p.set_defaults(func=_cmd_convert)

    p = _subcommand(sub, "refine", "refine coarse annotations")
    p.add_argument("slides", nargs="+", help="slide files")
    p.add_argument(
        "--coarse",
        nargs="+",
        required=True,
        help="coarse annotations (GeoJSON, ASAP XML or mask), paired by stem",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--patch-size",
        type=int,
        default=None,
        help="patch size in pixels at the chosen resolution (default 64 at 0.5 µm/px: 32 µm)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="grid cell in pixels (default: the patch size); half the patch size gives a "
        "finer grid, each cell seen with context (4x the features)",
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--level", type=int, default=None, help="pyramid level to cut patches from")
    g.add_argument(
        "--mpp",
        type=_mpp_arg,
        default=None,
        help="target microns per pixel for patches (default 0.5; --level 0 for full resolution)",
    )
    p.add_argument(
        "--no-pixel-stage",
        action="store_true",
        help="stop at the patch-level outline (skip the pixel stage's dense features)",
    )
    p.add_argument(
        "--slide-mpp",
        type=float,
        default=None,
        help="microns per pixel at full resolution of slides whose files record none (PNG, "
        "JPEG, some TIFFs): measurements in microns, --mpp grids (40x is about 0.25, 20x 0.5)",
    )
    p.add_argument(
        "--encoder",
        default=None,
        help="feature encoder: a name (list in docs/user-guide.md), a TorchScript file, "
        "timm:<model>@<weights>, or names joined by '+' (one head net each, averaged); "
        "a TorchScript file runs code by design: load only files you trust",
    )
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument(
        "--project", default=None, help="project folder (default OUT/project); reused to resume"
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="tumour probability a patch needs to be inside the refined outline (above 0 and "
        "below 1, default 0.6; "
        "lower: looser, higher: tighter); a rerun with only this changed redraws the outline "
        "without retraining",
    )
    p.add_argument(
        "--colour-prototypes",
        type=int,
        default=None,
        metavar="K",
        help="colour groups per slide that let the outline follow stain boundaries inside a "
        "patch (default 32; 0: off, the outline then interpolates between patch centres)",
    )
    p.add_argument("--seed", type=_seed_arg, default=0)
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run each slide's reading and feature extraction on a dask.distributed cluster: "
        "tcp://host:port, a scheduler file, or local:N for N worker processes on this machine "
        "(workers need the project folder and slides at the same paths; docs/cluster.md)",
    )
    _output_options(p)
    p.set_defaults(func=_cmd_refine)

    p = _subcommand(
        sub,
        "export",
        "write a project's accepted outlines (with napari hand edits) without rerunning",
    )
    p.add_argument("project", help="project folder (refine's --project, or one made in napari)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--reviewed-only",
        action="store_true",
        help="only the slides whose outline is ticked as reviewed in napari (as it is now)",
    )
    _output_options(p)
    p.set_defaults(func=_cmd_export)

    p = _subcommand(
        sub, "evaluate", "Dice/IoU/precision/recall of predictions against ground truth"
    )
    p.add_argument(
        "--pred", required=True, help="folder of predictions (GeoJSON or mask PNG), by stem"
    )
    p.add_argument(
        "--gt", required=True, help="folder of ground truth (GeoJSON, ASAP XML or mask), by stem"
    )
    p.add_argument("--coarse", default=None, help="folder of coarse annotations to report beside")
    p.add_argument("--slides", default=None, help="folder of slides (for tissue masks and sizes)")
    p.add_argument("--json", default=None, help="also write the table as JSON here")
    p.set_defaults(func=_cmd_evaluate)

    p = _subcommand(
        sub, "demo", "open napari with a sample (headless: refine it, before/after picture)"
    )
    p.add_argument(
        "--screenshot",
        default=None,
        help="run the whole flow unattended and save a screenshot here",
    )
    p.add_argument(
        "--headless",
        action="store_true",
        help="do not open a window: refine the sample and write the before/after picture",
    )
    p.add_argument(
        "--sample",
        choices=["real", "synthetic"],
        default=None,
        help="real: a canvas of CAMELYON H&E tissue (the headless default); synthetic: the "
        "cartoon cohort (napari's default)",
    )
    p.add_argument(
        "--out", default=None, help="folder for the demo project (default: a new temporary folder)"
    )
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``protorefine`` console script."""
    args = build_parser().parse_args(argv)
    set_quiet(getattr(args, "quiet", False))
    try:
        return int(args.func(args) or 0)
    except CancelledError as exc:
        print(f"protorefine: cancelled: {exc}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print(
            "protorefine: interrupted; finished stages are kept and a rerun resumes",
            file=sys.stderr,
        )
        return 130
    except ProtorefineError as exc:
        print(f"protorefine: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a folder without permission: the file and why
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"protorefine: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
