"""Atomic writers in jointsparse.utils."""

from __future__ import annotations

import os

import pytest
import torch

from jointsparse.utils import atomic_torch_save, atomic_write_bytes, atomic_write_text


def test_atomic_write_bytes_creates_parents_and_replaces(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    atomic_write_bytes(target, b"first")
    assert target.read_bytes() == b"first"
    atomic_write_bytes(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert sorted(os.listdir(target.parent)) == ["file.bin"]  # no temp files left


def test_atomic_write_text_roundtrip(tmp_path):
    target = tmp_path / "t.txt"
    atomic_write_text(target, "héllo\n")
    assert target.read_text(encoding="utf-8") == "héllo\n"


def test_atomic_write_rejects_non_bytes_and_keeps_old_file(tmp_path):
    target = tmp_path / "keep.bin"
    target.write_bytes(b"old")
    with pytest.raises(TypeError, match="needs bytes"):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["keep.bin"]


def test_atomic_torch_save_loads_weights_only(tmp_path):
    obj = {"w": torch.arange(6.0).reshape(2, 3), "step": 7, "name": "x", "items": [1.5, None]}
    path = atomic_torch_save(obj, tmp_path / "ckpt.pt")
    back = torch.load(path, weights_only=True)
    assert torch.equal(back["w"], obj["w"]) and back["step"] == 7 and back["items"] == [1.5, None]


def test_atomic_write_gives_the_umask_mode_not_mkstemps_0600(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        path = atomic_write_bytes(tmp_path / "shared.bin", b"x")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_a_refused_write_names_the_output_not_the_temp_file_and_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from jointsparse.utils import OutputWriteError

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OutputWriteError) as caught:
        atomic_write_bytes(tmp_path / "out.bin", b"data")
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "out.bin")
    assert str(caught.value) == f"cannot write {tmp_path / 'out.bin'}: No space left on device"
    assert os.listdir(tmp_path) == []


def test_temp_files_of_processes_that_are_gone_are_removed(tmp_path):
    import subprocess
    import sys

    from jointsparse.utils import remove_stale_temp_files

    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    gone = tmp_path / f".out.bin.{process.pid}.abcdefgh.tmp"
    live = tmp_path / f".out.bin.{os.getpid()}.abcdefgh.tmp"
    for path in (gone, live):
        path.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path, ["out.bin"]) == [gone]
    assert sorted(os.listdir(tmp_path)) == [live.name]
