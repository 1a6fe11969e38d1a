"""The action menu: which strategy/budget actions a cache offers, derived from it, never configured by hand.

- every pool (``sample_pool``) config with (at most) K samples per record yields budgets N in {1, 2, 4,
  8, ...} (powers of two <= K) plus K itself. N = 1 is one action (``<config>/sample@1``; no selector is
  needed); each N > 1 is offered with the ``majority`` selector, and with ``best_score`` and
  ``weighted`` only when every sample of that config in the cache carries a score;
- every ``beam_search`` / ``search_result`` config is one action, its id is the config id;
- races (``rollouts/strategies/race.py``), given as ``<selector>@<N>:agree<K>`` or ``...:first<M>``
  (``env.races``), on every pool config with N <= K whose samples all carry their generated tokens (the
  finish order needs them) and, for score selectors, their scores. Their id is
  ``<pool config id>/<selector>@<N>:agree<K>``.

Action ids are unique and stable (``<pool config id>/<selector>@<N>``); display names drop the pool
prefix when the cache has a single pool config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rollouts.cache import CacheError, RolloutCache
from rollouts.errors import ConfigError
from rollouts.strategies import POOL, RaceRule
from rollouts.strategies.selectors import SCORE_SELECTORS, SELECTORS

# The races every pool config offers by default (env.races): those that are the train+val-best static
# of the bundled cache at some point of the default λ grid, out of 90 candidates (docs/races.md).
DEFAULT_RACES: tuple[str, ...] = (
    "majority@4:first1", "best_score@4:first2", "best_score@4:first3", "best_score@8:first3",
    "best_score@8:first4", "best_score@8:first6", "best_score@16:first8", "best_score@8:agree4",
    "best_score@16:agree4",
)  # fmt: skip


@dataclass(frozen=True)
class Action:
    """One entry of the strategy menu."""

    id: str  # unique, stable: "<pool cfg>/<selector>@<N>" or the search config id
    config_id: str
    strategy: str  # the record kind: POOL, BEAM or SEARCH_RESULT (rollouts/strategies)
    selector: str | None  # sample@1 and search actions: None
    n: int  # budget (samples); a race: the samples it launches; search actions: 1
    name: str  # display name
    race: RaceRule | None = None  # a race derived from the pool (stops early, cancels the rest)

    @property
    def is_pool(self) -> bool:
        """Derived from a pool record (budgets and races)."""
        return self.strategy == POOL

    @property
    def is_budget(self) -> bool:
        """A plain budget of a pool: N samples, all waited for."""
        return self.strategy == POOL and self.race is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": self.id,
            "config_id": self.config_id,
            "strategy": self.strategy,
            "selector": self.selector,
            "n": self.n,
            "name": self.name,
        }
        if self.race is not None:
            d["race"] = {"k": self.race.k, "rule": self.race.rule}
        return d


def parse_race_action(text: str) -> tuple[str, RaceRule]:
    """``best_score@8:agree3`` -> (selector, rule); ConfigError naming the entry otherwise."""
    sel, _, rest = str(text).partition("@")
    if sel not in SELECTORS or not rest:
        raise ConfigError(
            f"env.races entry {text!r} is not <selector>@<N>:agree<K> or ...:first<M> "
            f"(selectors: {', '.join(SELECTORS)}; e.g. best_score@8:agree3)"
        )
    return sel, RaceRule.parse(rest)


def pool_budgets(k: int) -> list[int]:
    """Budgets offered for a pool of k samples: powers of two <= k, plus k."""
    out, n = [], 1
    while n <= k:
        out.append(n)
        n *= 2
    if out[-1] != k:
        out.append(k)
    return out


def build_menu(cache: RolloutCache, races: Sequence[str] = (), notes: list[str] | None = None) -> list[Action]:
    """The action menu found in the cache (see module docstring), with the ``races`` it can offer; why it
    could not offer some goes to ``notes``. Raises CacheError if empty."""
    configs: dict[str, PoolConfig] = {}
    for r in cache.records:
        cfg = r["config_id"]
        prev = configs.setdefault(cfg, PoolConfig(cfg, r["strategy"]))
        if prev.strategy != r["strategy"]:
            raise CacheError(
                f"{cache.path}: config {cfg!r} has records of strategies {prev.strategy!r} and {r['strategy']!r}"
            )
        if r["strategy"] == POOL:
            prev.k = max(prev.k, len(r["samples"]))
            prev.scored = prev.scored and all(s.get("score") is not None for s in r["samples"])
            prev.timed = prev.timed and all(s.get("tokens") is not None for s in r["samples"])
    if not configs:
        raise CacheError(f"{cache.path}: the cache has no records, so no action menu")
    return menu_of([configs[c] for c in cache.config_ids], races, notes)


@dataclass
class PoolConfig:
    """What the menu needs to know of one config: its strategy and, for a pool, its largest pool ``k``,
    whether every sample is scored and carries its generated tokens."""

    config_id: str
    strategy: str
    k: int = 0
    scored: bool = True
    timed: bool = True


def menu_of(configs: Sequence[PoolConfig], races: Sequence[str] = (), notes: list[str] | None = None) -> list[Action]:
    """The action menu of these configs, in their order (races last), as :func:`build_menu` derives it
    from a cache; a live run (env/live_table.py) derives it from its collection menu."""
    single_pool = sum(c.strategy == POOL for c in configs) == 1
    menu: list[Action] = []
    for c in configs:
        cfg, strat = c.config_id, c.strategy
        if strat != POOL:
            menu.append(Action(cfg, cfg, strat, None, 1, cfg))
            continue
        prefix = "" if single_pool else f"{cfg}/"
        for n in pool_budgets(c.k):
            if n == 1:
                menu.append(Action(f"{cfg}/sample@1", cfg, strat, None, 1, f"{prefix}sample@1"))
                continue
            for sel in SELECTORS:
                if sel in SCORE_SELECTORS and not c.scored:
                    continue
                menu.append(Action(f"{cfg}/{sel}@{n}", cfg, strat, sel, n, f"{prefix}{sel}@{n}"))
    for c in (c for c in configs if c.strategy == POOL):
        menu += _race_actions(c.config_id, c.k, c.scored, c.timed, races, single_pool, [] if notes is None else notes)
    return menu


def _race_actions(cfg: str, k: int, scored: bool, timed: bool, races: Sequence[str], single_pool: bool,
                  notes: list[str]) -> list[Action]:
    """The race actions ``races`` asks for that pool config ``cfg`` (pools of up to ``k`` samples) offers."""
    if races and not timed:
        notes.append(f"races are not offered on {cfg!r}: some of its samples lack their generated tokens, "
                     "which a race's finish order needs")
        return []
    out, prefix = [], "" if single_pool else f"{cfg}/"
    for text in races:
        sel, rule = parse_race_action(text)
        if rule.n > k or (sel in SCORE_SELECTORS and not scored):
            continue  # a budget above the pool, or a score selector without scores: not offered, as for budgets
        name = f"{sel}@{rule.n}:{rule.tag}"
        out.append(Action(f"{cfg}/{name}", cfg, POOL, sel, rule.n, f"{prefix}{name}", rule))
    return out


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
