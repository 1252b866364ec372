"""Test-session set-up shared by every test file."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Tests that start subprocesses (the CLI, the experiment scripts) must import the checkout under
# test, not whichever copy an editable install points at (another worktree or clone).
REPO_ROOT = str(Path(__file__).resolve().parents[1])
if sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)
os.environ["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
