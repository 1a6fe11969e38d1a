"""The outcome table: what each action of the menu (``env/menu.py``) would have cost and earned per query.

The table holds, per (query, action), the *expected* correctness, tokens and seconds and a mask (the
config has records for that query with enough samples):

- correctness of budget N drawn from a pool of K: the mean over subsets of size N (without
  replacement, in pool order) of the selected sample's correctness. Exact for N = 1 and N = K, exact
  enumeration when C(K, N) <= ``mc_subsets``, else a Monte-Carlo mean over ``mc_subsets`` seeded
  random subsets (the seed is ``outcome_seed``; the table is deterministic). Selection is vectorised
  in ``env/pool_outcomes.py``, with ties broken uniformly at random, taken in expectation. Ungraded
  samples (``correct`` is ``None``) count as wrong;
- tokens: what the strategy spec charges (``rollouts/strategies``): for a pool budget the generated
  tokens of the N samples (expected value N/K of the pool's total), plus the samples'
  ``scorer_tokens`` for the selectors that use scores (``best_score``, ``weighted``). A sample with
  ``tokens`` ``None`` gets an equal share of what the record's total leaves unexplained. Search
  records: record ``tokens`` + ``scorer_tokens``. Prompt tokens are not charged;
- seconds: the record's ``seconds_by_n[str(N)]`` (measured alone) if present, else the cache's
  latency model on one round ``Round(prompt_tokens, N, max generated tokens in the subset)`` (its
  expectation over subsets; the model is linear in that maximum), else, for N = K only, the record's
  own ``seconds``. Search records use their ``seconds``, else the latency model on their ``rounds``.
  Anything else is a :class:`CacheError`. With ``latency_load`` k (``env.latency_load``) every record
  is re-priced instead with the model measured at k queries in flight (``rollouts/latency_load.py``);
- records of the same (query, config) with several seeds are averaged.

Without latency: a cache with no seconds anywhere (no record has ``seconds`` or ``seconds_by_n``,
and meta.json has no latency model, e.g. an import of API rollouts without timings and with
``--no-latency-model``) gets seconds 0 everywhere and ``latency_available = False``: the env then
fixes λ_L at 0 and says so, and ``evaluate.py`` grids only λ_T. A cache where only some seconds are
missing is an error (it names a record), never a silent mix.

Ragged pools: records of one pool config may hold fewer samples than the config's largest pool K;
budgets N are offered up to K and masked for a query whose pool is smaller than N
(``short_pools`` lists them).

``OutcomeTable.sample`` draws one outcome instead (the env's ``outcome="sampled"`` mode): a seed
record uniformly, then a uniform subset of N samples, with the caller's generator, and applies the
real ``select`` with the caller's generator breaking ties.
"""
from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from env.menu import DEFAULT_RACES, Action, build_menu
from env.pool_outcomes import PoolGroup, PoolRecord, prepare_pool
from rollouts.cache import CacheError, RolloutCache, load_cache
from rollouts.errors import ConfigError
from rollouts.latency import LatencyModel, Round
from rollouts.strategies import SEARCH_STRATEGIES, BeamSpec, PoolSpec, run_race
from rollouts.strategies.selectors import select


def validate_lambda(name: str, value: Any) -> float:
    """A penalty must be a finite number >= 0; raise ConfigError naming it otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or v < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


# ----------------------------------------------------------------------------------------------
# The table


class OutcomeTable:
    """Per (query, action) expected correctness / tokens / seconds, a mask, and a sampler.

    Arrays (Q queries in cache order, A actions in menu order): ``correct``, ``tokens``, ``seconds``
    (float64, 0 where masked), ``mask`` (bool), ``features`` (float64, Q x D), ``prompt_tokens`` (Q).
    """

    @classmethod
    def for_env(cls, cache: RolloutCache | str | Path, env_config: Any, latency_load: int | None = None) -> OutcomeTable:
        """The table an env config (``EnvConfig`` / ``EscalateConfig``) prices: its Monte-Carlo settings,
        latency load and races; ``latency_load`` prices seconds at that load instead (None: the config's).
        Races the cache cannot offer are said once, as ``warning:`` lines on stderr."""
        table = cls(
            cache, mc_subsets=env_config.mc_subsets, outcome_seed=env_config.outcome_seed,
            latency_load=env_config.latency_load if latency_load is None else latency_load,
            latency_load_models=env_config.latency_load_models, races=getattr(env_config, "races", ()),
        )  # fmt: skip
        for note in table.race_notes:
            print(f"warning: {note}", file=sys.stderr)
        return table

    def __init__(
        self,
        cache: RolloutCache | str | Path,
        mc_subsets: int = 128,
        outcome_seed: int = 0,
        latency_load: int | None = None,
        latency_load_models: str | None = None,
        races: Sequence[str] = DEFAULT_RACES,
    ):
        if not isinstance(cache, RolloutCache):
            cache = load_cache(cache)
        if mc_subsets < 1:
            raise ConfigError(f"mc_subsets must be >= 1, got {mc_subsets}")
        self.cache_path = str(cache.path)
        self.meta = cache.meta
        self.mc_subsets = int(mc_subsets)
        self.outcome_seed = int(outcome_seed)
        self.race_notes: list[str] = []  # races the cache cannot offer, and why
        self.menu = build_menu(cache, races, self.race_notes)
        self.query_ids = cache.query_ids
        if not self.query_ids:
            raise CacheError(f"{cache.path}: no query has records")
        self.qindex = {q: i for i, q in enumerate(self.query_ids)}
        self.features = np.array([cache.queries[q]["features"] for q in self.query_ids], dtype=np.float64)
        if self.features.ndim != 2 or self.features.shape[1] == 0:
            raise CacheError(f"{cache.path}: queries need a non-empty 'features' vector")
        self.prompt_tokens = np.array(
            [cache.queries[q]["prompt_tokens"] for q in self.query_ids], dtype=np.int64
        )
        lm = cache.meta.get("latency_model")
        try:
            self.latency = LatencyModel.from_dict(lm) if lm else None
        except (KeyError, TypeError, ValueError) as exc:
            raise CacheError(f"{cache.path}/meta.json: unusable latency_model ({exc})") from exc
        # latency_load k: every record re-priced from its engine rounds with the model measured at
        # k queries in flight (rollouts/latency_load.py), instead of the seconds of a query alone
        self.latency_load = latency_load
        if latency_load is not None:
            from rollouts.latency_load import model_for_load

            try:
                self.latency = model_for_load(int(latency_load), latency_load_models)
            except ValueError as exc:
                raise ConfigError(f"env.latency_load: {exc}") from exc
        self.latency_available = self.latency is not None or any(
            r.get("seconds") is not None or r.get("seconds_by_n") for r in cache.records
        )
        self.latency_note = (
            None if self.latency_available else
            f"{cache.path}: no record has seconds and meta.json has no latency model: λ_L is fixed at 0 "
            "(token costs only)"
        )
        if self.latency_available and self.latency is None and any(a.race for a in self.menu):
            self.menu = [a for a in self.menu if a.race is None]
            self.race_notes.append(f"races are not offered on {cache.path}: they stop mid-round, and pricing "
                                   "that needs a latency model (meta.json has none; import with --latency-model)")
        self.action_ids = [a.id for a in self.menu]
        self.action_names = [a.name for a in self.menu]
        q_n, a_n = len(self.query_ids), len(self.menu)
        self.correct = np.zeros((q_n, a_n))
        self.tokens = np.zeros((q_n, a_n))
        self.seconds = np.zeros((q_n, a_n))
        self.mask = np.zeros((q_n, a_n), dtype=bool)
        self.exact = np.ones(a_n, dtype=bool)  # False where some budget used Monte-Carlo subsets
        # sampled-mode material: (qi, config) -> prepared records
        self._pools: dict[tuple[int, str], list[PoolRecord]] = {}
        self._search: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
        # pool records smaller than their config's largest pool: {query_id, config_id, k, masked_budgets}
        self.short_pools: list[dict[str, Any]] = []
        self._build(cache)

    # -- construction --------------------------------------------------------------------------
    def _build(self, cache: RolloutCache) -> None:
        actions_by_cfg: dict[str, list[int]] = {}
        for ai, a in enumerate(self.menu):
            actions_by_cfg.setdefault(a.config_id, []).append(ai)
        for cfg, ais in actions_by_cfg.items():
            strat = self.menu[ais[0]].strategy
            if strat in SEARCH_STRATEGIES:
                self._build_search(cache, cfg, ais[0])
            else:
                self._build_pool(cache, cfg, ais)

    def _build_search(self, cache: RolloutCache, cfg: str, ai: int) -> None:
        for qi, q in enumerate(self.query_ids):
            recs = cache.records_for(q, cfg)
            if not recs:
                continue
            outs = []
            for r in recs:
                secs = r["seconds"]
                if self.latency_load is not None:
                    if not r.get("rounds"):
                        raise CacheError(
                            f"{cache.path}: record ({q!r}, {cfg!r}) has no engine 'rounds', so it cannot "
                            f"be re-priced at env.latency_load {self.latency_load}"
                        )
                    secs = None  # re-priced below from its rounds at that load
                if secs is None and self.latency is not None and r.get("rounds"):
                    try:
                        secs = self.latency.predict([Round(**x) for x in r["rounds"]])
                    except TypeError as exc:
                        raise CacheError(
                            f"{cache.path}: record ({q!r}, {cfg!r}): malformed 'rounds' ({exc})"
                        ) from exc
                if secs is None and not self.latency_available:
                    secs = 0.0
                if secs is None:
                    raise CacheError(
                        f"{cache.path}: record ({q!r}, {cfg!r}, seed {r['seed']}) has no seconds "
                        f"(seconds_source {r['seconds_source']!r}); a search record needs its latency"
                    )
                ok = 1.0 if r["result"].get("correct") else 0.0
                # imported search results are charged as beam search is
                outs.append((ok, float(BeamSpec.charged_tokens(r["tokens"], r["scorer_tokens"])), float(secs)))
            self._search[(qi, cfg)] = outs
            arr = np.array(outs)
            self.correct[qi, ai], self.tokens[qi, ai], self.seconds[qi, ai] = arr.mean(axis=0)
            self.mask[qi, ai] = True

    def _pool_seconds(
        self, pool: PoolRecord, a: Action, mean_max_tokens: float, prompt_tokens: int, where: str
    ) -> float:
        """A pool action's seconds: one round of width ``a.n`` whose longest sample (a race: L_stop) has
        ``mean_max_tokens`` tokens."""
        n = a.n
        if not self.latency_available:
            return 0.0
        if str(n) in pool.seconds_by_n and self.latency_load is None and a.race is None:
            return pool.seconds_by_n[str(n)]
        if self.latency is not None:
            return self.latency.predict([Round(int(prompt_tokens), n, mean_max_tokens)])  # type: ignore[arg-type]
        if n == pool.k and pool.seconds is not None:
            return float(pool.seconds)
        raise CacheError(
            f"{self.cache_path}: no latency for {where} at budget {n}: the record has no "
            f"seconds_by_n[{str(n)!r}] and meta.json has no latency_model (give every record its seconds, "
            "import with a latency model, e.g. --latency-model api:a=..,b=..,c=.., or with none at all: "
            "λ_L then stays 0)"
        )

    def _build_pool(self, cache: RolloutCache, cfg: str, ais: list[int]) -> None:
        # Group records by pool size so subsets vectorise; accumulate per (qi, action) over seeds.
        groups: dict[int, list[tuple[int, PoolRecord, str]]] = {}
        for qi, q in enumerate(self.query_ids):
            recs = cache.records_for(q, cfg)
            if not recs:
                continue
            pools = [prepare_pool(r) for r in recs]
            self._pools[(qi, cfg)] = pools
            for r, p in zip(recs, pools, strict=True):
                groups.setdefault(p.k, []).append((qi, p, f"record ({q!r}, {cfg!r}, seed {r['seed']})"))
        sums: dict[int, dict[int, list[float]]] = {ai: {} for ai in ais}  # ai -> qi -> [sum_correct, sum_tokens, sum_seconds, count]
        for k, items in groups.items():
            group = PoolGroup.stack([p for _, p, _ in items])
            for ai in ais:
                a = self.menu[ai]
                if a.n > k:
                    continue  # masked for these records
                # the menu offers score selectors only where every sample is scored, so scores are there
                if a.race is not None:  # L_stop in place of the longest sample: the rest were cancelled
                    exp_correct, exp_tokens, mean_max, exact = group.race(
                        a.race, a.selector, self.mc_subsets, self.outcome_seed
                    )
                else:
                    exp_correct, exp_tokens, mean_max, exact = group.budget(
                        a.n, a.selector, self.mc_subsets, self.outcome_seed
                    )
                self.exact[ai] &= exact
                for j, (qi, p, where) in enumerate(items):
                    secs = self._pool_seconds(p, a, float(mean_max[j]), int(self.prompt_tokens[qi]), where)
                    acc = sums[ai].setdefault(qi, [0.0, 0.0, 0.0, 0])
                    acc[0] += exp_correct[j]
                    acc[1] += exp_tokens[j]
                    acc[2] += secs
                    acc[3] += 1
        k_max = max(groups) if groups else 0
        for k, items in groups.items():
            if k < k_max:
                masked = [self.menu[ai].n for ai in ais if self.menu[ai].n > k]
                for qi, _, _ in items:
                    self.short_pools.append(
                        {"query_id": self.query_ids[qi], "config_id": cfg, "k": k,
                         "masked_budgets": sorted(set(masked))}
                    )
        for ai, per_q in sums.items():
            for qi, (c, t, s, cnt) in per_q.items():
                self.correct[qi, ai], self.tokens[qi, ai], self.seconds[qi, ai] = c / cnt, t / cnt, s / cnt
                self.mask[qi, ai] = True

    # -- queries -------------------------------------------------------------------------------
    @property
    def n_actions(self) -> int:
        return len(self.menu)

    @property
    def feature_dim(self) -> int:
        return int(self.features.shape[1])

    def indices(self, query_ids: list[str]) -> np.ndarray:
        missing = [q for q in query_ids if q not in self.qindex]
        if missing:
            raise ConfigError(f"{len(missing)} query ids are not in the cache, e.g. {missing[0]!r}")
        return np.array([self.qindex[q] for q in query_ids], dtype=np.int64)

    def utility(self, lambda_tokens: float, lambda_seconds: float) -> np.ndarray:
        """Expected utility (Q, A); -inf where masked."""
        u = self.correct - lambda_tokens * self.tokens - lambda_seconds * self.seconds
        return np.where(self.mask, u, -np.inf)

    def sample(self, qi: int, ai: int, rng: np.random.Generator) -> tuple[float, float, float]:
        """One sampled outcome (correct, tokens, seconds) of action ai on query qi."""
        a = self.menu[ai]
        if not self.mask[qi, ai]:
            raise ConfigError(f"action {a.id!r} is not available for query {self.query_ids[qi]!r}")
        if a.strategy in SEARCH_STRATEGIES:
            outs = self._search[(qi, a.config_id)]
            return outs[int(rng.integers(len(outs)))] if len(outs) > 1 else outs[0]
        pools = [p for p in self._pools[(qi, a.config_id)] if p.k >= a.n]
        p = pools[int(rng.integers(len(pools)))] if len(pools) > 1 else pools[0]
        idx = np.sort(rng.choice(p.k, size=a.n, replace=False)) if a.n < p.k else np.arange(p.k)
        where = f"query {self.query_ids[qi]!r} config {a.config_id!r}"
        if a.race is not None:
            race = run_race(a.race, [p.keys[i] for i in idx], p.gen_tokens[idx], None if p.scores is None else
                            p.scores[idx], p.scorer_tokens[idx], a.selector or "majority", rng=rng)
            secs = self._pool_seconds(p, a, race.stop_tokens, int(self.prompt_tokens[qi]), where)
            return float(p.correct[idx[race.pick]]), race.tokens, secs
        if a.n == 1:
            pick = int(idx[0])
        else:
            sc = None if p.scores is None else [float(p.scores[i]) for i in idx]
            pick = int(idx[select(a.selector or "majority", [p.keys[i] for i in idx], sc, rng=rng)])
        tokens = PoolSpec.charged_tokens(float(p.gen_tokens[idx].sum()), float(p.scorer_tokens[idx].sum()), a.selector)
        secs = self._pool_seconds(p, a, float(p.gen_tokens[idx].max()), int(self.prompt_tokens[qi]), where)
        return float(p.correct[pick]), tokens, secs

    def pool_records(self, qi: int, config_id: str) -> list[PoolRecord]:
        """The prepared records (one per seed) of pool config ``config_id`` for query row ``qi``."""
        return self._pools.get((qi, config_id), [])

    def search_outcomes(self, qi: int, config_id: str) -> list[tuple[float, float, float]]:
        """(correct, tokens incl. scorer tokens, seconds) of each seed of search config ``config_id``."""
        return self._search.get((qi, config_id), [])

    def cost_scale(self, rows: np.ndarray | None = None) -> tuple[float, float]:
        """The largest per-action mean tokens and mean seconds (over rows, where available)."""
        rows = np.arange(len(self.query_ids)) if rows is None else rows
        m = self.mask[rows]
        cnt = np.maximum(m.sum(axis=0), 1)
        mt = (self.tokens[rows] * m).sum(axis=0) / cnt
        ms = (self.seconds[rows] * m).sum(axis=0) / cnt
        return float(mt.max()), float(ms.max())

    def _mean_over(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Per-action mean of ``values`` (Q, A) over ``rows`` where available (NaN if never)."""
        m = self.mask[rows]
        cnt = m.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(cnt > 0, (values[rows] * m).sum(axis=0) / np.maximum(cnt, 1), np.nan)

    def mean_costs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-action mean tokens and seconds over ``rows`` where available (NaN if never)."""
        return self._mean_over(self.tokens, rows), self._mean_over(self.seconds, rows)

    def mean_correct(self, rows: np.ndarray) -> np.ndarray:
        """Per-action mean expected correctness over ``rows`` where available (NaN if never)."""
        return self._mean_over(self.correct, rows)

    def mean_utility(self, rows: np.ndarray, lambda_tokens: float, lambda_seconds: float) -> np.ndarray:
        """Per-action mean expected utility over ``rows`` where available (NaN if never)."""
        mt, ms = self.mean_costs(rows)
        return self.mean_correct(rows) - lambda_tokens * mt - lambda_seconds * ms


_TABLES: dict[tuple[str, int, int, int | None, str | None, tuple[str, ...]], OutcomeTable] = {}


def get_table(
    cache: str | Path,
    mc_subsets: int = 128,
    outcome_seed: int = 0,
    latency_load: int | None = None,
    latency_load_models: str | None = None,
    races: Sequence[str] = DEFAULT_RACES,
) -> OutcomeTable:
    """A process-wide memo of tables by (resolved path, mc_subsets, seed, load, races): envs share one table."""
    key = (str(Path(cache).resolve()), int(mc_subsets), int(outcome_seed), latency_load, latency_load_models,
           tuple(races))
    if key not in _TABLES:
        _TABLES[key] = OutcomeTable(
            cache, mc_subsets=mc_subsets, outcome_seed=outcome_seed,
            latency_load=latency_load, latency_load_models=latency_load_models, races=races,
        )  # fmt: skip
    return _TABLES[key]
