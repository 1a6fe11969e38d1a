"""Adapter: outputs of Hugging Face ``search-and-learn`` (``scripts/test_time_compute.py``).

Its datasets have one row per problem with the input columns (``problem``, ``answer``, and for
MATH-500 ``unique_id``, ``level``, ``subject``) plus what the search wrote:

- ``completions``: list of N completion texts (for beam search / DVTS: the final beams);
- ``scores``: per completion, the list of per-step PRM scores (probabilities in [0, 1]);
- ``pred``: the completion with the best aggregated PRM score;
- ``completion_tokens``: per completion, generated tokens (best-of-N, beam search), or ``-1`` (DVTS);
- after scoring: ``agg_scores``, ``preds@n``, ``pred_weighted@n``, ``pred_maj@n``, ``pred_naive@n``.

``best_of_n`` rows become ``sample_pool`` runs of N samples: each completion's answer is extracted
and graded with math-verify against ``answer``, its score is the aggregated step score
(``last`` by default, as search-and-learn; ``min``/``prod``), its tokens are ``completion_tokens``
(counted with the tokenizer where absent). The ``pred_*@n`` columns are not imported: smaller
budgets are derived from the pool with this project's selectors. ``beam_search``/``dvts`` rows become
``search_result`` runs: the final answer is graded from ``pred``; ``tokens`` is the sum over the final
beams (pruned beams are not in the output, so it is a lower bound, flagged in provenance).

Accepts JSONL (one row per line) and Parquet (a row's "line" is its 1-based row number).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rollouts.importers.generic import LineError, count_lines, iter_jsonl_lines

APPROACHES = ("best_of_n", "beam_search", "dvts")
AGGREGATIONS = ("last", "min", "prod")


def aggregate(step_scores: Any, how: str = "last") -> float | None:
    """Aggregate per-step PRM scores as search-and-learn does (``last``, ``min`` or ``prod``)."""
    if step_scores is None:
        return None
    if isinstance(step_scores, (int, float)) and not isinstance(step_scores, bool):
        return float(step_scores)
    if not isinstance(step_scores, list) or not all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in step_scores
    ):
        raise LineError("each item of 'scores' must be a list of per-step numbers")
    if not step_scores:
        return None
    if how == "last":
        return float(step_scores[-1])
    if how == "min":
        return float(min(step_scores))
    return float(math.prod(step_scores))


def infer_approach(path: Path) -> str:
    name = path.name.lower().replace("-", "_")
    for a in ("beam_search", "dvts", "best_of_n"):
        if a in name:
            return a
    return "best_of_n"


def row_to_run(row: Any, index: int, *, approach: str, agg: str, query_prefix: str, dataset: str | None,
               prm: str) -> dict[str, Any]:
    """One search-and-learn row -> a generic run dict."""
    if not isinstance(row, dict):
        raise LineError(f"expected a JSON object, got {type(row).__name__}")
    for col in ("problem", "completions", "scores"):
        if col not in row:
            raise LineError(f"missing column {col!r}")
    comps, scores = row["completions"], row["scores"]
    if not isinstance(comps, list) or not comps or not all(isinstance(c, str) for c in comps):
        raise LineError("'completions' must be a non-empty list of strings")
    if not isinstance(scores, list) or len(scores) != len(comps):
        raise LineError(f"'scores' must have one entry per completion ({len(comps)})")
    toks = row.get("completion_tokens")
    if isinstance(toks, list):
        if len(toks) != len(comps):
            raise LineError(f"'completion_tokens' must have one entry per completion ({len(comps)})")
        tok_list = [t if isinstance(t, int) and not isinstance(t, bool) and t != -1 else None for t in toks]
    else:
        tok_list = [None] * len(comps)  # DVTS writes -1: unknown
    aggs = [aggregate(s, agg) for s in scores]
    qid = row.get("unique_id")
    run: dict[str, Any] = {
        "query_id": str(qid) if qid is not None else f"{query_prefix}:{index}",
        "question": row["problem"],
        "reference": row.get("answer"),
        "index": index,
        "score_scale": "prob",
    }
    if dataset:
        run["dataset"] = dataset
    meta = {k: row[k] for k in ("level", "subject") if row.get(k) is not None}
    if meta:
        run["meta"] = meta
    params = {"agg_strategy": agg, "scorer": prm}
    # one entry per completion: its text, and its token count and aggregated PRM score when given
    entries: list[dict[str, Any]] = []
    for c, t, a in zip(comps, tok_list, aggs, strict=True):
        e: dict[str, Any] = {"text": c}
        if t is not None:
            e["tokens"] = t
        if a is not None:
            e["score"] = a
        entries.append(e)
    if approach == "best_of_n":
        run.update(strategy="best_of_n", params=params, samples=entries)
        return run
    pred = row.get("pred")
    if not isinstance(pred, str):
        raise LineError("missing 'pred' (the selected completion)")
    best = [a for c, a in zip(comps, aggs, strict=True) if c == pred and a is not None]
    result: dict[str, Any] = {"text": pred, "beams": entries}
    if best:
        result["score"] = best[0]
    run.update(strategy=approach, params={**params, "n": len(comps)}, result=result)
    return run


def _read_rows(path: Path) -> Iterator[tuple[int, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
    else:
        yield from iter_jsonl_lines(path)


class SearchAndLearnReader:
    """Reads a search-and-learn output file (JSONL or Parquet)."""

    name = "search_and_learn"

    def __init__(self, path: str | Path, *, approach: str | None = None, agg_strategy: str = "last",
                 dataset: str | None = None, prm: str = "prm"):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path} not found")
        self.approach = approach or infer_approach(self.path)
        if self.approach not in APPROACHES:
            raise ValueError(f"approach must be one of {APPROACHES}, got {self.approach!r}")
        if agg_strategy not in AGGREGATIONS:
            raise ValueError(f"agg_strategy must be one of {AGGREGATIONS}, got {agg_strategy!r}")
        self.agg = agg_strategy
        self.dataset = dataset
        self.prm = prm

    def describe(self) -> dict[str, Any]:
        from rollouts.importers.base import file_sha256

        return {
            "format": self.name,
            "files": [{"name": self.path.name, "sha256": file_sha256(self.path)}],
            "approach": self.approach,
            "scorer": {"name": self.prm, "score": f"aggregate '{self.agg}' of per-step PRM scores"},
            "notes": "answers extracted and graded with math-verify; pred_*@n columns not imported",
        }

    def __len__(self) -> int:
        if self.path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).metadata.num_rows
        return count_lines(self.path)

    def __iter__(self) -> Iterator[tuple[str, int, Any]]:
        for row_index, (lineno, obj) in enumerate(_read_rows(self.path)):
            if isinstance(obj, LineError):
                yield str(self.path), lineno, obj
                continue
            try:
                yield str(self.path), lineno, row_to_run(
                    obj, row_index, approach=self.approach, agg=self.agg, query_prefix=self.path.stem,
                    dataset=self.dataset, prm=self.prm)
            except LineError as exc:
                yield str(self.path), lineno, exc
