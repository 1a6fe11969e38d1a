"""Which ``.zip`` checkpoints this user's own ``train.py`` wrote. A checkpoint is a pickle and runs code
when it is loaded, so it is loaded only if its sha256 is in the user's trust store, or with
``--trust-checkpoint``.

``train.py`` writes every zip (checkpoints, ``best_model.zip``, ``final_model.zip``) through
:func:`save_model`: the bytes go to a temporary file in the same folder and are fsynced, their sha256
is appended to the trust store, then the file is renamed into place (a kill leaves the previous file
whole). The store lives outside every run folder, so copying a run or planting a zip in one brings no
trust with it: ``$TTC_ALLOC_TRUST_STORE`` if set, else ``$XDG_DATA_HOME/ttc-alloc/trusted_checkpoints.jsonl``,
else ``~/.local/share/ttc-alloc/trusted_checkpoints.jsonl``. One JSON line per zip written:
``{"sha256": ..., "path": ..., "recorded": ...}`` (the path is informative; only the hash counts).

Loaders call :func:`read_checked` and unpickle the bytes it returns, never the file again, so the file
cannot change between the check and the load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from rollouts.atomic import write_bytes_atomic
from rollouts.errors import ConfigError

ENV_VAR = "TTC_ALLOC_TRUST_STORE"


class UntrustedCheckpointError(ConfigError):
    """A ``.zip`` that this user's train.py did not write, loaded without ``--trust-checkpoint``."""


def store_path() -> Path:
    """The trust store's file (see the module docstring)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "ttc-alloc" / "trusted_checkpoints.jsonl"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def trusted_digests() -> set[str]:
    """The recorded hashes. A store another user could write to is refused (it would vouch for anything)."""
    path = store_path()
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return set()
    with fh:
        st = os.fstat(fh.fileno())
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise ConfigError(
                f"{path}: checkpoint trust store is writable by other users or not yours; "
                f"make it yours and chmod 600 it"
            )
        found = set()
        for line in fh:
            try:
                found.add(str(json.loads(line)["sha256"]))
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line (a kill mid-append) or a hand edit: it vouches for nothing
    return found


def _append_fd() -> int:
    store = store_path()
    try:
        store.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return os.open(store, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as exc:
        raise ConfigError(
            f"{store}: cannot write the checkpoint trust store ({exc.strerror}); set {ENV_VAR} to a file you can write"
        ) from exc


def ensure_store() -> None:
    """Fail now, not at the first checkpoint, if the trust store cannot be written or is not trustworthy."""
    os.close(_append_fd())
    trusted_digests()


def record(data: bytes, path: str | Path) -> None:
    """Add the sha256 of ``data`` (about to be written at ``path``) to the trust store, durably."""
    entry = {"sha256": sha256(data), "path": str(Path(path).resolve()),
             "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
    fd = _append_fd()
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())  # one write of one line: appends never interleave
        os.fsync(fd)
    finally:
        os.close(fd)


def untrusted_message(path: str | Path, remedy: str = "pass --trust-checkpoint if you trust where it came from") -> str:
    return (
        f"{path}: checkpoint not written by your train.py (its sha256 is not in {store_path()}); "
        f"a .zip runs code when loaded, so {remedy}"
    )


def is_trusted(path: str | Path) -> bool:
    """Whether the file's sha256 is in the trust store (reads the file; unpickles nothing)."""
    return sha256(Path(path).read_bytes()) in trusted_digests()


def read_checked(path: str | Path, trust: bool = False) -> bytes:
    """The bytes of the zip at ``path`` if its sha256 is in the trust store (any zip with ``trust``),
    else :class:`UntrustedCheckpointError`. Unpickle these bytes, not the file."""
    data = Path(path).read_bytes()
    if not trust and sha256(data) not in trusted_digests():
        raise UntrustedCheckpointError(untrusted_message(path))
    return data


def checked_stream(path: str | Path, trust: bool = False) -> io.BytesIO:
    """:func:`read_checked` as a file object (what SB3's ``load`` and ``load_from_zip_file`` take)."""
    return io.BytesIO(read_checked(path, trust))


def save_model(model: Any, path: str | Path) -> None:
    """Save an SB3 model to ``path`` atomically and record it as trusted (before it appears)."""
    buf = io.BytesIO()
    model.save(buf)
    data = buf.getvalue()
    write_bytes_atomic(path, data, before_rename=lambda: record(data, path))
