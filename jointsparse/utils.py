"""Small shared helpers: atomic file writes.

A crash (or a killed job) half-way through writing must never leave a truncated checkpoint or
result file under the final name, so every writer goes through a temporary file in the *same*
directory (``os.replace`` is only atomic within one file system) and then renames it.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_torch_save"]


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; restored at once
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    Parent directories are created. Returns the final path. Readers see either the old file or
    the complete new one, never a partial write.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes needs bytes, got {type(data).__name__}")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600; give the file the mode an ordinary open() would (umask applies).
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, target)
    except BaseException:
        # Leave no stray temp file behind if the write or the rename failed.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return target


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """``atomic_write_bytes`` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_torch_save(obj: Any, path: PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically.

    Serializes to memory first so the file on disk is only ever complete. Keep ``obj`` to
    tensors, dicts, lists, tuples, ints, floats, bools, strings and None so that it loads with
    ``torch.load(path, weights_only=True)``.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())
