#!/usr/bin/env bash
# The test job: set up, lint, then the whole suite (GUI tests included; pytest-xvfb
# starts a virtual X server when there is no display).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest "$@"
