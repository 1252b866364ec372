"""What every results file records about how it was made: the command and the code version."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a user would retype it from the repository's root."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(argv[0], ROOT) if argv and os.path.exists(argv[0]) else (argv[0] if argv else "")
    return " ".join(shlex.quote(arg) for arg in ["python", script, *argv[1:]])


def code_version(paths: tuple[str, ...] = ("jointsparse",)) -> str:
    """The repository commit, marked ``+modified`` when ``paths`` hold uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+modified" if dirty else "")
