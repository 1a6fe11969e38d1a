"""The project's user-facing errors: one root, reported the same way by every entry point.

    try:
        ...
    except TTCError as exc:
        return report(exc)          # one "error: ..." line on stderr, exit status 2

Every error the project raises for bad input or a busy output (a malformed config, a corrupt cache
line, an unknown model, a locked folder...) derives from :class:`TTCError`; anything else is a bug and
keeps its traceback. ``TTCError`` is a ``ValueError`` (bad input, and what callers caught before the
root existed); classes that callers also catch under another built-in base keep it as a second base
(``BackendError`` is a ``RuntimeError``, ``ModelNotFound`` a ``FileNotFoundError``...).

Not ours but user input: a file or folder named on the command line that is missing or unreadable
raises ``OSError`` wherever the standard library opens it. The CLIs that take such paths
(``route.py``, ``serve.py``, ``collect.py import``, ``python -m policies.export``) also report
:data:`FOREIGN_INPUT_ERRORS` with :func:`report`; the others let it be a traceback, as before.
Three of them (``serve.py``, ``collect.py import``, ``policies.export``) reported any ``ValueError``
before this root existed and still do: below them, json, numpy, torch, ONNX and tokenizers raise plain
ones for bad input, and so do a few of ours not yet moved onto the root (``rollouts/latency*.py``'s
model and file parsers, the importers' option checks, ``rollouts/features.py``'s layer check).
"""

from __future__ import annotations

import sys


class TTCError(ValueError):
    """Root of the project's user-facing errors: bad input or a busy output, never a bug."""


class ConfigError(TTCError):
    """A config file, override or option is malformed or names something unknown; the message names
    the key (and the file and line where there is one)."""


#: Raised for bad user input by code that is not ours: a missing or unreadable file (``OSError``).
FOREIGN_INPUT_ERRORS: tuple[type[Exception], ...] = (OSError,)
#: What ``route.py`` reports: ours and :data:`FOREIGN_INPUT_ERRORS`.
PATH_INPUT_ERRORS: tuple[type[Exception], ...] = (TTCError, *FOREIGN_INPUT_ERRORS)
#: What ``serve.py``, ``collect.py import`` and ``python -m policies.export`` report: the above and any plain
#: ``ValueError`` (TTCError is one) from the libraries below them (see the module docstring).
LIBRARY_INPUT_ERRORS: tuple[type[Exception], ...] = (ValueError, *FOREIGN_INPUT_ERRORS)


def report(exc: BaseException) -> int:
    """Print ``error: <message>`` (one line) on stderr; returns the exit status 2."""
    msg = " ".join(str(exc).split("\n")) or type(exc).__name__
    print(f"error: {msg}", file=sys.stderr)
    return 2
