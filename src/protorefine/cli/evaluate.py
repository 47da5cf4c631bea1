"""``protorefine evaluate``: score a folder of predictions against ground truth by stem."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from protorefine._atomic import atomic_write_text, refuse_folder
from protorefine.evaluate import evaluate_folders, format_table


def evaluate_command(args: argparse.Namespace) -> int:
    """``protorefine evaluate``: print the metrics table (and write JSON with ``--json``)."""
    if getattr(args, "json", None):
        refuse_folder(args.json)  # before the scoring, not after it
    result = evaluate_folders(
        Path(args.pred),
        Path(args.gt),
        Path(args.coarse) if getattr(args, "coarse", None) else None,
        Path(args.slides) if getattr(args, "slides", None) else None,
    )
    print(format_table(result))
    if result["missing_predictions"]:
        print(f"no prediction for: {', '.join(result['missing_predictions'])}")
    if getattr(args, "json", None):
        atomic_write_text(args.json, json.dumps(result, indent=2))
    return 0
