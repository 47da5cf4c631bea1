#!/usr/bin/env bash
# The main job: set up, then open napari with the plugin docked and a sample cohort
# loaded. With no display it says so and runs the headless demo instead (refines the
# real H&E sample and writes the before/after picture to out/demo/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
if [ -z "${DISPLAY:-}" ] && [ -z "${WAYLAND_DISPLAY:-}" ] && [ "$(uname)" = Linux ]; then
  # the demo says in one line that there is no display and runs headless
  exec .venv/bin/protorefine demo --out "${DEMO_OUT:-out/demo}" "$@"
fi
exec .venv/bin/protorefine demo "$@"
