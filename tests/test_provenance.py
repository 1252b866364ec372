"""The code stamp on results: which uncommitted edits mark a run's code as modified."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from jointsparse import provenance

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for path in ("jointsparse/a.py", "experiments/run.py", "experiments/recipes/r.toml", "experiments/results/table.md", "README.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "init")
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    return tmp_path


def test_clean_checkout_is_the_bare_commit(repo: Path) -> None:
    version = provenance.code_version()
    assert version != "unknown" and not version.endswith("+modified")


@pytest.mark.parametrize("edited", ["jointsparse/a.py", "experiments/run.py", "experiments/recipes/r.toml"])
def test_edits_to_running_code_mark_it_modified(repo: Path, edited: str) -> None:
    (repo / edited).write_text("y\n")
    assert provenance.code_version().endswith("+modified")


@pytest.mark.parametrize("edited", ["experiments/results/table.md", "README.md"])
def test_results_and_docs_do_not(repo: Path, edited: str) -> None:
    # A report regenerated in place rewrites experiments/results; the next run's code is unchanged.
    (repo / edited).write_text("y\n")
    assert not provenance.code_version().endswith("+modified")


def test_outside_a_repository_is_unknown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(provenance, "ROOT", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert provenance.code_version() == "unknown"
