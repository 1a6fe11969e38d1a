"""The outcome table of a live run: every query of the live dataset, every action of the live menu, its
entries filled as the cache gets their records.

It is an :class:`env.outcomes.OutcomeTable` (the env, the encoder, PPO and the export read it as they
read a cached one) whose rows are priced by the outcome table itself: the records of some queries go
through ``OutcomeTable`` as a small cache of those queries alone, and its entries are copied in by
action id. ``known[q, a]`` says which entries hold a priced outcome; ``mask`` says what a policy may
pick (every action of the menu, on every query of the train and validation splits; test rows are
masked: they are never generated while training).

Statistics over rows (``cost_scale``, the per-action means the λ ranges, the λ grid and the utility
actor's priors read) are taken over the *reference rows*, the validation split, which a live run
completes first: the train rows hold only what the policy asked for, so their means would be those of
its choices, not of the actions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from env.menu import PoolConfig, menu_of
from env.outcomes import OutcomeTable
from env.pool_outcomes import PoolRecord
from rollouts.cache import RolloutCache
from rollouts.latency import LatencyModel
from rollouts.strategies import POOL, StrategySpec


class LiveTable(OutcomeTable):
    """See the module docstring. Built empty (features only); :meth:`add` prices queries' records."""

    def __init__(self, cache: RolloutCache, strategies: Sequence[StrategySpec], query_ids: list[str],
                 env_config: Any, masked: set[str]):
        self.cache_path = str(cache.path)
        self.meta = cache.meta
        self.mc_subsets, self.outcome_seed = int(env_config.mc_subsets), int(env_config.outcome_seed)
        self.latency_load, self.latency_load_models = env_config.latency_load, env_config.latency_load_models
        self.races = list(getattr(env_config, "races", ()))
        self.race_notes: list[str] = []
        configs = [PoolConfig(s.config_id, s.name, getattr(s, "n", 0) if s.name == POOL else 0) for s in strategies]
        self.menu = menu_of(configs, self.races, self.race_notes)
        self.query_ids = list(query_ids)
        self.qindex = {q: i for i, q in enumerate(self.query_ids)}
        self.features = np.array([cache.queries[q]["features"] for q in self.query_ids], dtype=np.float64)
        self.prompt_tokens = np.array([cache.queries[q]["prompt_tokens"] for q in self.query_ids], dtype=np.int64)
        lm = cache.meta.get("latency_model")
        self.latency = LatencyModel.from_dict(lm) if lm else None
        self.latency_available = self.latency is not None or self.latency_load is not None
        self.latency_note = None if self.latency_available else (
            f"{cache.path}: meta.json has no latency model (calibration_queries: 0): λ_L is fixed at 0")
        self.action_ids = [a.id for a in self.menu]
        self.action_names = [a.name for a in self.menu]
        self.aindex = {a: i for i, a in enumerate(self.action_ids)}
        q_n, a_n = len(self.query_ids), len(self.menu)
        self.correct, self.tokens, self.seconds = np.zeros((q_n, a_n)), np.zeros((q_n, a_n)), np.zeros((q_n, a_n))
        self.mask = np.ones((q_n, a_n), dtype=bool)
        for q in masked:
            self.mask[self.qindex[q]] = False
        self.known = np.zeros((q_n, a_n), dtype=bool)
        self.exact = np.ones(a_n, dtype=bool)
        self._pools: dict[tuple[int, str], list[PoolRecord]] = {}
        self._search: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
        self.short_pools: list[dict[str, Any]] = []
        self.reference_rows = np.arange(0)

    def add(self, cache: RolloutCache, query_ids: Sequence[str], records: list[dict[str, Any]]) -> None:
        """Price ``records`` (every record of ``query_ids``) with the outcome table and copy them in."""
        if not records:
            return
        sub = RolloutCache(path=cache.path, meta=self.meta, queries={q: cache.queries[q] for q in query_ids},
                           records=records)
        t = OutcomeTable(sub, mc_subsets=self.mc_subsets, outcome_seed=self.outcome_seed,
                         latency_load=self.latency_load, latency_load_models=self.latency_load_models, races=self.races)
        cols = np.array([self.aindex[a] for a in t.action_ids])  # KeyError: an action outside the live menu
        rows = np.array([self.qindex[q] for q in t.query_ids])
        for name in ("correct", "tokens", "seconds"):
            getattr(self, name)[np.ix_(rows, cols)] = np.where(t.mask, getattr(t, name), getattr(self, name)[np.ix_(rows, cols)])
        self.known[np.ix_(rows, cols)] |= t.mask
        self.exact[cols] &= t.exact
        for (qi, cfg), pools in t._pools.items():
            self._pools[(int(rows[qi]), cfg)] = pools
        for (qi, cfg), outs in t._search.items():
            self._search[(int(rows[qi]), cfg)] = outs

    def missing(self, pairs: Sequence[tuple[int, int]]) -> dict[str, list[int]]:
        """Of (row, action) pairs, the rows whose config has no record yet, by config id (in order, once)."""
        out: dict[str, list[int]] = {}
        for qi, ai in pairs:
            if not self.known[qi, ai]:
                rows = out.setdefault(self.menu[ai].config_id, [])
                if qi not in rows:
                    rows.append(qi)
        return out

    # -- statistics: over the reference rows (module docstring) ---------------------------------------
    def cost_scale(self, rows: np.ndarray | None = None) -> tuple[float, float]:
        return super().cost_scale(self.reference_rows)

    def _mean_over(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return super()._mean_over(values, self.reference_rows)
