#!/usr/bin/env bash
# Set up, then run the whole pipeline end to end on the embedded digits data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
"$PYTHON" -m jointsparse.cli demo --out "${1:-demo-out}"
