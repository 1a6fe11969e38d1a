"""Exclusive locks on output folders (run folders, caches), held for the whole job.

Two jobs writing one run folder or one cache would mix their outputs and both report success. Each
writer therefore holds an OS file lock (``fcntl.flock``) on ``<parent>/.<folder name>.lock``, beside
the folder so that it can be taken before the folder exists and a failed job leaves nothing inside
it; the folder's real path names it, so a symlink to the folder takes the same lock. The kernel drops
the lock when its process dies, so a lock file left by a killed job never blocks the next one; the
file holds the holder's pid only to name it in the error.

    with FolderLock("runs/my_run", "run folder"):   # FolderLocked (exit 2 in the CLIs) if held
        ...

Locks are re-entrant within a process (the collector and its cache writer take the same one).
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from rollouts.errors import TTCError

# lock file -> (fd, holders in this process): flock conflicts between two fds of one process too
_HELD: dict[str, list[int]] = {}


class FolderLocked(TTCError, RuntimeError):
    """Another live job holds the folder's lock; the message names the folder, the pid and the lock."""

    def __init__(self, folder: Path, lock: Path, what: str, pid: str | None):
        self.folder, self.lock, self.pid = folder, lock, pid
        who = f"pid {pid}" if pid else "a job that has not written its pid yet"
        super().__init__(f"{folder}: {what} in use by another job ({who}, lock {lock}); wait for it to finish")


def lock_path(folder: str | Path) -> Path:
    """The lock file of a folder: a hidden file beside it, keyed by its real path (symlinks resolved),
    so every name of one folder (a symlink to it, a path through a linked parent) takes the same lock."""
    f = Path(os.path.realpath(folder))
    return f.parent / f".{f.name}.lock"


def _holder(fd: int) -> str | None:
    text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    return text or None


def is_locked(folder: str | Path) -> str | None:
    """The holder's pid (or ``"?"``) if a live job holds the folder's lock, else None; creates nothing."""
    lp = lock_path(folder)
    if str(lp) in _HELD:
        return str(os.getpid())
    try:
        fd = os.open(lp, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.EACCES):
            raise
        return _holder(fd) or "?"
    finally:
        os.close(fd)
    return None


class FolderLock:
    """An exclusive lock on ``folder`` (see the module docstring); ``what`` names it in errors."""

    def __init__(self, folder: str | Path, what: str = "folder"):
        self.folder = Path(folder)
        self.what = what
        self.path = lock_path(folder)
        self._held = False

    def acquire(self) -> FolderLock:
        """Take the lock or raise FolderLocked at once (never waits). Creates the parent folder."""
        if self._held:
            return self
        key = str(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            self._held = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                pid = _holder(fd)
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                raise FolderLocked(self.folder, self.path, self.what, pid) from None
            # the previous holder unlinks its file on release: retry if we locked a file no longer there
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _HELD[key] = [fd, 1]
        self._held = True
        return self

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        key = str(self.path)
        entry = _HELD[key]
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[key]
            try:
                self.path.unlink()  # while still locked, so no other job holds a lock on a removed file
            except FileNotFoundError:
                pass
            os.close(entry[0])

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
