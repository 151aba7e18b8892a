#!/usr/bin/env bash
# Installs everything the demo and the tests need, into this checkout: FFmpeg (Debian), the Python
# virtual environment .venv with the project and its dependencies (the deploy hook's included, for
# its tests), and, for the tests only (WITH_NODE=1, as `make test` sets it), the Node tools of package.json
# (Azurite, the Bicep grammar) into node_modules and Chromium (Debian; the status page's test renders it headless).
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
STAMP=.venv/.installed-$(cat pyproject.toml requirements.txt requirements-dev.txt deploy/requirements.txt | sha256sum | cut -c1-16)
NODE_STAMP=node_modules/.installed-$(sha256sum < package-lock.json | cut -c1-16)

if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
    echo "setup: installing FFmpeg (Debian package)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi

if [ ! -f "$STAMP" ]; then
    echo "setup: creating .venv and installing Python packages (first run takes a few minutes)"
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q "$TORCH_SPEC"
    .venv/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt -r deploy/requirements.txt
    .venv/bin/python -m pip install -q -e .   # with pyproject's dependencies (engines, style models); torch is already there
    rm -f .venv/.installed-*
    touch "$STAMP"
fi

# The project's own modules are compiled on import, as an editable install leaves them; where
# PYTHONDONTWRITEBYTECODE is set (as on this project's CI machines) every process would compile them
# again, about 40 ms of each worker's and each run's start. Compiled once here, as pip does for an
# installed package (only what changed is compiled again).
.venv/bin/python -m compileall -q gpu_job shared runner function_app >/dev/null

if [ "${WITH_NODE:-0}" = 1 ] && [ ! -f "$NODE_STAMP" ]; then
    echo "setup: installing Azurite and the Bicep grammar (npm)"
    npm ci --no-audit --no-fund --loglevel=error >/dev/null
    touch "$NODE_STAMP"
fi

if [ "${WITH_NODE:-0}" = 1 ] && ! command -v chromium >/dev/null; then
    echo "setup: installing Chromium (Debian package, for the status page's test)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
