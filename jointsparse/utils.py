"""Small shared helpers: atomic file writes, and removing what killed writers left behind.

A crash (or a killed job) half-way through writing must never leave a truncated checkpoint or
result file under the final name, so every writer goes through a temporary file in the *same*
directory (``os.replace`` is only atomic within one file system) and then renames it.

The temporary file is named ``.NAME.PID.XXXXXXXX.tmp`` (``NAME`` the final file's name, ``PID``
the writer's process id). A writer that is killed cannot remove it; the PID lets a later run tell
such debris (its process is gone) from a file another process is still writing
(:func:`remove_stale_temp_files`).
"""

from __future__ import annotations

import errno
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "OutputWriteError",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "process_is_running",
    "remove_stale_temp_files",
]

# mkstemp's random part: 8 characters of [a-z0-9_].
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>[0-9]+)\.[a-z0-9_]{8}\.tmp$")


class OutputWriteError(OSError):
    """The file system refused to write an output (disk full, read-only, no permission, ...).

    ``filename`` is the output the caller asked for, never the hidden temporary file, and
    ``strerror`` the system's reason; ``str()`` is one line saying both.
    """

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"

    @classmethod
    def naming(cls, error: OSError, path: PathLike) -> "OutputWriteError":
        """``error`` (from any write) restated for the output ``path`` the user knows."""
        code = error.errno if error.errno is not None else errno.EIO
        return cls(code, error.strerror or os.strerror(code), str(path))


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it; restored at once
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    Parent directories are created. Returns the final path. Readers see either the old file or
    the complete new one, never a partial write. A file-system failure (``ENOSPC``, ``EROFS``,
    ``EACCES``, ...) removes the temp file and raises :class:`OutputWriteError` naming ``path``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes needs bytes, got {type(data).__name__}")
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent)
    except OSError as error:
        raise OutputWriteError.naming(error, target) from None
    try:
        try:
            remaining = memoryview(data).cast("B")
            while remaining:
                remaining = remaining[os.write(fd, remaining):]
            os.fsync(fd)
            # mkstemp creates 0600; give the file the mode an ordinary open() would (umask applies).
            os.fchmod(fd, 0o666 & ~_umask())
        finally:
            os.close(fd)
        os.replace(tmp_name, target)
    except BaseException as error:
        # Leave no stray temp file behind if the write or the rename failed.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        if isinstance(error, OSError):
            raise OutputWriteError.naming(error, target) from None
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


def process_is_running(pid: int) -> bool:
    """Whether a process with this id exists on this machine (signal 0 probes without sending)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OverflowError:  # not a valid pid at all
        return False
    return True


def remove_stale_temp_files(directory: PathLike, names: Optional[Iterable[str]] = None) -> list[Path]:
    """Remove the temp files of :func:`atomic_write_bytes` in ``directory`` whose writer is gone.

    Only ``.NAME.PID.XXXXXXXX.tmp`` files are considered, and only those for the final ``names``
    given (every name when None), and only when no process ``PID`` runs on this machine: a file
    another live process is writing is never touched. Returns the removed paths.
    """
    wanted = None if names is None else set(names)
    removed = []
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or (wanted is not None and match["name"] not in wanted):
            continue
        if process_is_running(int(match["pid"])) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:  # another run cleaned it first
            continue
        removed.append(Path(entry.path))
    return removed
