"""Adapter: output of the Qwen2.5-Math evaluation harness (``QwenLM/Qwen2.5-Math``, ``evaluation/``).

One JSON line per problem: ``idx``, ``question`` (or ``query``/``problem``), ``gt`` (or ``answer``),
and K-element lists ``code`` (sample texts; ``response`` is the same), ``pred`` (extracted final
answers), ``score`` (bool correctness per sample, the harness's grading) and, for reward-model runs,
``pred_score`` (one ``[float]`` reward per sample). Each line becomes one ``sample_pool`` run with K
samples; correctness and answers are kept as given, reward scores go through a sigmoid into
``score`` (the raw reward stays in ``raw_score``), token counts are counted from the sample texts
with the named tokenizer (the harness does not store them).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rollouts.importers.generic import LineError, count_lines, iter_jsonl_lines


def _first(row: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if row.get(k) is not None:
            return row[k]
    return None


def _score(v: Any) -> Any:
    """``pred_score`` items are ``[float]`` (one reward per sample) or a bare float."""
    if isinstance(v, list):
        if len(v) != 1:
            raise LineError(f"pred_score item {v!r} is not a single reward")
        return v[0]
    return v


def row_to_run(row: Any, *, query_prefix: str, dataset: str | None, scorer: str) -> dict[str, Any]:
    """One harness line -> a generic run dict (a ``best_of_n`` pool)."""
    if not isinstance(row, dict):
        raise LineError(f"expected a JSON object, got {type(row).__name__}")
    idx = row.get("idx")
    if isinstance(idx, bool) or not isinstance(idx, int):
        raise LineError("missing integer 'idx'")
    texts = _first(row, "code", "response")
    preds = row.get("pred")
    if not isinstance(preds, list) or not preds:
        raise LineError("missing 'pred' (list of extracted answers)")
    k = len(preds)
    correct = row.get("score")
    rewards = row.get("pred_score")
    for name, lst in (("code", texts), ("score", correct), ("pred_score", rewards)):
        if lst is not None and (not isinstance(lst, list) or len(lst) != k):
            raise LineError(f"'{name}' must be a list of {k} items like 'pred'")
    samples = []
    for i in range(k):
        s: dict[str, Any] = {"answer": preds[i]}
        if texts is not None:
            s["text"] = texts[i]
        if correct is not None:
            s["correct"] = correct[i]
        if rewards is not None:
            s["score"] = _score(rewards[i])
        samples.append(s)
    run: dict[str, Any] = {
        "query_id": f"{query_prefix}:{idx}",
        "question": _first(row, "question", "query", "problem"),
        "reference": _first(row, "gt", "answer"),
        "strategy": "best_of_n",
        "params": {"scorer": scorer} if rewards is not None else {},
        "samples": samples,
        "score_scale": "logit",
        "index": idx,
    }
    if dataset:
        run["dataset"] = dataset
    if row.get("level") is not None:
        run["meta"] = {"level": row["level"]}
    return run


class QwenHarnessReader:
    """Reads one harness JSONL file, or every ``*.jsonl`` in a folder (sorted)."""

    name = "qwen25math"

    def __init__(self, path: str | Path, *, dataset: str | None = None, scorer: str = "reward-model"):
        p = Path(path)
        self.files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
        if not self.files or not all(f.exists() for f in self.files):
            raise FileNotFoundError(f"{p}: no harness JSONL file found")
        self.dataset = dataset
        self.scorer = scorer

    def describe(self) -> dict[str, Any]:
        from rollouts.importers.base import file_sha256

        return {
            "format": self.name,
            "files": [{"name": f.name, "sha256": file_sha256(f)} for f in self.files],
            "scorer": {"name": self.scorer, "score": "sigmoid(pred_score)", "raw_score": "pred_score"},
            "notes": "correctness and extracted answers as graded by the harness; token counts from sample text",
        }

    def __len__(self) -> int:
        return sum(count_lines(f) for f in self.files)

    def __iter__(self) -> Iterator[tuple[str, int, Any]]:
        for f in self.files:
            for lineno, obj in iter_jsonl_lines(f):
                if isinstance(obj, LineError):
                    yield str(f), lineno, obj
                    continue
                try:
                    yield str(f), lineno, row_to_run(obj, query_prefix=f.stem, dataset=self.dataset or
                                                     f"qwen25math:{f.stem}", scorer=self.scorer)
                except LineError as exc:
                    yield str(f), lineno, exc
