"""Output locks: one run per output, stale locks taken over, no lock file or temp debris left."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from jointsparse.output_lock import OutputInUseError, OutputLock, hold_outputs, lock_path

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """\
import sys
from jointsparse.output_lock import OutputLock
with OutputLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin
"""


@pytest.fixture
def other_process_holds():
    """Start a process that holds the lock on a path until the test ends; yields its PID."""
    processes = []

    def start(path: Path) -> int:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        processes.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process.pid

    yield start
    for process in processes:
        process.stdin.close()
        process.wait(timeout=30)


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_holder_is_refused_with_the_holders_pid_and_host(tmp_path, other_process_holds):
    out = tmp_path / "model.jsz"
    pid = other_process_holds(out)
    with pytest.raises(OutputInUseError) as caught:
        OutputLock(out).acquire()
    message = str(caught.value)
    assert f"PID {pid}" in message and socket.gethostname() in message and str(out) in message
    assert "\n" not in message


def test_every_spelling_of_a_path_shares_one_lock(tmp_path, other_process_holds, monkeypatch):
    (tmp_path / "sub").mkdir()
    other_process_holds(tmp_path / "model.jsz")
    monkeypatch.chdir(tmp_path / "sub")
    with pytest.raises(OutputInUseError):
        OutputLock("../sub/../model.jsz").acquire()
    assert lock_path("../model.jsz") == lock_path(tmp_path / "model.jsz") == tmp_path.resolve() / ".model.jsz.lock"


def test_a_normal_run_leaves_no_lock_file_and_the_lock_is_free_again(tmp_path):
    out = tmp_path / "model.jsz"
    with OutputLock(out):
        assert lock_path(out).is_file()
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert os.listdir(tmp_path) == []
    with OutputLock(out):  # free again
        pass


def test_the_lock_is_reentrant_within_one_process(tmp_path):
    out = tmp_path / "model.jsz"
    with OutputLock(out):
        with OutputLock(tmp_path / "." / "model.jsz"):
            pass
        assert lock_path(out).is_file(), "the inner release must not drop the outer lock"
    assert not lock_path(out).exists()


def test_a_stale_lock_of_a_killed_run_is_taken_over_with_a_note(tmp_path):
    out = tmp_path / "model.jsz"
    pid = dead_pid()
    lock_path(out).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "since": "earlier"}))
    notes: list[str] = []
    with OutputLock(out, note=notes.append):
        assert json.loads(lock_path(out).read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and f"PID {pid}" in notes[0] and "stale" in notes[0] and "gone" in notes[0]
    assert not lock_path(out).exists()


def test_hold_outputs_removes_only_the_temp_files_of_processes_that_are_gone(tmp_path, other_process_holds):
    out, work = tmp_path / "model.jsz", tmp_path / "model.jsz.work"
    work.mkdir()
    gone, alive = dead_pid(), os.getpid()
    debris = [tmp_path / f".model.jsz.{gone}.abcd1234.tmp", tmp_path / f".model.jsz.ckpt.{gone}.x_y12345.tmp",
              work / f".retrain.ckpt.{gone}.abcdefgh.tmp"]
    kept = [tmp_path / f".model.jsz.{alive}.abcd1234.tmp",  # a live writer's file
            tmp_path / f".other.pt.{gone}.abcd1234.tmp",  # not this run's output
            tmp_path / "notes.tmp", work / "retrain.ckpt"]
    for path in debris + kept:
        path.write_bytes(b"partial")
    with hold_outputs([out], work_dirs=[work], side_files=(".ckpt",)):
        pass
    assert not any(path.exists() for path in debris)
    assert all(path.exists() for path in kept)
    assert not lock_path(out).exists() and not lock_path(work).exists()


def test_a_lock_in_a_directory_that_cannot_be_written_names_the_output(tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(OSError) as caught:
            OutputLock(locked / "model.jsz").acquire()
        assert str(caught.value) == f"cannot write {locked / 'model.jsz'}: Permission denied"
    finally:
        locked.chmod(0o700)
