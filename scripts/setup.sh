#!/usr/bin/env bash
# Set up everything protorefine needs, idempotently: Debian packages for headless Qt
# (when root and missing), a virtual environment in .venv, torch (CPU build unless an
# NVIDIA GPU is present), and the project with its Qt and test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
APT_PACKAGES="xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 \
libxcb-cursor0 libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-randr0 \
libxcb-xkb1 libdbus-1-3 libfontconfig1 libglib2.0-0"

# 1. Debian packages that Qt needs (only what is missing; only when we may install).
missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: warning: missing Debian packages (install them as root): ${missing[*]}" >&2
  fi
fi

# 2. The virtual environment and the project; a stamp makes the second run instant.
stamp="$VENV/.protorefine-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import protorefine" 2>/dev/null; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" --upgrade pip >/dev/null

# torch: CUDA build when an NVIDIA GPU answers, else the CPU build (TORCH_SPEC overrides,
# TORCH_INDEX_URL points pip at another index, e.g. PyTorch's CPU or a CUDA wheel index).
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    spec=${TORCH_SPEC:-torch}
    echo "setup: NVIDIA GPU found: installing $spec (CUDA build)"
  else
    spec=${TORCH_SPEC:-torch==2.13.0}
    echo "setup: no GPU: installing $spec (CPU build)"
  fi
  if [ -n "${TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" --index-url "$TORCH_INDEX_URL" "$spec"
  else
    "${pip[@]}" "$spec"
  fi
fi

echo "setup: installing protorefine and its dependencies into $VENV"
"${pip[@]}" -e ".[qt,test]"
echo "$want" > "$stamp"
