"""One run per output: a lock on each output path (and work directory) for a run's whole length.

Two runs writing the same output would share its work directory: a fresh start would delete the
other run's checkpoints, a ``--resume`` would take over a live run's state, and the last to
finish would win. So a run first takes ``.NAME.lock`` next to each of its outputs: an
``fcntl.flock`` on that file, with the holder's PID, host and start time written inside. The
kernel drops a flock when its process dies, however it dies, so a lock file left by a killed
run holds nothing: the next run takes it over and says so. A run removes its lock files when it
ends, so a normal run leaves only its outputs. Locks are re-entrant within one process (the
command line and the library function it calls may both take the same output's lock).

Taking a lock also removes the debris of killed writers next to that output (temp files of
processes that are gone, see :func:`jointsparse.utils.remove_stale_temp_files`): the lock
guarantees no other run of ours is writing there.

Linux and other POSIX systems; ``flock`` on NFS works on Linux (it maps to POSIX locks).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

from .utils import OutputWriteError, process_is_running, remove_stale_temp_files

__all__ = ["OutputInUseError", "OutputLock", "hold_outputs", "lock_path"]

PathLike = Union[str, "os.PathLike[str]"]


class OutputInUseError(RuntimeError):
    """Another live run holds the lock on an output this run would write."""


def lock_path(path: PathLike) -> Path:
    """The lock file of an output: ``.NAME.lock`` in the output's (resolved) directory.

    The directory is resolved so that every spelling of the same output (relative, absolute,
    through a symlinked directory) shares one lock.
    """
    target = Path(os.path.abspath(path))  # also drops a trailing "/" or "/."
    return Path(os.path.realpath(target.parent)) / f".{target.name}.lock"


def _note_to_stderr(text: str) -> None:
    print(f"jointsparse: note: {text}", file=sys.stderr)


def _describe(holder: dict) -> str:
    pid, host, since = holder.get("pid"), holder.get("host"), holder.get("since")
    where = f" on {host}" if host else ""
    when = f" since {since}" if since else ""
    return f"PID {pid}{where}{when}"


def _read_holder(fd: int) -> dict:
    """The record a (previous) holder wrote into the lock file; {} if none or unreadable."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        holder = json.loads(text)
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


_held: dict[Path, "OutputLock"] = {}  # lock file -> the lock this process holds on it
_held_guard = threading.Lock()


class OutputLock:
    """An exclusive, non-blocking lock on one output path; a context manager.

    ``acquire`` raises :class:`OutputInUseError` (one line naming the holder's PID and host) if
    another live process holds it. A lock file whose process is gone is taken over, with a note
    through ``note`` (default: one line on stderr).
    """

    def __init__(self, path: PathLike, *, note: Optional[Callable[[str], None]] = None) -> None:
        self.path = Path(path)
        self.file = lock_path(path)
        self.note = note or _note_to_stderr
        self._fd: Optional[int] = None
        self._depth = 0

    def acquire(self) -> "OutputLock":
        with _held_guard:
            owner = _held.get(self.file)
            if owner is not None:  # this process already holds it: re-entrant
                owner._depth += 1
                self._shared_with = owner
                return self
            self._shared_with = None
            self._take()
            self._depth = 1
            _held[self.file] = self
        return self

    def _take(self) -> None:
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputWriteError.naming(error, self.path) from None
        while True:
            try:
                fd = os.open(self.file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as error:
                raise OutputWriteError.naming(error, self.path) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputInUseError(
                    f"{self.path} is in use by another run ({_describe(holder) if holder else 'holder unknown'}); "
                    "wait for it to finish or stop it"
                ) from None
            except OSError:
                os.close(fd)
                raise
            # The previous holder removes the file when it lets go; if we locked a file that was
            # removed (or replaced) in the meantime, our lock guards nothing: try again.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.file))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = _read_holder(fd)
        if previous:
            pid = previous.get("pid")
            gone = previous.get("host") == socket.gethostname() and isinstance(pid, int) and not process_is_running(pid)
            reason = "its process is gone" if gone else "it no longer holds it"
            self.note(f"took over the stale lock on {self.path} of {_describe(previous)} ({reason})")
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode("utf-8"), 0)
        except OSError:
            pass  # the flock alone is the lock; the record only helps the message of a second run
        self._fd = fd

    def release(self) -> None:
        with _held_guard:
            owner = self._shared_with or self
            owner._depth -= 1
            if owner._depth > 0:
                return
            _held.pop(owner.file, None)
            fd, owner._fd = owner._fd, None
        if fd is None:
            return
        # Remove the file while still holding the lock, so that it never outlives a normal run;
        # a run that opened it meanwhile sees it is gone (see _take) and starts over.
        try:
            os.unlink(owner.file)
        except FileNotFoundError:
            pass
        os.close(fd)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


@contextlib.contextmanager
def hold_outputs(
    outputs: Sequence[PathLike],
    *,
    work_dirs: Sequence[PathLike] = (),
    side_files: Sequence[str] = (),
    note: Optional[Callable[[str], None]] = None,
) -> Iterator[None]:
    """Lock every output file and work directory for the ``with`` block, then clean their debris.

    ``side_files``: suffixes of other files a run writes next to each output (``".ckpt"``,
    ``".jsonl"``) whose killed writers' temp files are removed too. In a work directory, every
    temp file of a process that is gone is removed.
    """
    with contextlib.ExitStack() as stack:
        for path in [*outputs, *work_dirs]:
            stack.enter_context(OutputLock(path, note=note))
        for path in outputs:
            path = Path(path)
            remove_stale_temp_files(path.parent, [path.name, *(path.name + suffix for suffix in side_files)])
        for path in work_dirs:
            remove_stale_temp_files(path)
        yield
