#!/usr/bin/env bash
# Install jointsparse and its test tools into the current Python environment.
# torch is pinned to the CPU wheel available offline; an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev,plots,sr]"
