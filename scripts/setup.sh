#!/usr/bin/env bash
# Install jointsparse and its test tools: into the active virtual environment, or else into the
# project's .venv (created here with `python3 -m venv .venv`).
# torch is pinned to the CPU wheel available offline; an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
if [ ! -x "$PYTHON" ]; then
  if ! python3 -m venv .venv; then
    rm -rf .venv
    echo "setup: python3 -m venv failed; on Debian/Ubuntu install it with: sudo apt-get install python3-venv" >&2
    exit 1
  fi
  echo "setup: created .venv (activate it with: source .venv/bin/activate)"
fi
"$PYTHON" -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[dev,plots,export,sr]"
