"""The strategy interface: a menu item parsed once into a typed spec, the queries it runs on and its results.

A spec (``PoolSpec`` in ``pool.py``, ``BeamSpec`` in ``beam_search.py``; the registry in ``__init__.py``)
owns everything that differs between strategies: its cache config id (the cache's schema: never change
the format), the menu item it comes from, its run function, what it charges, and its live answer.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rollouts.backends.base import Backend, SamplingSpec
from rollouts.grading import Grade
from rollouts.latency import Round
from rollouts.scorers import StepScorer

# The strategy names as the menu, the cache records and policy.json spell them (schema).
POOL = "sample_pool"  # a pool of n samples in one request; budgets and selectors are derived from it
BEAM = "beam_search"  # step-level beam search guided by the scorer
SEARCH_RESULT = "search_result"  # an imported search outcome: a cache record kind, nothing here runs it
SEARCH_STRATEGIES = (BEAM, SEARCH_RESULT)  # one action per config, charged as beam search is

GradeFn = Callable[[str | None, str], Grade]


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
    samples: list[dict[str, Any]] | None = None  # pool
    result: dict[str, Any] | None = None  # beam search
    iterations: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class StrategySpec(ABC):
    """One menu item, typed. Subclasses are frozen dataclasses whose fields are the item's keys besides ``strategy``."""

    name: ClassVar[str]  # the item's ``strategy``
    item_keys: ClassVar[tuple[str, ...]]  # the item's other keys, in menu order

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> StrategySpec:
        """The spec of a menu item (its ``strategy`` is this class's); other keys are ignored."""
        return cls(*(item[k] for k in cls.item_keys))

    def to_item(self) -> dict[str, Any]:
        """The menu item this spec parses from (the collection config's and the serving spec's form)."""
        return {"strategy": self.name, **{k: getattr(self, k) for k in self.item_keys}}

    def serving_action(self, selector: str | None) -> dict[str, Any]:
        """policy.json's entry for an action realised by this run with this selector."""
        return self.to_item()

    @property
    @abstractmethod
    def config_id(self) -> str:
        """The cache's key for this run's records (schema)."""

    @abstractmethod
    def calibration_runs(self, budgets: Sequence[int]) -> list[StrategySpec]:
        """The runs whose latency the collector measures for this item, given the pool budgets."""

    @abstractmethod
    def run(self, backend: Backend, queries: Sequence[PromptedQuery], sampling: SamplingSpec,
            scorer: StepScorer, grade_fn: GradeFn, seed: int) -> list[StrategyResult]:
        """Run the strategy for all queries in batched engine calls; one result per query, in order."""

    @abstractmethod
    def answer(self, backend: Backend, queries: Sequence[PromptedQuery], sampling: SamplingSpec,
               scorer: StepScorer, grade_fn: GradeFn, seed: int, selector: str | None = None) -> list[dict[str, Any]]:
        """Live routing: per query ``answer``, ``text``, ``correct``, ``tokens`` (charged as the outcome
        table charges them), ``generated_tokens`` (every token the engine generated) and ``rounds``."""


def request_seed(seed: int, query_id: str, salt: str) -> int:
    """A per-request seed: distinct per query (vLLM repeats outputs for equal seeds), stable across runs."""
    h = hashlib.sha256(f"{seed}|{salt}|{query_id}".encode()).digest()
    return int.from_bytes(h[:4], "little")
