"""What the command-line tools print besides their results: progress lines on stderr, and stdout kept
for results alone.

:func:`note` prints one line saying what a phase longer than a moment is doing (loading, fitting,
starting an engine), so a long wait at a terminal is never silent. :func:`results_only_stdout` keeps a tool's stdout
for its own output (``route.py``'s JSON lines) while an engine and its worker processes write their logs:
file descriptor 1 points at stderr for the duration, and the tool writes to the stream it is given.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO


def plain_warnings() -> None:
    """Show this project's warnings as one ``warning: <message>`` line on stderr (not Python's
    ``file:line: UserWarning:`` and source line); the CLIs call it first. Other packages' warnings
    keep Python's format."""
    import warnings

    default = warnings.showwarning
    if getattr(default, "ttc_plain", False):
        return  # already installed

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        here = Path(__file__).resolve().parents[1]
        if category is UserWarning and Path(filename).resolve().is_relative_to(here) and ".venv" not in filename:
            print(f"warning: {message}", file=file or sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    show.ttc_plain = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def note(message: str) -> None:
    """One progress line on stderr (stdout stays for results), when stderr is a terminal: redirected
    (a log, a test, a pipeline) a tool's stderr keeps to its warnings and its one ``error:`` line."""
    if sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


@contextmanager
def phase(message: str) -> Iterator[None]:
    """``message ...`` on stderr before a long phase, and ``message: done in X s`` after it."""
    note(f"{message} ...")
    t0 = time.perf_counter()
    yield
    note(f"{message}: done in {time.perf_counter() - t0:.1f} s")


@contextmanager
def results_only_stdout(restore: bool = True) -> Iterator[TextIO]:
    """Yield a text stream on the process's stdout while everything else written to stdout (this
    process's ``print``, a library's logging handler, child processes, C code writing to file
    descriptor 1) goes to stderr. Restored on exit, unless ``restore`` is False: a command-line tool
    whose engine shuts down (and logs) when the process ends keeps file descriptor 1 on stderr to the
    end. Where ``sys.stdout`` is not file descriptor 1 (a stream captured in tests), it is yielded as
    it is."""
    try:
        out_fd, err_fd = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        out_fd = err_fd = -1
    if out_fd != 1 or err_fd < 0:
        yield sys.stdout
        return
    sys.stdout.flush()
    saved = os.dup(out_fd)
    os.dup2(err_fd, out_fd)
    out = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8")
    try:
        yield out
    finally:
        out.close()
        sys.stdout.flush()
        if restore:
            os.dup2(saved, out_fd)
        os.close(saved)


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as a run folder stores it and ``--help`` shows it: relative to the working directory
    when it lies inside it, else as given (a path the user wrote absolute stays absolute)."""
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return str(path)
    return str(path)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with every option's default: ``(default: X)`` appended where the help does not
    already say its default and the option has one (not None or False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" not in text
            and action.option_strings
            and action.default is not None
            and action.default is not False  # a flag's off state (0 and 0.0 are defaults to name)
            and action.default != argparse.SUPPRESS
            and not (isinstance(action.default, list | tuple) and not action.default)
        ):
            text += " (default: %(default)s)"
        return text
