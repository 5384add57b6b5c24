#!/usr/bin/env bash
# Create .venv (if needed) and install rvos with everything it needs, offline-friendly:
# torch 2.14.1 + torchvision 0.29.1 from pip, the rest (with the extras the tests use) from
# PyPI. Idempotent and quick when everything is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.rvos-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
  .venv/bin/python -m pip install -q -e '.[test,all]'   # all: the tensorboard, plots and serve extras
  touch "$stamp"
fi
# The web demo's browser test drives Debian's Chromium; install it when we can (root + apt).
if ! command -v chromedriver >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
    >/dev/null 2>&1 || echo "setup: could not install chromium + chromium-driver (the browser test will skip)" >&2
fi
