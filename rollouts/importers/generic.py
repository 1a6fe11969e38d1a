"""The generic import format: JSONL, one line per (query, strategy run); see docs/import.md.

Every adapter turns its native rows into the same plain dicts ("run dicts") that this module
parses, so the validation, grading, token counting and latency filling happen in one place
(``rollouts.importers.Importer``). A line looks like::

    {"query_id": "q1", "question": "What is 2+3?", "reference": "5", "strategy": "sample_pool",
     "samples": [{"answer": "5", "correct": true, "tokens": 12}, {"answer": "6", "tokens": 15}]}

or, for a search strategy, carries ``"result": {"answer": ..., "tokens": ..., "seconds": ...}``
instead of ``samples``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollouts.errors import TTCError

#: Accepted strategy names -> cache strategy. Pools keep every sample (smaller budgets are derived
#: from them); search strategies give one final result.
STRATEGY_NAMES: dict[str, str] = {
    "sample_pool": "sample_pool",
    "best_of_n": "sample_pool",
    "self_consistency": "sample_pool",
    "search_result": "search_result",
    "beam_search": "search_result",  # becomes a cache "beam_search" record when iterations are given
    "dvts": "search_result",
}
SCORE_SCALES = ("prob", "logit")

RUN_FIELDS = {
    "query_id", "question", "reference", "strategy", "params", "seed", "samples", "result",
    "seconds", "scorer_tokens", "dataset", "index", "score_scale", "meta", "width",
}
SAMPLE_KEYS = {"answer", "text", "correct", "tokens", "score", "seconds", "scorer_tokens", "finish_reason"}
RESULT_KEYS = {"answer", "text", "correct", "tokens", "seconds", "scorer_tokens", "beams", "iterations", "score"}


class LineError(TTCError):
    """One input line cannot be imported; the message says why (the caller adds file:line)."""


@dataclass
class Sample:
    answer: str | None = None
    text: str | None = None
    correct: bool | None = None
    tokens: int | None = None
    score: float | None = None
    seconds: float | None = None
    scorer_tokens: int | None = None
    finish_reason: str | None = None
    has_answer: bool = False  # "answer" was present (null means: no final answer found)


@dataclass
class Result:
    answer: str | None = None
    text: str | None = None
    correct: bool | None = None
    tokens: int | None = None
    seconds: float | None = None
    scorer_tokens: int | None = None
    score: float | None = None
    beams: list[Sample] | None = None
    iterations: list[dict[str, Any]] | None = None
    has_answer: bool = False


@dataclass
class Run:
    """One validated input line: a strategy run on one query, fields not yet filled in."""

    file: str
    line: int
    query_id: str
    question: str
    reference: str
    method: str  # the strategy name as given
    strategy: str  # the cache strategy
    params: dict[str, Any]
    seed: int = 0
    samples: list[Sample] | None = None
    result: Result | None = None
    seconds: float | None = None
    scorer_tokens: int | None = None
    dataset: str | None = None
    index: int | None = None
    score_scale: str = "prob"
    meta: dict[str, Any] = field(default_factory=dict)
    width: int | None = None  # search results: parallel sequences per round (e.g. an API's best_of=N)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


# ----------------------------------------------------------------------------------------------
# Field checks


def _text(obj: dict[str, Any], key: str, *, required: bool, what: str = "") -> str | None:
    if key not in obj or obj[key] is None:
        if required:
            raise LineError(f"missing {what or repr(key)}")
        return None
    val = obj[key]
    if isinstance(val, bool) or not isinstance(val, (str, int, float)):
        raise LineError(f"{key!r} must be a string, got {type(val).__name__}")
    val = str(val)
    if required and not val.strip():
        raise LineError(f"{what or repr(key)} is empty")
    return val


def _count(obj: dict[str, Any], key: str, where: str) -> int | None:
    val = obj.get(key)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, (int, float)) or (isinstance(val, float) and not val.is_integer()):
        raise LineError(f"{where}{key!r} must be a whole number, got {val!r}")
    if val < 0:
        raise LineError(f"{where}negative token count ({key}={val})")
    return int(val)


def _number(obj: dict[str, Any], key: str, where: str, *, nonneg: bool = False) -> float | None:
    val = obj.get(key)
    if val is None:
        return None
    if isinstance(val, bool) or not isinstance(val, (int, float)) or not math.isfinite(val):
        raise LineError(f"{where}{key!r} must be a finite number, got {val!r}")
    if nonneg and val < 0:
        raise LineError(f"{where}{key!r} is negative ({val})")
    return float(val)


def _bool(obj: dict[str, Any], key: str, where: str) -> bool | None:
    val = obj.get(key)
    if val is None:
        return None
    if not isinstance(val, bool):
        raise LineError(f"{where}{key!r} must be true, false or null, got {val!r}")
    return val


def _answer(obj: dict[str, Any], where: str) -> tuple[str | None, bool]:
    if "answer" not in obj:
        return None, False
    val = obj["answer"]
    if val is None:
        return None, True
    if isinstance(val, bool) or not isinstance(val, (str, int, float)):
        raise LineError(f"{where}'answer' must be a string or null, got {type(val).__name__}")
    return str(val), True


def _unknown(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(obj) - allowed)
    if extra:
        raise LineError(f"{where}unknown field(s) {', '.join(map(repr, extra))} (allowed: {', '.join(sorted(allowed))})")


def _sample(obj: Any, where: str, *, need_answer: bool = True) -> Sample:
    if not isinstance(obj, dict):
        raise LineError(f"{where}must be an object, got {type(obj).__name__}")
    _unknown(obj, SAMPLE_KEYS, where)
    answer, has_answer = _answer(obj, where)
    text = _text(obj, "text", required=False)
    if need_answer and not has_answer and text is None:
        raise LineError(f"{where}needs 'answer' (final answer text) or 'text' (the full sample)")
    finish = obj.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise LineError(f"{where}'finish_reason' must be a string")
    return Sample(
        answer=answer,
        text=text,
        correct=_bool(obj, "correct", where),
        tokens=_count(obj, "tokens", where),
        score=_number(obj, "score", where),
        seconds=_number(obj, "seconds", where, nonneg=True),
        scorer_tokens=_count(obj, "scorer_tokens", where),
        finish_reason=finish,
        has_answer=has_answer,
    )


def _result(obj: Any) -> Result:
    where = "result: "
    if not isinstance(obj, dict):
        raise LineError(f"'result' must be an object, got {type(obj).__name__}")
    _unknown(obj, RESULT_KEYS, where)
    answer, has_answer = _answer(obj, where)
    text = _text(obj, "text", required=False)
    if not has_answer and text is None:
        raise LineError("result: needs 'answer' (final answer text) or 'text'")
    beams = obj.get("beams")
    if beams is not None:
        if not isinstance(beams, list) or not beams:
            raise LineError("result: 'beams' must be a non-empty list of objects")
        beams = [_sample(b, f"result.beams[{i}]: ", need_answer=False) for i, b in enumerate(beams)]
    its = obj.get("iterations")
    if its is not None:
        if not isinstance(its, list) or not its or not all(isinstance(x, dict) for x in its):
            raise LineError("result: 'iterations' must be a non-empty list of objects")
        for i, it in enumerate(its):
            for key in ("width", "max_gen_tokens", "prompt_tokens"):
                _count(it, key, f"result.iterations[{i}]: ")
    return Result(
        answer=answer,
        text=text,
        correct=_bool(obj, "correct", where),
        tokens=_count(obj, "tokens", where),
        seconds=_number(obj, "seconds", where, nonneg=True),
        scorer_tokens=_count(obj, "scorer_tokens", where),
        score=_number(obj, "score", where),
        beams=beams,
        iterations=its,
        has_answer=has_answer,
    )


def parse_run(obj: Any, file: str, line: int, *, default_score_scale: str = "prob") -> Run:
    """Validate one run dict (a parsed input line). Raises LineError with the reason."""
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}")
    _unknown(obj, RUN_FIELDS, "")
    query_id = _text(obj, "query_id", required=True, what="'query_id'")
    question = _text(obj, "question", required=True, what="'question' (the query text)")
    reference = _text(obj, "reference", required=True, what="'reference' (the reference answer)")
    method = _text(obj, "strategy", required=True, what="'strategy'")
    if method not in STRATEGY_NAMES:
        raise LineError(f"unknown strategy name {method!r} (known: {', '.join(STRATEGY_NAMES)})")
    params = obj.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise LineError(f"'params' must be an object, got {type(params).__name__}")
    try:
        json.dumps(params, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LineError(f"'params' must be plain JSON ({exc})") from exc
    seed = obj.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise LineError(f"'seed' must be a whole number >= 0, got {seed!r}")
    scale = obj.get("score_scale", default_score_scale)
    if scale not in SCORE_SCALES:
        raise LineError(f"'score_scale' must be one of {SCORE_SCALES}, got {scale!r}")
    index = obj.get("index")
    if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
        raise LineError("'index' must be a whole number")
    meta = obj.get("meta") or {}
    if not isinstance(meta, dict):
        raise LineError("'meta' must be an object")
    strategy = STRATEGY_NAMES[method]
    has_s, has_r = obj.get("samples") is not None, obj.get("result") is not None
    if has_s == has_r:
        raise LineError("give exactly one of 'samples' (a pool) or 'result' (a search result)")
    samples = result = None
    if has_s:
        if strategy != "sample_pool":
            raise LineError(f"strategy {method!r} takes a 'result', not 'samples'")
        raw = obj["samples"]
        if not isinstance(raw, list) or not raw:
            raise LineError("'samples' must be a non-empty list")
        samples = [_sample(s, f"samples[{i}]: ") for i, s in enumerate(raw)]
        if "n" in params and (isinstance(params["n"], bool) or not isinstance(params["n"], int)
                              or params["n"] < len(samples)):
            raise LineError(f"params.n is {params['n']!r} but the pool has {len(samples)} samples")
    else:
        if strategy == "sample_pool":
            raise LineError(f"strategy {method!r} takes 'samples', not a 'result'")
        result = _result(obj["result"])
        if method == "beam_search" and result.iterations:
            strategy = "beam_search"
    width = _count(obj, "width", "")
    if width is not None and (has_s or width < 1):
        raise LineError("'width' (parallel sequences per round) is for search results and must be >= 1")
    return Run(
        file=file,
        line=line,
        query_id=query_id,  # type: ignore[arg-type]
        question=question,  # type: ignore[arg-type]
        reference=reference,  # type: ignore[arg-type]
        method=method,  # type: ignore[arg-type]
        strategy=strategy,
        params=dict(params),
        seed=seed,
        samples=samples,
        result=result,
        seconds=_number(obj, "seconds", "", nonneg=True),
        scorer_tokens=_count(obj, "scorer_tokens", ""),
        dataset=_text(obj, "dataset", required=False),
        index=index,
        score_scale=scale,
        meta=meta,
        width=width,
    )


# ----------------------------------------------------------------------------------------------
# Reading the generic file


def iter_jsonl_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line_number, parsed object or LineError) for each non-blank line of a JSONL file."""
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as exc:
                yield lineno, LineError(f"invalid JSON ({exc.msg} at column {exc.colno})")


def count_lines(path: str | Path) -> int:
    with open(path, encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip())


class GenericReader:
    """Reads the generic JSONL format (docs/import.md)."""

    name = "generic"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def describe(self) -> dict[str, Any]:
        from rollouts.importers.base import file_sha256

        return {"format": self.name, "files": [{"name": self.path.name, "sha256": file_sha256(self.path)}]}

    def __len__(self) -> int:
        return count_lines(self.path)

    def __iter__(self) -> Iterator[tuple[str, int, Any]]:
        for lineno, obj in iter_jsonl_lines(self.path):
            yield str(self.path), lineno, obj
