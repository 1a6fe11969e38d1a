"""The project's user-facing errors, reported the same way by every entry point.

    try:
        ...
    except user_errors() as exc:
        return report(exc)          # one "error: ..." line on stderr, exit status 2

``user_errors()`` lists only the error classes of modules already imported: an error of a module
that was never imported cannot have been raised, and the CLIs stay free of heavy imports.
"""

from __future__ import annotations

import sys

_ERRORS = (
    ("env.outcomes", "AllocError"),  # ConfigError, CheckpointError, MenuMismatchError, ExportError
    ("rollouts.cache", "CacheError"),
    ("rollouts.config", "ConfigError"),
    ("rollouts.datasets", "DatasetError"),
    ("rollouts.backends.base", "BackendError"),
    ("rollouts.models", "ModelNotFound"),
    ("rollouts.locks", "FolderLocked"),
    ("policies.onnx_policy", "OnnxPolicyError"),
)


def user_errors() -> tuple[type[BaseException], ...]:
    """The error classes that mean bad input or a busy output (not a bug)."""
    found = []
    for module, name in _ERRORS:
        mod = sys.modules.get(module)
        if mod is not None and hasattr(mod, name):
            found.append(getattr(mod, name))
    return tuple(found)


def report(exc: BaseException) -> int:
    """Print ``error: <message>`` (one line) on stderr; returns the exit status 2."""
    msg = " ".join(str(exc).split("\n")) or type(exc).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2
