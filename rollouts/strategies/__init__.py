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
from rollouts.strategies.race import RACE, RaceRule, RaceSpec, RaceWatch, run_race

__all__ = [
    "BEAM", "POOL", "RACE", "SEARCH_RESULT", "SEARCH_STRATEGIES", "SERVING_STRATEGIES", "STRATEGIES", "BeamSpec",
    "PoolSpec", "PromptedQuery", "RaceRule", "RaceSpec", "RaceWatch", "StrategyResult", "StrategySpec",
    "parse_serving_action", "parse_strategy", "run_race",
]  # fmt: skip

# The strategies a collection menu runs, by menu name (the shape of search-and-learn's approach table).
STRATEGIES: dict[str, type[StrategySpec]] = {POOL: PoolSpec, BEAM: BeamSpec}
# What a policy can play live: the collected strategies, plus races, which derive from a pool record in
# the cache (env/pool_outcomes.py) and run live as one streaming request cancelled at the stop.
SERVING_STRATEGIES: dict[str, type[StrategySpec]] = {**STRATEGIES, RACE: RaceSpec}


def parse_strategy(item: Mapping[str, Any]) -> StrategySpec:
    """The typed spec of a menu item, e.g. ``{strategy: sample_pool, n: 16}`` or
    ``{strategy: beam_search, n: 4, m: 2, max_iterations: 4}``; ValueError for an unknown strategy."""
    name = item.get("strategy")
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
    return STRATEGIES[name].from_item(dict(item))


def parse_serving_action(action: Mapping[str, Any]) -> tuple[StrategySpec, str | None]:
    """The run and selector of one policy.json serving action (:meth:`StrategySpec.serving_action`)."""
    name = action.get("strategy")
    if name not in SERVING_STRATEGIES:
        raise ValueError(f"unknown strategy {name!r} (known: {', '.join(SERVING_STRATEGIES)})")
    return SERVING_STRATEGIES[name].from_item(dict(action)), action.get("selector")
