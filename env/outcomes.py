"""The action menu and the outcome table: what each strategy/budget would have cost and earned per query.

The menu is derived from the cache, never configured by hand:

- every ``sample_pool`` config with (at most) K samples per record yields budgets N in {1, 2, 4, 8, ...}
  (powers of two <= K) plus K itself. N = 1 is one action (``<config>/sample@1``; no selector is
  needed); each N > 1 is offered with the ``majority`` selector, and with ``best_score`` and
  ``weighted`` only when every sample of that config in the cache carries a score;
- every ``beam_search`` / ``search_result`` config is one action, its id is the config id.

Action ids are unique and stable (``<pool config id>/<selector>@<N>``); display names drop the pool
prefix when the cache has a single pool config.

The outcome table holds, per (query, action), the *expected* correctness, tokens and seconds and a
mask (the config has records for that query with enough samples):

- correctness of budget N drawn from a pool of K: the mean over subsets of size N (without
  replacement, in pool order) of the selected sample's correctness. Exact for N = 1 and N = K, exact
  enumeration when C(K, N) <= ``mc_subsets``, else a Monte-Carlo mean over ``mc_subsets`` seeded
  random subsets (the seed is ``outcome_seed``; the table is deterministic). Selection follows
  :func:`rollouts.strategies.selectors.select` (vectorised here; tests check it against ``select``),
  with ties broken uniformly at random among the tied answers (``best_score``: tied samples), taken
  in expectation (:func:`expected_selected_correct`), so a budget's correctness does not depend on
  the order of the samples in the pool; ``None`` answers never win unless all are ``None``.
  Ungraded samples (``correct`` is ``None``) count as wrong;
- tokens: generated tokens of the N samples (expected value N/K of the pool's total), plus the
  samples' ``scorer_tokens`` for the selectors that use scores (``best_score``, ``weighted``). A
  sample with ``tokens`` ``None`` gets an equal share of what the record's total leaves unexplained.
  Search records: record ``tokens`` + ``scorer_tokens``. Prompt tokens are not charged;
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

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rollouts.cache import CacheError, RolloutCache, load_cache
from rollouts.errors import ConfigError
from rollouts.latency import LatencyModel, Round
from rollouts.strategies.selectors import SCORE_SELECTORS, SELECTORS, TIE_TOL, answer_key, select

SEARCH_STRATEGIES = ("beam_search", "search_result")


def validate_lambda(name: str, value: Any) -> float:
    """A penalty must be a finite number >= 0; raise ConfigError naming it otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(v) or v < 0:
        raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


@dataclass(frozen=True)
class Action:
    """One entry of the strategy menu."""

    id: str  # unique, stable: "<pool cfg>/<selector>@<N>" or the search config id
    config_id: str
    strategy: str  # sample_pool | beam_search | search_result
    selector: str | None  # sample@1 and search actions: None
    n: int  # budget (samples); search actions: 1
    name: str  # display name

    @property
    def is_pool(self) -> bool:
        return self.strategy == "sample_pool"

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
        if r["strategy"] == "sample_pool":
            pool_k[cfg] = max(pool_k.get(cfg, 0), len(r["samples"]))
            scored = all(s.get("score") is not None for s in r["samples"])
            pool_scored[cfg] = pool_scored.get(cfg, True) and scored
    if not strategies:
        raise CacheError(f"{cache.path}: the cache has no records, so no action menu")
    single_pool = len(pool_k) == 1
    menu: list[Action] = []
    for cfg in cache.config_ids:
        strat = strategies[cfg]
        if strat != "sample_pool":
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


# ----------------------------------------------------------------------------------------------
# Vectorised selection


def select_many(selector: str, answers: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
    """Vectorised :func:`select` over leading axes.

    ``answers``: int array (..., N) of answer ids, -1 for ``None`` (equal ids = equal answer keys);
    ``scores``: float array (..., N) (required by ``best_score``/``weighted``). Returns the chosen
    position (..., ) with the same semantics as ``select`` (earliest on ties; ``None`` never wins
    unless all are ``None``).
    """
    valid = answers >= 0
    if selector == "best_score":
        if scores is None:
            raise ValueError("best_score needs scores")
        any_valid = valid.any(axis=-1, keepdims=True)
        eff = np.where(valid | ~any_valid, scores, -np.inf)
        return np.argmax(eff, axis=-1)
    if selector not in ("majority", "weighted"):
        raise ValueError(f"unknown selector {selector!r}")
    eq = answers[..., :, None] == answers[..., None, :]
    if selector == "majority":
        weight = eq.sum(axis=-1).astype(np.float64)
    else:
        if scores is None:
            raise ValueError("weighted needs scores")
        weight = np.einsum("...ij,...j->...i", eq.astype(np.float64), scores.astype(np.float64))
    weight = np.where(valid, weight, -np.inf)
    return np.argmax(weight, axis=-1)


def expected_selected_correct(
    selector: str, answers: np.ndarray, scores: np.ndarray | None, correct: np.ndarray
) -> np.ndarray:
    """Vectorised expected correctness of :func:`select` with a uniformly random tie-break.

    ``answers``/``scores``/``correct``: (..., N) (``correct`` 0/1 floats). Among the tied best answers
    (``majority``, ``weighted``: each answer once, at its first sample) or the tied best samples
    (``best_score``), each is chosen with equal probability: the result is the mean of their
    correctness, the exact expectation of ``select(..., rng=...)`` over its draws.
    """
    valid = answers >= 0
    any_valid = valid.any(axis=-1, keepdims=True)
    eligible = valid | ~any_valid  # None never wins unless all are None
    if selector == "best_score":
        if scores is None:
            raise ValueError("best_score needs scores")
        weight = np.where(eligible, scores.astype(np.float64), -np.inf)
        candidate = eligible
    elif selector in ("majority", "weighted"):
        eq = answers[..., :, None] == answers[..., None, :]
        if selector == "majority":
            weight = (eq & eligible[..., None, :]).sum(axis=-1).astype(np.float64)
        else:
            if scores is None:
                raise ValueError("weighted needs scores")
            weight = np.einsum("...ij,...j->...i", (eq & eligible[..., None, :]).astype(np.float64),
                               scores.astype(np.float64))
        weight = np.where(eligible, weight, -np.inf)
        n = answers.shape[-1]
        earlier = np.tril(np.ones((n, n), dtype=bool), k=-1)  # [i, j]: j < i
        candidate = eligible & ~(eq & earlier).any(axis=-1)  # first sample of each answer
    else:
        raise ValueError(f"unknown selector {selector!r}")
    top = np.max(np.where(candidate, weight, -np.inf), axis=-1, keepdims=True)
    tied = candidate & (weight >= top - TIE_TOL)
    return (tied * correct).sum(axis=-1) / tied.sum(axis=-1)


def subsets_for(k: int, n: int, mc_subsets: int, seed: int) -> tuple[np.ndarray, bool]:
    """Index subsets (S, n) of range(k), ascending within a row; exact enumeration when small."""
    if n >= k:
        return np.arange(k)[None, :], True
    if math.comb(k, n) <= mc_subsets:
        return np.array(list(itertools.combinations(range(k), n)), dtype=np.int64), True
    rng = np.random.default_rng([seed, k, n])
    idx = np.argsort(rng.random((mc_subsets, k)), axis=1)[:, :n]
    return np.sort(idx, axis=1), False


# ----------------------------------------------------------------------------------------------
# Per-record preparation


@dataclass
class _Pool:
    """One sample_pool record, as arrays."""

    keys: list[str | None]
    answers: np.ndarray  # int ids, -1 for None
    correct: np.ndarray  # float 0/1
    gen_tokens: np.ndarray  # float
    scorer_tokens: np.ndarray  # float
    scores: np.ndarray | None
    seconds_by_n: dict[str, float]
    seconds: float | None

    @property
    def k(self) -> int:
        return len(self.keys)


def _prepare_pool(r: dict[str, Any]) -> _Pool:
    samples = r["samples"]
    keys = [answer_key(s["answer"]) for s in samples]
    ids: dict[str, int] = {}
    answers = np.array([-1 if key is None else ids.setdefault(key, len(ids)) for key in keys], dtype=np.int64)
    correct = np.array([1.0 if s["correct"] else 0.0 for s in samples])
    toks = [s["tokens"] for s in samples]
    known = [t for t in toks if t is not None]
    n_missing = len(toks) - len(known)
    fill = max(r["tokens"] - sum(known), 0) / n_missing if n_missing else 0.0
    gen = np.array([fill if t is None else float(t) for t in toks])
    if any("scorer_tokens" in s for s in samples):
        scorer = np.array([float(s.get("scorer_tokens") or 0) for s in samples])
    else:
        scorer = np.full(len(samples), float(r["scorer_tokens"]) / len(samples))
    sc = [s.get("score") for s in samples]
    scores = None if any(x is None for x in sc) else np.array(sc, dtype=np.float64)
    sbn = r.get("seconds_by_n") or {}
    return _Pool(
        keys, answers, correct, gen, scorer, scores, {str(k): float(v) for k, v in sbn.items()}, r["seconds"]
    )


# ----------------------------------------------------------------------------------------------
# The table


class OutcomeTable:
    """Per (query, action) expected correctness / tokens / seconds, a mask, and a sampler.

    Arrays (Q queries in cache order, A actions in menu order): ``correct``, ``tokens``, ``seconds``
    (float64, 0 where masked), ``mask`` (bool), ``features`` (float64, Q x D), ``prompt_tokens`` (Q).
    """

    def __init__(
        self,
        cache: RolloutCache | str | Path,
        mc_subsets: int = 128,
        outcome_seed: int = 0,
        latency_load: int | None = None,
        latency_load_models: str | None = None,
    ):
        if not isinstance(cache, RolloutCache):
            cache = load_cache(cache)
        if mc_subsets < 1:
            raise ConfigError(f"mc_subsets must be >= 1, got {mc_subsets}")
        self.cache_path = str(cache.path)
        self.meta = cache.meta
        self.mc_subsets = int(mc_subsets)
        self.outcome_seed = int(outcome_seed)
        self.menu = build_menu(cache)
        self.action_ids = [a.id for a in self.menu]
        self.action_names = [a.name for a in self.menu]
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
        q_n, a_n = len(self.query_ids), len(self.menu)
        self.correct = np.zeros((q_n, a_n))
        self.tokens = np.zeros((q_n, a_n))
        self.seconds = np.zeros((q_n, a_n))
        self.mask = np.zeros((q_n, a_n), dtype=bool)
        self.exact = np.ones(a_n, dtype=bool)  # False where some budget used Monte-Carlo subsets
        # sampled-mode material: (qi, config) -> prepared records
        self._pools: dict[tuple[int, str], list[_Pool]] = {}
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
                outs.append((ok, float(r["tokens"] + r["scorer_tokens"]), float(secs)))
            self._search[(qi, cfg)] = outs
            arr = np.array(outs)
            self.correct[qi, ai], self.tokens[qi, ai], self.seconds[qi, ai] = arr.mean(axis=0)
            self.mask[qi, ai] = True

    def _pool_seconds(
        self, pool: _Pool, n: int, mean_max_tokens: float, prompt_tokens: int, where: str
    ) -> float:
        if not self.latency_available:
            return 0.0
        if str(n) in pool.seconds_by_n and self.latency_load is None:
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
        groups: dict[int, list[tuple[int, _Pool, str]]] = {}
        for qi, q in enumerate(self.query_ids):
            recs = cache.records_for(q, cfg)
            if not recs:
                continue
            pools = [_prepare_pool(r) for r in recs]
            self._pools[(qi, cfg)] = pools
            for r, p in zip(recs, pools, strict=True):
                groups.setdefault(p.k, []).append((qi, p, f"record ({q!r}, {cfg!r}, seed {r['seed']})"))
        sums = {ai: {} for ai in ais}  # ai -> qi -> [sum_correct, sum_tokens, sum_seconds, count]
        for k, items in groups.items():
            answers = np.stack([p.answers for _, p, _ in items])
            correct = np.stack([p.correct for _, p, _ in items])
            gen = np.stack([p.gen_tokens for _, p, _ in items])
            scorer = np.stack([p.scorer_tokens for _, p, _ in items])
            have_scores = all(p.scores is not None for _, p, _ in items)
            scores = np.stack([p.scores for _, p, _ in items]) if have_scores else None  # type: ignore[misc]
            for ai in ais:
                a = self.menu[ai]
                if a.n > k:
                    continue  # masked for these records
                subsets, exact = subsets_for(k, a.n, self.mc_subsets, self.outcome_seed)
                self.exact[ai] &= exact
                if a.n == 1:
                    exp_correct = correct.mean(axis=1)
                else:
                    if a.selector in SCORE_SELECTORS and scores is None:
                        continue  # never happens: the menu only offers them when all are scored
                    exp_correct = np.empty(len(items))
                    for lo in range(0, len(items), 64):  # bound memory for big pools
                        sl = slice(lo, lo + 64)
                        ans = answers[sl][:, subsets]
                        sc = scores[sl][:, subsets] if scores is not None else None
                        cor = correct[sl][:, subsets]
                        exp = expected_selected_correct(a.selector or "majority", ans, sc, cor)  # (r, S)
                        exp_correct[sl] = exp.mean(axis=1)
                per_sample = gen + (scorer if a.selector in SCORE_SELECTORS else 0.0)
                exp_tokens = per_sample.mean(axis=1) * a.n
                mean_max = gen[:, subsets].max(axis=2).mean(axis=1)
                for j, (qi, p, where) in enumerate(items):
                    secs = self._pool_seconds(p, a.n, float(mean_max[j]), int(self.prompt_tokens[qi]), where)
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
        if a.n == 1:
            pick = int(idx[0])
        else:
            sc = None if p.scores is None else [float(p.scores[i]) for i in idx]
            pick = int(idx[select(a.selector or "majority", [p.keys[i] for i in idx], sc, rng=rng)])
        tokens = float(p.gen_tokens[idx].sum())
        if a.selector in SCORE_SELECTORS:
            tokens += float(p.scorer_tokens[idx].sum())
        where = f"query {self.query_ids[qi]!r} config {a.config_id!r}"
        secs = self._pool_seconds(p, a.n, float(p.gen_tokens[idx].max()), int(self.prompt_tokens[qi]), where)
        return float(p.correct[pick]), tokens, secs

    def pool_records(self, qi: int, config_id: str) -> list[_Pool]:
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


_TABLES: dict[tuple[str, int, int, int | None, str | None], OutcomeTable] = {}


def get_table(
    cache: str | Path,
    mc_subsets: int = 128,
    outcome_seed: int = 0,
    latency_load: int | None = None,
    latency_load_models: str | None = None,
) -> OutcomeTable:
    """A process-wide memo of tables by (resolved path, mc_subsets, seed, load): envs share one table."""
    key = (str(Path(cache).resolve()), int(mc_subsets), int(outcome_seed), latency_load, latency_load_models)
    if key not in _TABLES:
        _TABLES[key] = OutcomeTable(
            cache, mc_subsets=mc_subsets, outcome_seed=outcome_seed,
            latency_load=latency_load, latency_load_models=latency_load_models,
        )  # fmt: skip
    return _TABLES[key]
