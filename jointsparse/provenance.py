"""What every results file records about how it was made: the machine, the command and the
code version."""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["cpu_model", "machine_summary", "machine_info", "command_line", "code_version"]

ROOT = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The processor's model name (for the machine line of every results table)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_summary() -> str:
    """One line naming the CPU, its core count and the torch build, for results headers."""
    return f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}"


def machine_info() -> dict[str, Any]:
    """CPU model, core count and torch version, for results records."""
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "device": "CPU only", "torch": torch.__version__}


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, as a user would retype it from the repository's root."""
    argv = sys.argv if argv is None else argv
    script = os.path.relpath(argv[0], ROOT) if argv and os.path.exists(argv[0]) else (argv[0] if argv else "")
    return " ".join(shlex.quote(arg) for arg in ["python", script, *argv[1:]])


#: Git pathspecs of the code an experiment runs: the package and the scripts with their recipes,
#: not the committed results, which a run rewrites (a report regenerated in place must not mark
#: the next run's code as modified).
RUNNING_CODE = ("jointsparse", "experiments", ":(exclude)experiments/results")


def code_version(paths: tuple[str, ...] = RUNNING_CODE) -> str:
    """The repository commit, marked ``+modified`` when ``paths`` (git pathspecs) hold uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+modified" if dirty else "")
