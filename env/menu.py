"""The action menu: which strategy/budget actions a cache offers, derived from it, never configured by hand.

- every pool (``sample_pool``) config with (at most) K samples per record yields budgets N in {1, 2, 4,
  8, ...} (powers of two <= K) plus K itself. N = 1 is one action (``<config>/sample@1``; no selector is
  needed); each N > 1 is offered with the ``majority`` selector, and with ``best_score`` and
  ``weighted`` only when every sample of that config in the cache carries a score;
- every ``beam_search`` / ``search_result`` config is one action, its id is the config id.

Action ids are unique and stable (``<pool config id>/<selector>@<N>``); display names drop the pool
prefix when the cache has a single pool config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rollouts.cache import CacheError, RolloutCache
from rollouts.strategies import POOL
from rollouts.strategies.selectors import SCORE_SELECTORS, SELECTORS


@dataclass(frozen=True)
class Action:
    """One entry of the strategy menu."""

    id: str  # unique, stable: "<pool cfg>/<selector>@<N>" or the search config id
    config_id: str
    strategy: str  # the record kind: POOL, BEAM or SEARCH_RESULT (rollouts/strategies)
    selector: str | None  # sample@1 and search actions: None
    n: int  # budget (samples); search actions: 1
    name: str  # display name

    @property
    def is_pool(self) -> bool:
        return self.strategy == POOL

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "config_id": self.config_id,
            "strategy": self.strategy,
            "selector": self.selector,
            "n": self.n,
            "name": self.name,
        }


def pool_budgets(k: int) -> list[int]:
    """Budgets offered for a pool of k samples: powers of two <= k, plus k."""
    out, n = [], 1
    while n <= k:
        out.append(n)
        n *= 2
    if out[-1] != k:
        out.append(k)
    return out


def build_menu(cache: RolloutCache) -> list[Action]:
    """The action menu found in the cache (see module docstring); raises CacheError if empty."""
    pool_k: dict[str, int] = {}
    pool_scored: dict[str, bool] = {}
    strategies: dict[str, str] = {}
    for r in cache.records:
        cfg = r["config_id"]
        prev = strategies.setdefault(cfg, r["strategy"])
        if prev != r["strategy"]:
            raise CacheError(
                f"{cache.path}: config {cfg!r} has records of strategies {prev!r} and {r['strategy']!r}"
            )
        if r["strategy"] == POOL:
            pool_k[cfg] = max(pool_k.get(cfg, 0), len(r["samples"]))
            scored = all(s.get("score") is not None for s in r["samples"])
            pool_scored[cfg] = pool_scored.get(cfg, True) and scored
    if not strategies:
        raise CacheError(f"{cache.path}: the cache has no records, so no action menu")
    single_pool = len(pool_k) == 1
    menu: list[Action] = []
    for cfg in cache.config_ids:
        strat = strategies[cfg]
        if strat != POOL:
            menu.append(Action(cfg, cfg, strat, None, 1, cfg))
            continue
        prefix = "" if single_pool else f"{cfg}/"
        for n in pool_budgets(pool_k[cfg]):
            if n == 1:
                menu.append(Action(f"{cfg}/sample@1", cfg, strat, None, 1, f"{prefix}sample@1"))
                continue
            for sel in SELECTORS:
                if sel in SCORE_SELECTORS and not pool_scored[cfg]:
                    continue
                menu.append(Action(f"{cfg}/{sel}@{n}", cfg, strat, sel, n, f"{prefix}{sel}@{n}"))
    return menu


def menu_difference(old: list[str], new: list[str]) -> str:
    """A one-line description of how two menus (lists of action ids) differ."""
    only_old = [a for a in old if a not in new]
    only_new = [a for a in new if a not in old]
    parts = []
    if only_old:
        parts.append(f"only in the model: {only_old}")
    if only_new:
        parts.append(f"only in the cache: {only_new}")
    if not parts:
        parts.append("same actions in a different order")
    return "; ".join(parts)
