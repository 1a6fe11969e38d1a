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
import threading
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


_pool: cf.ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _worker_pool() -> cf.ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))
        return _pool


def _reset_pool() -> None:
    global _pool
    with _pool_lock:
        if _pool is not None:
            for p in list(getattr(_pool, "_processes", {}).values()):
                p.kill()
            _pool.shutdown(wait=False, cancel_futures=True)
            _pool = None


def grade(gold: str | None, completion: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> Grade:
    """Extract the final answer from ``completion`` and check it against ``gold`` with math-verify.

    ``gold`` None (a live query without a reference): extraction only, ``correct`` is False."""
    if threading.current_thread() is threading.main_thread():
        try:
            answer, ok = _grade_now(gold, completion, timeout_s)
        except Exception:  # math-verify raises TimeoutException subclasses on overrun
            return Grade(None, False, timed_out=True)
        return Grade(answer, ok)
    fut = _worker_pool().submit(_grade_now, gold, completion, None)
    try:
        answer, ok = fut.result(timeout=timeout_s)
    except cf.TimeoutError:
        _reset_pool()
        return Grade(None, False, timed_out=True)
    return Grade(answer, ok)


def extract_answer(completion: str, timeout_s: int = DEFAULT_TIMEOUT_S) -> str | None:
    """The final answer math-verify extracts from a completion (for voting), or None."""
    from math_verify import parse

    _quiet_math_verify()
    if threading.current_thread() is threading.main_thread():
        return _extracted_text(parse(completion, parsing_timeout=timeout_s))
    return _extracted_text(parse(completion, parsing_timeout=None))
