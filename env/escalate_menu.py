"""The escalation env's step menu: which step actions (draw k, wait for the next finish, stop with a
selector, run a beam config) a cache offers, and how each one-shot (Allocate-v0) action maps onto them.

``wait`` is on the menu only with ``env.watch: finish`` (the episode then stops at each finish of a
round); with ``round`` (the default) the menu is draws, stops and beams.

Several pools (``env.pools``, default ``all``): a cache may hold several pool configs per query
(prompt styles, temperatures, models: configs that differ by ``source`` or any other parameter). The
menu then draws from each: ``draw@k:<label>`` per pool (the label is the value of the config parameter
that tells the pools apart, e.g. ``draw@4:a``), and every pool's one-shot actions are first moves. The
*primary* pool (``pools[0]``) is the one with the most samples (ties: the first in the cache) or, with
a list, its first entry; ``draw_index`` is its draws (the single-pool stopping rules draw from it).
With one pool the ids stay ``draw@k`` and the stored menu is what it was before pools existed.

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


POOL_CHOICES = ("all", "primary")  # env.pools: every pool config, the largest one only, or a list


@dataclass(frozen=True)
class StepAction:
    id: str
    kind: str  # draw | wait | stop | beam
    k: int = 0  # draw
    selector: str | None = None  # stop
    config_id: str | None = None  # beam
    pool: int = 0  # draw: the index of its pool in EscalateMenu.pools

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.pool:  # stored as before pools existed
            del d["pool"]
        return d


@dataclass(frozen=True)
class Pool:
    """One pool config the menu draws from."""

    config: str
    label: str  # the draw ids' suffix (``draw@4:<label>``) when the menu has several pools
    size: int  # K: the most samples of its records
    has_scores: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _params(config_id: str) -> dict[str, str]:
    body = config_id.split(":", 1)[1] if ":" in config_id else config_id
    out: dict[str, str] = {}
    for kv in body.split(","):
        key, _, value = kv.partition("=")
        out[key] = value or key
    return out


def pool_labels(configs: list[str]) -> list[str]:
    """Short readable labels: the values of the config parameters in which the pools differ (``a``,
    ``b`` for ``pool:n=8,source=a`` / ``...source=b``), else ``p0``, ``p1``, ..."""
    params = [_params(c) for c in configs]
    keys = list(dict.fromkeys(k for p in params for k in p))
    differ = [k for k in keys if len({p.get(k) for p in params}) > 1]
    labels = [",".join(p.get(k, "-") for k in differ) for p in params]
    if any(not x or not all(c.isalnum() or c in "._-,+" for c in x) for x in labels) or len(set(labels)) < len(labels):
        labels = [f"p{i}" for i in range(len(configs))]
    return labels


def _choose_pools(table: OutcomeTable, cfg: MenuSettings, pools: dict[str, list[int]]) -> list[str]:
    """The pool configs the menu draws from, the primary first (see the module docstring)."""
    sizes = {c: max(table.menu[ai].n for ai in idx) for c, idx in pools.items()}
    largest = max(pools, key=lambda c: sizes[c])
    choice = getattr(cfg, "pools", "all")
    if cfg.pool_config is not None:
        if cfg.pool_config not in pools:
            raise ConfigError(f"env.pool_config {cfg.pool_config!r} is not a pool config of {table.cache_path}")
        if choice not in POOL_CHOICES and list(choice) != [cfg.pool_config]:
            raise ConfigError(f"env.pool_config {cfg.pool_config!r} pins one pool, but env.pools lists {choice}")
        return [cfg.pool_config]
    if choice == "primary":
        return [largest]
    if choice == "all":
        return [largest] + [c for c in pools if c != largest]
    for c in choice:
        if c not in pools:
            raise ConfigError(
                f"env.pools entry {c!r} is not a pool config of {table.cache_path} (its pools: {', '.join(pools)})"
            )
    return list(choice)


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
        chosen = _choose_pools(table, cfg, pools)
        labels = pool_labels(chosen) if len(chosen) > 1 else [""]
        infos = []
        for c, label in zip(chosen, labels, strict=True):
            size = max(table.menu[ai].n for ai in pools[c])
            if size < 2:
                raise CacheError(
                    f"{table.cache_path}: config {c!r} has pools of one sample, so there is "
                    "nothing to escalate (ttc/Escalate-v0 needs at least 2 samples per pool)"
                )
            infos.append(Pool(c, label, size, any(table.menu[ai].selector in SCORE_SELECTORS for ai in pools[c])))
        self.watch = str(getattr(cfg, "watch", "round"))
        acts: list[StepAction] = []
        for p, pool in enumerate(infos):
            sizes = pool_budgets(pool.size) if cfg.draw_sizes == "auto" else sorted(set(cfg.draw_sizes))
            if max(sizes) > pool.size:
                raise ConfigError(f"env.draw_sizes {sizes} exceed the pool size {pool.size} of {pool.config!r}")
            suffix = f":{pool.label}" if len(infos) > 1 else ""
            acts += [StepAction(f"draw@{k}{suffix}", "draw", k=k, pool=p) for k in sizes]
        if self.watch == "finish":
            acts.append(StepAction(WAIT, "wait"))
        acts += [StepAction(f"stop:{s}", "stop", selector=s) for s in SELECTORS]
        acts += [
            StepAction(a.id, "beam", config_id=a.config_id)
            for a in table.menu
            if a.strategy in SEARCH_STRATEGIES
        ]
        self._set_pools(infos)
        self._index(acts)
        primary = [p for qi in range(len(table.query_ids)) for p in table.pool_records(qi, chosen[0])]
        # every sample of the primary pool has a confidence (mean token log-prob): the confidence rules' pool
        self.has_confidence = bool(primary) and all(p.confidence is not None for p in primary)

    def _set_pools(self, pools: list[Pool]) -> None:
        self.pools = pools
        self.pool_config, self.pool_size = pools[0].config, pools[0].size  # the primary pool
        # with several pools a score selector needs every pool's scores
        self.has_scores = all(p.has_scores for p in pools)
        self.pool_configs = [p.config for p in pools]
        self.pool_sizes = [p.size for p in pools]
        self.total_size = sum(self.pool_sizes)  # the most samples an episode can draw

    def _index(self, acts: list[StepAction]) -> None:
        self.actions = acts
        self.ids = [a.id for a in acts]
        self.pool_draw_index: list[dict[int, int]] = [{} for _ in self.pools]
        for i, a in enumerate(acts):
            if a.kind == "draw":
                self.pool_draw_index[a.pool][a.k] = i
        self.draw_index = self.pool_draw_index[0]  # the primary pool's draws
        self.wait_index: int | None = next((i for i, a in enumerate(acts) if a.kind == "wait"), None)
        self.stop_index = {a.selector: i for i, a in enumerate(acts) if a.kind == "stop"}
        self.beam_index = {a.config_id: i for i, a in enumerate(acts) if a.kind == "beam"}
        self.beam_configs = [a.config_id for a in acts if a.kind == "beam" and a.config_id is not None]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EscalateMenu:
        """The menu stored by :meth:`to_dict` (in a checkpoint's meta or an export), without a cache."""
        menu = cls.__new__(cls)
        menu.watch = str(d.get("watch", "round"))
        if d.get("pools"):
            pools = [Pool(str(p["config"]), str(p["label"]), int(p["size"]), bool(p["has_scores"])) for p in d["pools"]]
        else:  # one pool (every menu stored before pools existed)
            pools = [Pool(str(d["pool_config"]), "", int(d["pool_size"]), bool(d["has_scores"]))]
        menu._set_pools(pools)
        menu.has_scores = bool(d["has_scores"])
        menu.has_confidence = False  # not stored: only the cache tells (no rule grid is built from a stored menu)
        keys = ("id", "kind", "k", "selector", "config_id")
        menu._index([StepAction(**{k: a[k] for k in keys}, pool=int(a.get("pool", 0))) for a in d["actions"]])
        return menu

    def __len__(self) -> int:
        return len(self.actions)

    def pool_of(self, config_id: str) -> int | None:
        """The index of pool config ``config_id`` in :attr:`pools`, None if the menu does not draw from it."""
        return self.pool_configs.index(config_id) if config_id in self.pool_configs else None

    def oneshot_plan(self, action) -> list[int] | None:
        """The step actions that realise one-shot action ``action`` (an :class:`env.outcomes.Action`):
        ``draw@N`` of its pool then ``stop:<selector>``, or the beam; None if the menu cannot (a pool
        config it does not draw from, or N not a draw size)."""
        if action.strategy in SEARCH_STRATEGIES:
            return [self.beam_index[action.config_id]] if action.config_id in self.beam_index else None
        if action.race is not None:
            return None  # a race stops mid-round; the step menu draws whole rounds
        p = self.pool_of(action.config_id)
        if p is None or action.n not in self.pool_draw_index[p]:
            return None
        return [self.pool_draw_index[p][action.n], self.stop_index[action.selector or DEFAULT_SELECTOR]]

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "pool_config": self.pool_config,
            "pool_size": self.pool_size,
            "has_scores": self.has_scores,
            "actions": [a.to_dict() for a in self.actions],
        }
        if self.watch != "round":  # round-watch menus are stored as they were before the finish watch
            d["watch"] = self.watch
        if len(self.pools) > 1:  # one-pool menus are stored as they were before pools existed
            d["pools"] = [p.to_dict() for p in self.pools]
        return d
