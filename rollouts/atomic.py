"""Files replaced whole: a reader (or a job started after a kill -9) sees the old file or the new one,
never half of one. The new content goes to a temporary file in the same folder, is fsynced, and is
renamed over the old file (``os.replace`` is atomic within one file system); the folder is fsynced so
the rename survives a crash.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or a new file in ``directory`` durable (best effort where it cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | Path, data: bytes, before_rename: Callable[[], None] | None = None) -> None:
    """Replace ``path`` by ``data`` atomically. ``before_rename`` runs once the data is on disk and before
    the file appears under its name (train.py records a checkpoint's hash there). A temporary file left by
    a kill is hidden (``.<name>.*.tmp``) and never read."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode_for(path))
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_bytes_atomic` of UTF-8 text."""
    write_bytes_atomic(path, text.encode("utf-8"))


def _read_umask() -> int:
    mask = os.umask(0o022)  # read once, at import (os.umask can only be read by setting it)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def _mode_for(path: Path) -> int:
    """The file's current mode if it exists, else what ``open(path, "w")`` would create."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_UMASK
