"""Exclusive locks on folders (a run directory, a dataset being prepared) and file modes.

A lock is an advisory ``flock`` on a small file, held for as long as the ``with`` block runs. The
operating system drops it when the process ends in any way (``kill -9`` included), so a lock left
by a dead process never blocks anyone: there are no stale locks to clean up. The lock file itself
stays (removing it while others may have it open would let two processes hold "the" lock).

    with exclusive_lock(run_dir / ".lock", f"run directory {run_dir}", "wait for it to finish"):
        ...  # the only process working in run_dir

On systems without ``fcntl`` (Windows) the block runs unlocked, with a debug log line.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["BusyError", "exclusive_lock", "new_file_mode"]


class BusyError(RuntimeError):
    """Another live process holds the lock; the message names it and says what to do."""


@contextlib.contextmanager
def exclusive_lock(path: str | Path, what: str, advice: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the ``with`` block.

    Raises :class:`BusyError` at once, without waiting, when another process holds it: ``"{what}
    is in use by another process (pid N); {advice}"``. The holder's pid is written into the file.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        log.debug("no fcntl on this platform: %s is not locked", what)
        yield
        return
    path = Path(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, new_file_mode())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # BlockingIOError: held by a live process
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            pid = f" (pid {holder})" if holder.isdigit() else ""
            raise BusyError(f"{what} is in use by another process{pid}; {advice}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (usually 0o644). Writers that
    create files privately (``mkstemp``, safetensors: 0o600) set this before the rename."""
    try:  # Linux: read the umask without changing it
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore it
    os.umask(mask)
    return 0o666 & ~mask
