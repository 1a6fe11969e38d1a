"""The escalation env's step menu: which step actions (draw k, wait for the next finish, stop with a
selector, run a beam config) a cache offers, and how each one-shot (Allocate-v0) action maps onto them.

``wait`` is on the menu only with ``env.watch: finish`` (the episode then stops at each finish of a
round); with ``round`` (the default) the menu is draws, stops and beams.

Built from an outcome table and the env's :class:`env.escalate_env.EscalateConfig`, or read back
from a checkpoint's meta / an export (:meth:`EscalateMenu.from_dict`) without a cache.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

from env.menu import pool_budgets
from env.outcomes import OutcomeTable
from rollouts.cache import CacheError
from rollouts.errors import ConfigError
from rollouts.strategies import SEARCH_STRATEGIES
from rollouts.strategies.selectors import SCORE_SELECTORS, SELECTORS

DEFAULT_SELECTOR = "majority"  # the selector of a one-shot pool action that names none
WAIT = "wait"  # the finish watch's step action: let the current round run to its next finish


class MenuSettings(Protocol):
    """What the menu reads of the env's config (:class:`env.escalate_env.EscalateConfig`)."""

    draw_sizes: Any  # "auto" or a list of ints >= 1
    pool_config: str | None
    watch: str  # "round" or "finish"


@dataclass(frozen=True)
class StepAction:
    id: str
    kind: str  # draw | wait | stop | beam
    k: int = 0  # draw
    selector: str | None = None  # stop
    config_id: str | None = None  # beam

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class EscalateMenu:
    """The step actions a cache offers, and how each one-shot (Allocate-v0) action maps onto them."""

    def __init__(self, table: OutcomeTable, cfg: MenuSettings):
        pools: dict[str, list[int]] = {}
        for ai, a in enumerate(table.menu):
            if a.is_pool:
                pools.setdefault(a.config_id, []).append(ai)
        if not pools:
            raise CacheError(
                f"{table.cache_path}: the cache has no sample_pool records, so there is nothing to escalate "
                "(ttc/Escalate-v0 draws from a pool of samples per query)"
            )
        if cfg.pool_config is not None:
            if cfg.pool_config not in pools:
                raise ConfigError(
                    f"env.pool_config {cfg.pool_config!r} is not a pool config of {table.cache_path}"
                )
            self.pool_config = cfg.pool_config
        else:
            self.pool_config = max(pools, key=lambda c: max(table.menu[ai].n for ai in pools[c]))
        self.pool_size = max(table.menu[ai].n for ai in pools[self.pool_config])
        if self.pool_size < 2:
            raise CacheError(
                f"{table.cache_path}: config {self.pool_config!r} has pools of one sample, so there is "
                "nothing to escalate (ttc/Escalate-v0 needs at least 2 samples per pool)"
            )
        self.has_scores = any(table.menu[ai].selector in SCORE_SELECTORS for ai in pools[self.pool_config])
        sizes = pool_budgets(self.pool_size) if cfg.draw_sizes == "auto" else sorted(set(cfg.draw_sizes))
        if max(sizes) > self.pool_size:
            raise ConfigError(
                f"env.draw_sizes {sizes} exceed the pool size {self.pool_size} of {self.pool_config!r}"
            )
        self.watch = str(getattr(cfg, "watch", "round"))
        acts = [StepAction(f"draw@{k}", "draw", k=k) for k in sizes]
        if self.watch == "finish":
            acts.append(StepAction(WAIT, "wait"))
        acts += [StepAction(f"stop:{s}", "stop", selector=s) for s in SELECTORS]
        acts += [
            StepAction(a.id, "beam", config_id=a.config_id)
            for a in table.menu
            if a.strategy in SEARCH_STRATEGIES
        ]
        self._index(acts)

    def _index(self, acts: list[StepAction]) -> None:
        self.actions = acts
        self.ids = [a.id for a in acts]
        self.draw_index = {a.k: i for i, a in enumerate(acts) if a.kind == "draw"}
        self.wait_index: int | None = next((i for i, a in enumerate(acts) if a.kind == "wait"), None)
        self.stop_index = {a.selector: i for i, a in enumerate(acts) if a.kind == "stop"}
        self.beam_index = {a.config_id: i for i, a in enumerate(acts) if a.kind == "beam"}
        self.beam_configs = [a.config_id for a in acts if a.kind == "beam" and a.config_id is not None]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EscalateMenu:
        """The menu stored by :meth:`to_dict` (in a checkpoint's meta or an export), without a cache."""
        menu = cls.__new__(cls)
        menu.watch = str(d.get("watch", "round"))
        menu.pool_config, menu.pool_size, menu.has_scores = (
            d["pool_config"],
            int(d["pool_size"]),
            bool(d["has_scores"]),
        )
        keys = ("id", "kind", "k", "selector", "config_id")
        menu._index([StepAction(**{k: a[k] for k in keys}) for a in d["actions"]])
        return menu

    def __len__(self) -> int:
        return len(self.actions)

    def oneshot_plan(self, action) -> list[int] | None:
        """The step actions that realise one-shot action ``action`` (an :class:`env.outcomes.Action`):
        ``draw@N`` then ``stop:<selector>``, or the beam; None if the menu cannot (another pool config,
        or N not a draw size)."""
        if action.strategy in SEARCH_STRATEGIES:
            return [self.beam_index[action.config_id]] if action.config_id in self.beam_index else None
        if action.race is not None:
            return None  # a race stops mid-round; the step menu draws whole rounds
        if action.config_id != self.pool_config or action.n not in self.draw_index:
            return None
        return [self.draw_index[action.n], self.stop_index[action.selector or DEFAULT_SELECTOR]]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "pool_config": self.pool_config,
            "pool_size": self.pool_size,
            "has_scores": self.has_scores,
            "actions": [a.to_dict() for a in self.actions],
        }
        if self.watch != "round":  # round-watch menus are stored as they were before the finish watch
            d["watch"] = self.watch
        return d
