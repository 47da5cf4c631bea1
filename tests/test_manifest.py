"""The npe2 manifest: every command it names imports, and the package ships the root file."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import yaml

import protorefine

REPO = Path(__file__).resolve().parents[1]
ROOT_MANIFEST = REPO / "napari.yaml"
PACKAGE_MANIFEST = Path(protorefine.__file__).with_name("napari.yaml")


def _commands() -> list[dict]:
    manifest = yaml.safe_load(ROOT_MANIFEST.read_text(encoding="utf-8"))
    return manifest["contributions"]["commands"]


def test_manifest_names_commands() -> None:
    ids = [c["id"] for c in _commands()]
    assert ids and len(ids) == len(set(ids))
    assert all(i.startswith("protorefine.") for i in ids)


@pytest.mark.parametrize("command", _commands(), ids=lambda c: c["id"])
def test_every_command_imports_and_is_callable(command: dict) -> None:
    module_name, _, attr = command["python_name"].partition(":")
    assert module_name and attr, f"{command['id']}: python_name must be 'module:attr'"
    module = importlib.import_module(module_name)
    assert hasattr(module, attr), f"{command['id']}: {module_name} has no {attr!r}"
    assert callable(getattr(module, attr)), f"{command['id']}: {command['python_name']}"


def test_package_manifest_is_a_link_to_the_root_one() -> None:
    assert PACKAGE_MANIFEST.is_symlink(), f"{PACKAGE_MANIFEST} should be a symlink"
    assert PACKAGE_MANIFEST.resolve() == ROOT_MANIFEST.resolve()


def test_npe2_reads_the_manifest() -> None:
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(PACKAGE_MANIFEST)
    assert manifest.name == "protorefine"
    assert {c.id for c in manifest.contributions.commands or []} == {c["id"] for c in _commands()}
