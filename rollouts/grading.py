"""Answer extraction and grading with math-verify.

``grade(gold, completion)`` parses both with math-verify and checks equivalence with ``verify``.
math-verify's own timeout uses ``signal.alarm``, which only works in the main thread; elsewhere
(server handler threads, helper threads) the same call runs in a worker process that is killed
when it overruns, so a pathological expression can never hang the caller.
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing as mp
import os
import queue
import threading
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

DEFAULT_TIMEOUT_S = 5


@dataclass(frozen=True)
class Grade:
    answer: str | None  # the extracted prediction, as text (None: nothing parseable)
    correct: bool
    timed_out: bool = False


def _extracted_text(parsed: list) -> str | None:
    # math-verify returns [sympy_obj, original_string]; the string is what voting compares.
    if not parsed:
        return None
    return str(parsed[-1]) if len(parsed) > 1 else str(parsed[0])


class _NoTimeoutNotice(logging.Filter):
    """Drops math-verify's "Timeout is disabled ..." warning: without its own timeout (off the main
    thread) the call runs in a worker process that :func:`grade` kills when it overruns."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


def _quiet_math_verify() -> None:
    for name in ("math_verify.grader", "math_verify.parser"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTimeoutNotice) for f in logger.filters):
            logger.addFilter(_NoTimeoutNotice())


def _grade_now(gold: str | None, completion: str, timeout_s: int | None) -> tuple[str | None, bool]:
    from math_verify import parse, verify

    _quiet_math_verify()

    if gold is None:  # nothing to compare with: extraction only
        return _extracted_text(parse(completion, parsing_timeout=timeout_s)), False
    gold_parsed = parse(gold, parsing_timeout=timeout_s)
    if not gold_parsed:
        # Plain numbers/strings that the LaTeX extractor misses: wrap them so they parse.
        gold_parsed = parse(f"${gold}$", parsing_timeout=timeout_s)
    pred_parsed = parse(completion, parsing_timeout=timeout_s)
    answer = _extracted_text(pred_parsed)
    if not gold_parsed or not pred_parsed:
        return answer, False
    return answer, bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout_s))


# Graders off the main thread: a few single-process executors, each grading one call at a time. A
# caller first takes a free one (that wait is not part of its timeout: under load, queueing behind other
# requests' grades is not an overrun), and an overrun kills only the process grading that call, so no
# other caller's grade is ever lost with it.
GRADE_WORKERS = max(1, min(4, os.cpu_count() or 1))
_free: queue.Queue[cf.ProcessPoolExecutor | None] | None = None
_free_lock = threading.Lock()


def _graders() -> queue.Queue[cf.ProcessPoolExecutor | None]:
    global _free
    with _free_lock:
        if _free is None:
            _free = queue.Queue()
            for _ in range(GRADE_WORKERS):
                _free.put(None)  # started on first use
        return _free


def _kill(ex: cf.ProcessPoolExecutor) -> None:
    for p in list((getattr(ex, "_processes", None) or {}).values()):
        p.kill()
    ex.shutdown(wait=False, cancel_futures=True)


def _warm() -> None:
    import math_verify  # noqa: F401 - imported before the first timed call


def _started() -> cf.ProcessPoolExecutor:
    """A grader process, started and with math-verify imported: its start-up (seconds on a loaded
    machine) never counts against a grade's timeout."""
    ex = cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
    ex.submit(_warm).result()
    return ex


def _grade_in_worker(gold: str | None, completion: str, timeout_s: int) -> tuple[str | None, bool] | None:
    """``_grade_now`` in a worker process, at most ``timeout_s`` of grading; None when it overran."""
    free = _graders()
    ex = free.get()
    retried = False
    try:
        while True:
            if ex is None:
                ex = _started()
            fut = ex.submit(_grade_now, gold, completion, None)
            try:
                return fut.result(timeout=timeout_s)
            except cf.TimeoutError:
                _kill(ex)
                ex = None
                return None
            except BrokenProcessPool:  # its process died (killed from outside, out of memory): once more
                _kill(ex)
                ex = None
                if retried:
                    raise
                retried = True
    finally:
        free.put(ex)


def grade(gold: str | None, completion: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> Grade:
    """Extract the final answer from ``completion`` and check it against ``gold`` with math-verify.

    ``gold`` None (a live query without a reference): extraction only, ``correct`` is False."""
    if threading.current_thread() is threading.main_thread():
        try:
            answer, ok = _grade_now(gold, completion, timeout_s)
        except Exception:  # math-verify raises TimeoutException subclasses on overrun
            return Grade(None, False, timed_out=True)
        return Grade(answer, ok)
    done = _grade_in_worker(gold, completion, timeout_s)
    if done is None:
        return Grade(None, False, timed_out=True)
    return Grade(*done)


def extract_answer(completion: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> str | None:
    """The final answer math-verify extracts from a completion (for voting), or None."""
    from math_verify import parse

    _quiet_math_verify()
    if threading.current_thread() is threading.main_thread():
        return _extracted_text(parse(completion, parsing_timeout=timeout_s))
    return _extracted_text(parse(completion, parsing_timeout=None))
