#!/usr/bin/env bash
# The test job: set up, lint, check the import layers (import-linter) and types (mypy),
# then the whole suite (GUI tests included; pytest-xvfb
# starts a virtual X server when there is no display).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/lint-imports
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
