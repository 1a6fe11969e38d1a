"""Strategies behind one signature (see ``base.py``): the registry of menu names and their typed specs.

A menu item parses once, here, into its spec; the collector, the outcome table, export's serving spec,
``route.py`` and the sequential router then go through the spec, never through the item's keys.

    parse_strategy({"strategy": "sample_pool", "n": 16}).config_id          # "pool:n=16"
    parse_strategy({"strategy": "beam_search", "n": 4, "m": 2, "max_iterations": 4}).run(backend, ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rollouts.strategies.base import (
    BEAM,
    POOL,
    SEARCH_RESULT,
    SEARCH_STRATEGIES,
    PromptedQuery,
    StrategyResult,
    StrategySpec,
)
from rollouts.strategies.beam_search import BeamSpec
from rollouts.strategies.pool import PoolSpec

__all__ = [
    "BEAM", "POOL", "SEARCH_RESULT", "SEARCH_STRATEGIES", "STRATEGIES", "BeamSpec", "PoolSpec", "PromptedQuery",
    "StrategyResult", "StrategySpec", "parse_serving_action", "parse_strategy",
]  # fmt: skip

# The runnable strategies by menu name (the shape of search-and-learn's approach table).
STRATEGIES: dict[str, type[StrategySpec]] = {POOL: PoolSpec, BEAM: BeamSpec}


def parse_strategy(item: Mapping[str, Any]) -> StrategySpec:
    """The typed spec of a menu item, e.g. ``{strategy: sample_pool, n: 16}`` or
    ``{strategy: beam_search, n: 4, m: 2, max_iterations: 4}``; ValueError for an unknown strategy."""
    name = item.get("strategy")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[name].from_item(dict(item))


def parse_serving_action(action: Mapping[str, Any]) -> tuple[StrategySpec, str | None]:
    """The run and selector of one policy.json serving action (:meth:`StrategySpec.serving_action`)."""
    return parse_strategy(action), action.get("selector")
