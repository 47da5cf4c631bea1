"""Shared fixtures: the real H&E data folder (skipped when absent) and temp folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PROTOREFINE_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The ``../shared/data`` folder of real slides and tiles; skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def slides_dir(shared_data: Path) -> Path:
    """Folder with the real SVS slides."""
    d = shared_data / "slides"
    if not d.is_dir():
        pytest.skip(f"{d} is absent")
    return d
