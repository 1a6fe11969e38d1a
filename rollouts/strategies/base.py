"""What every strategy run produces and needs: a prompted query, and one result per query."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rollouts.latency import Round


@dataclass
class PromptedQuery:
    """A query ready for the engine: its id, question, reference answer and chat-formatted token ids."""

    query_id: str
    question: str
    answer: str | None
    prompt_ids: list[int]


@dataclass
class StrategyResult:
    """One strategy run on one query: what the cache record is built from."""

    query_id: str
    config_id: str
    strategy: str
    params: dict[str, Any]
    tokens: int  # every generated token, pruned beams included
    scorer_tokens: int
    scorer_seconds: float
    rounds: list[Round]  # the engine calls this query's run made, for the latency model
    samples: list[dict[str, Any]] | None = None  # sample_pool
    result: dict[str, Any] | None = None  # beam_search
    iterations: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
