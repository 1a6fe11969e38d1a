"""The escalation environment, registered as ``ttc/Escalate-v0``: watch the first samples, then stop,
sample more, or switch to beam search.

One query per episode, several decisions. Same cache, splits (``make_splits``), λ sampling, penalty
encoding and query features as ``ttc/Allocate-v0`` (it subclasses :class:`env.allocate_env.AllocateEnv`
for all of that). The pool is the cache's ``sample_pool`` config with the most samples (or
``pool_config``); its K samples of the query are drawn without replacement in a permutation fixed at
``reset`` by the episode's generator (``options={"order": [...]}`` fixes it explicitly), so a replay with
the same seed gives the same samples, costs and reward.

Actions (``Discrete``, :meth:`EscalateEnv.action_masks`), in this order:

- ``draw@k`` for k in ``draw_sizes`` (``auto``: 1, 2, 4, ... and K, as Allocate-v0's budgets): the next
  k samples of the order, one engine round of width k; masked when fewer than k samples are left;
- ``stop:<selector>`` for majority, best_score, weighted: answer with that selector over the drawn
  samples; masked before the first sample, score selectors masked when the pool has no scores;
- one action per beam/search config of the cache (its id): run it, answer with its result (earlier
  samples stay paid for); masked where the query has no such record.

A masked action forfeits the episode (correctness 0, nothing more charged, ``info["illegal"]``).
So every Allocate-v0 action is reachable as a first move (``draw@N`` then ``stop:<sel>``, or the beam).
Once the pool is exhausted only the stop and beam actions stay legal: the episode then ends with the
next decision (the selector is the policy's choice, so ``best_score@K`` stays reachable).

Costs, charged as they are incurred (the return is the episode's utility): a draw costs its samples'
generated tokens and the latency model's seconds for one round ``Round(prompt_tokens, k, longest of the
k samples)`` (the round's samples run in parallel; rounds add up); a score selector adds the drawn
samples' scorer tokens; a beam adds its record's tokens (scorer tokens included) and seconds. Reward
per step: ``reward_scale * (correct·[final] − λ_T·Δtokens − λ_L·Δseconds)``, divided with
``reward_norm="context"`` by the same per-episode factor as Allocate-v0.

Observation: ``[Allocate-v0's observation (query features, encoded λ), seen...]`` where ``seen``
(:data:`SEEN_FEATURES`) is built by :class:`SeenState` from the drawn samples, the same code for cached
and live samples (``policies/sequential_router.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from env.allocate_env import OBS_BOUND, AllocateEnv, EnvConfig
from env.outcomes import SEARCH_STRATEGIES, OutcomeTable, pool_budgets
from rollouts.cache import CacheError
from rollouts.errors import ConfigError
from rollouts.latency import Round
from rollouts.strategies.selectors import SCORE_SELECTORS, SELECTORS, select

SEEN_FEATURES = (
    "drawn_share",  # samples drawn / pool size
    "top1_share",  # votes of the leading answer / samples drawn
    "top2_share",
    "distinct_share",  # distinct parsed answers / pool size
    "unparsed_share",  # samples without an answer / samples drawn
    "leader_mean_score",
    "max_score",
    "mean_length",  # mean generated tokens per drawn sample / the train split's mean
    "tokens_spent",  # / the train cost scale C_T
    "seconds_spent",  # / the train cost scale C_L
    "rounds",  # / the most rounds an episode can take (K)
)
DEFAULT_SELECTOR = "majority"


@dataclass
class EscalateConfig(EnvConfig):
    """Allocate-v0's settings plus the escalation menu (``env:`` in config.yml with ``kind: escalate``)."""

    kind: str = "escalate"
    draw_sizes: Any = "auto"  # auto: pool_budgets(K); or a list of ints >= 1
    pool_config: str | None = None  # the pool config to draw from (default: the one with most samples)

    def validate(self) -> None:
        super().validate()
        if self.kind != "escalate":
            raise ConfigError(f"env.kind must be 'escalate' for ttc/Escalate-v0, got {self.kind!r}")
        if self.draw_sizes != "auto" and not (
            isinstance(self.draw_sizes, list)
            and self.draw_sizes
            and all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in self.draw_sizes)
        ):
            raise ConfigError(
                f"env.draw_sizes must be 'auto' or a list of integers >= 1, got {self.draw_sizes!r}"
            )


# ----------------------------------------------------------------------------------------------
# The menu


@dataclass(frozen=True)
class StepAction:
    id: str
    kind: str  # draw | stop | beam
    k: int = 0  # draw
    selector: str | None = None  # stop
    config_id: str | None = None  # beam

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "k": self.k,
            "selector": self.selector,
            "config_id": self.config_id,
        }


class EscalateMenu:
    """The step actions a cache offers, and how each one-shot (Allocate-v0) action maps onto them."""

    def __init__(self, table: OutcomeTable, cfg: EscalateConfig):
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
        acts = [StepAction(f"draw@{k}", "draw", k=k) for k in sizes]
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
        self.stop_index = {a.selector: i for i, a in enumerate(acts) if a.kind == "stop"}
        self.beam_index = {a.config_id: i for i, a in enumerate(acts) if a.kind == "beam"}
        self.beam_configs = [a.config_id for a in acts if a.kind == "beam"]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EscalateMenu:
        """The menu stored by :meth:`to_dict` (in a checkpoint's meta or an export), without a cache."""
        menu = cls.__new__(cls)
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
        if action.config_id != self.pool_config or action.n not in self.draw_index:
            return None
        return [self.draw_index[action.n], self.stop_index[action.selector or DEFAULT_SELECTOR]]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pool_config": self.pool_config,
            "pool_size": self.pool_size,
            "has_scores": self.has_scores,
            "actions": [a.to_dict() for a in self.actions],
        }


# ----------------------------------------------------------------------------------------------
# What has been seen (shared by the env, the evaluation and live routing)


@dataclass(frozen=True)
class SeenUnits:
    """Scales of the ``seen`` features (from the train split; stored with the run and the export)."""

    tokens_per_sample: float
    cost_tokens: float
    cost_seconds: float
    max_rounds: float

    def to_dict(self) -> dict[str, float]:
        return {
            k: float(getattr(self, k))
            for k in ("tokens_per_sample", "cost_tokens", "cost_seconds", "max_rounds")
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeenUnits:
        return cls(
            **{k: float(d[k]) for k in ("tokens_per_sample", "cost_tokens", "cost_seconds", "max_rounds")}
        )


class SeenState:
    """The samples drawn so far for one query, their costs, and the ``seen`` observation features.

    Samples come in rounds (``add_round``) as answer keys (``answer_key`` output, None if unparsed),
    generated tokens, scorer tokens and scores (None without a scorer); the caller prices the round's
    seconds. ``answer(selector)`` is :func:`rollouts.strategies.selectors.select` over the drawn samples.
    """

    __slots__ = (
        "pool_size", "has_scores", "keys", "gen", "scorer", "scores", "counts", "score_sum",
        "n_none", "max_score", "gen_sum", "tokens", "seconds", "widths", "round_tokens", "round_seconds",
    )  # fmt: skip

    def __init__(self, pool_size: int, has_scores: bool):
        self.pool_size = int(pool_size)
        self.has_scores = bool(has_scores)
        self.keys: list[str | None] = []
        self.gen: list[float] = []
        self.scorer: list[float] = []
        self.scores: list[float] = []
        self.counts: dict[str, int] = {}
        self.score_sum: dict[str, float] = {}
        self.n_none = 0
        self.max_score = 0.0
        self.gen_sum = 0.0
        self.tokens = 0.0  # charged so far
        self.seconds = 0.0
        self.widths: list[int] = []
        self.round_tokens: list[float] = []
        self.round_seconds: list[float] = []

    @property
    def drawn(self) -> int:
        return len(self.keys)

    @property
    def left(self) -> int:
        return self.pool_size - len(self.keys)

    def add_round(self, keys, gen_tokens, scorer_tokens, scores, seconds: float) -> tuple[float, float]:
        """Record one round; returns its (tokens, seconds) charge."""
        tok = 0.0
        for i, key in enumerate(keys):
            g = float(gen_tokens[i])
            self.keys.append(key)
            self.gen.append(g)
            self.scorer.append(float(scorer_tokens[i]))
            s = float(scores[i]) if scores is not None else 0.0
            self.scores.append(s)
            tok += g
            if key is None:
                self.n_none += 1
            else:
                self.counts[key] = self.counts.get(key, 0) + 1
                self.score_sum[key] = self.score_sum.get(key, 0.0) + s
            if s > self.max_score:
                self.max_score = s
        self.gen_sum += tok
        self.tokens += tok
        self.seconds += float(seconds)
        self.widths.append(len(keys))
        self.round_tokens.append(tok)
        self.round_seconds.append(float(seconds))
        return tok, float(seconds)

    def answer(self, selector: str) -> int:
        """Index (in draw order) of the drawn sample the selector picks."""
        return select(selector, self.keys, self.scores if self.has_scores else None)

    def stop_tokens(self, selector: str) -> float:
        """Extra tokens charged when answering with ``selector`` (the scorer's, for score selectors)."""
        return float(sum(self.scorer)) if selector in SCORE_SELECTORS else 0.0

    def top(self) -> tuple[str | None, int, int]:
        """(leading answer, its votes, the runner-up's votes); ties go to the earliest-counted answer."""
        best, v1, v2 = None, 0, 0
        for key, c in self.counts.items():
            if c > v1:
                best, v1, v2 = key, c, v1
            elif c > v2:
                v2 = c
        return best, v1, v2

    def features(self, units: SeenUnits, out: np.ndarray) -> None:
        """Write the :data:`SEEN_FEATURES` into ``out`` (length 11)."""
        n = len(self.keys)
        if n == 0:
            out[:] = 0.0
            out[8] = self.tokens / units.cost_tokens
            out[9] = self.seconds / units.cost_seconds
            return
        best, v1, v2 = self.top()
        out[0] = n / self.pool_size
        out[1] = v1 / n
        out[2] = v2 / n
        out[3] = len(self.counts) / self.pool_size
        out[4] = self.n_none / n
        out[5] = self.score_sum[best] / v1 if best is not None else 0.0
        out[6] = self.max_score
        out[7] = self.gen_sum / n / units.tokens_per_sample
        out[8] = self.tokens / units.cost_tokens
        out[9] = self.seconds / units.cost_seconds
        out[10] = len(self.widths) / units.max_rounds


def step_mask(menu: EscalateMenu, state: SeenState, beams: list[bool]) -> np.ndarray:
    """Legal step actions given what was drawn and which beam configs the query has."""
    m = np.zeros(len(menu), dtype=bool)
    left = state.left
    for k, i in menu.draw_index.items():
        m[i] = k <= left
    if state.drawn:
        for s, i in menu.stop_index.items():
            m[i] = state.has_scores or s not in SCORE_SELECTORS
    for j, c in enumerate(menu.beam_configs):
        m[menu.beam_index[c]] = beams[j]
    return m


def fit_units(table: OutcomeTable, menu: EscalateMenu, train_rows: np.ndarray) -> SeenUnits:
    tok, sec = table.cost_scale(train_rows)
    gen = [
        float(p.gen_tokens.mean()) for qi in train_rows for p in table.pool_records(int(qi), menu.pool_config)
    ]
    per_sample = float(np.mean(gen)) if gen else 1.0
    return SeenUnits(max(per_sample, 1e-6), max(tok, 1e-9), max(sec, 1e-9), float(menu.pool_size))


def _prepare(table: OutcomeTable, menu: EscalateMenu, qi: int) -> tuple[list, list, list[bool]]:
    """A query's pool records (each with its per-sample values as plain lists: indexing numpy arrays
    one element at a time is what made steps slow), beam outcomes per beam config, and which it has."""
    beams = [table.search_outcomes(qi, c) for c in menu.beam_configs]
    recs = [
        (p, p.gen_tokens.tolist(), p.scorer_tokens.tolist(), None if p.scores is None else p.scores.tolist())
        for p in table.pool_records(qi, menu.pool_config)
    ]
    return recs, beams, [bool(b) for b in beams]


class Episode:
    """One query's escalation over a fixed sample order: the cached pool record, the beams, the state.

    ``step(a)`` returns ``(tokens, seconds, done, correct)`` of that step (correct only when done).
    The env and the lockstep simulator (``policies/escalate_sim.py``) both run episodes through it.
    """

    __slots__ = (
        "menu", "table", "qi", "pool", "order", "state", "beams", "beams_ok", "beam_pick", "done", "final",
        "correct", "_mask", "_gen", "_scorer", "_scores",
    )  # fmt: skip

    def __init__(
        self,
        table: OutcomeTable,
        menu: EscalateMenu,
        qi: int,
        order=None,
        pick: float = 0.0,
        check: bool = True,
        prepared: tuple | None = None,
    ):
        self.menu, self.table, self.qi = menu, table, int(qi)
        recs, self.beams, self.beams_ok = prepared or _prepare(table, menu, self.qi)
        self.pool, self._gen, self._scorer, self._scores = recs[min(int(pick * len(recs)), len(recs) - 1)]
        if order is None:
            self.order = list(range(self.pool.k))
        else:
            self.order = order.tolist() if isinstance(order, np.ndarray) else [int(i) for i in order]
        if check and sorted(self.order) != list(range(self.pool.k)):
            raise ConfigError(
                f"a sample order must be a permutation of range({self.pool.k}), got {list(order)}"
            )
        self.state = SeenState(self.pool.k, self.pool.scores is not None)
        self.beam_pick = pick
        self.done = False
        self.final: str | None = None
        self.correct = 0.0  # of the final answer, once done
        self._mask: np.ndarray | None = None

    def mask(self) -> np.ndarray:
        """Legal step actions now (computed once per state; callers must not modify it)."""
        if self._mask is None:
            self._mask = step_mask(self.menu, self.state, self.beams_ok)
        return self._mask

    def round_seconds(self, k: int, max_gen: float) -> float:
        if not self.table.latency_available:
            return 0.0  # a cache without any seconds: λ_L is fixed at 0, as in Allocate-v0
        lat = self.table.latency
        if lat is not None:
            return lat.round_seconds(Round(int(self.table.prompt_tokens[self.qi]), k, max_gen))  # type: ignore[arg-type]
        if str(k) in self.pool.seconds_by_n:
            return self.pool.seconds_by_n[str(k)]
        raise CacheError(
            f"{self.table.cache_path}: no latency for a round of {k} samples of query "
            f"{self.table.query_ids[self.qi]!r}: meta.json has no latency_model and the record no seconds_by_n"
        )

    def step(self, a: int) -> tuple[float, float, bool, float]:
        act = self.menu.actions[a]
        self._mask = None
        if act.kind == "draw":
            st = self.state
            idx = self.order[st.drawn : st.drawn + act.k]
            gen = [self._gen[i] for i in idx]
            secs = self.round_seconds(act.k, max(gen))
            tok, secs = st.add_round(
                [self.pool.keys[i] for i in idx],
                gen,
                [self._scorer[i] for i in idx],
                None if self._scores is None else [self._scores[i] for i in idx],
                secs,
            )
            return tok, secs, False, 0.0
        self.done = True
        self.final = act.id
        if act.kind == "stop":
            sel = act.selector or DEFAULT_SELECTOR
            pick = self.order[self.state.answer(sel)]
            tok = self.state.stop_tokens(sel)
            self.state.tokens += tok
            self.correct = float(self.pool.correct[pick])
            return tok, 0.0, True, self.correct
        outs = self.beams[self.menu.beam_configs.index(act.config_id)]
        ok, tok, secs = outs[min(int(self.beam_pick * len(outs)), len(outs) - 1)]
        self.state.tokens += tok
        self.state.seconds += secs
        self.correct = float(ok)
        return tok, secs, True, self.correct


# ----------------------------------------------------------------------------------------------
# The env


class EscalateEnv(AllocateEnv):
    """See the module docstring. Arguments as :class:`env.allocate_env.AllocateEnv` (``config`` is an
    :class:`EscalateConfig` or its dict); ``units``: stored :class:`SeenUnits` (default: fitted on train).
    Queries without a record of the pool config are left out of the env's split."""

    config_cls = EscalateConfig

    def __init__(
        self,
        cache: str | Path | None = None,
        *,
        units: SeenUnits | dict[str, Any] | None = None,
        **kwargs: Any,
    ):
        super().__init__(cache, **kwargs)
        t = self.table
        self.menu = EscalateMenu(t, self.config)  # type: ignore[arg-type]
        keep = np.array([bool(t.pool_records(int(qi), self.menu.pool_config)) for qi in self.rows])
        if not keep.any():
            raise ConfigError(
                f"no query of this split has a {self.menu.pool_config!r} record in {t.cache_path}"
            )
        self.rows = self.rows[keep]
        self._base_obs = self._base_obs[keep]
        if t.latency is None and t.latency_available:
            for qi in self.rows:
                for p in t.pool_records(int(qi), self.menu.pool_config):
                    missing = [k for k in self.menu.draw_index if str(k) not in p.seconds_by_n]
                    if missing:
                        raise CacheError(
                            f"{t.cache_path}: ttc/Escalate-v0 prices every round of k samples, but meta.json has "
                            f"no latency_model and query {t.query_ids[int(qi)]!r} has no seconds_by_n for k={missing[0]}"
                        )
        train_rows = t.indices([q for q in self.splits["train"] if q in t.qindex])
        if units is None:
            units = fit_units(t, self.menu, train_rows)
        elif isinstance(units, dict):
            units = SeenUnits.from_dict(units)
        self.units = units
        self._n_base = self.encoder.dim
        self.observation_space = spaces.Box(
            -OBS_BOUND, OBS_BOUND, shape=(self._n_base + len(SEEN_FEATURES),), dtype=np.float32
        )
        self.action_space = spaces.Discrete(len(self.menu))
        self._ep: Episode | None = None
        self._prepared: dict[int, tuple] = {}  # per query row: its records and beams (built once)
        self._norm = 1.0
        self._steps: list[str] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        order = given = options.pop("order", None)
        base, info = super().reset(seed=seed, options=options)
        qi = int(self.rows[self._i])
        prepared = self._prepared.get(qi)
        if prepared is None:
            prepared = self._prepared[qi] = _prepare(self.table, self.menu, qi)
        recs = prepared[0]
        if self.cycle:
            # an evaluation pass: the order follows the cycle position, so every pass sees the same orders
            rng = np.random.default_rng([self.config.outcome_seed, self._cycle_pos])
        else:
            rng = self.np_random
        pick = float(rng.random())
        if order is None:  # a permutation of the record the pick selects (pools may differ in size)
            order = rng.permutation(recs[min(int(pick * len(recs)), len(recs) - 1)][0].k)
        self._ep = Episode(self.table, self.menu, qi, order, pick, check=given is not None, prepared=prepared)
        self._obs = np.zeros(self.observation_space.shape[0], dtype=np.float32)
        self._obs[: self._n_base] = base
        self._seen_view = self._obs[self._n_base :]
        self._ep.state.features(self.units, self._seen_view)
        lt, ls = self._lam
        cs = self._cost_scale
        self._norm = (
            self.config.reward_norm_floor + lt * cs[0] + ls * cs[1]
            if self.config.reward_norm == "context"
            else 1.0
        )
        self._steps = []
        info["order"] = [int(i) for i in self._ep.order]
        return self._obs.copy(), info

    def step(self, action):
        ep = self._ep
        if self._done or ep is None:
            raise ConfigError("step() called on a finished episode; call reset() first")
        a = int(action)
        if not 0 <= a < len(self.menu):
            raise ConfigError(f"action {a} is outside the menu of {len(self.menu)} step actions")
        illegal = not ep.mask()[a]
        if illegal:
            # a masked action forfeits the episode (wrong answer, nothing more spent) instead of raising,
            # so unmasked samplers (the env checkers) can step it; MaskablePPO never picks one
            tok, secs, done, correct = 0.0, 0.0, True, 0.0
            ep.done, ep.final = True, "illegal"
        else:
            tok, secs, done, correct = ep.step(a)
        lt, ls = self._lam
        utility_step = (correct if done else 0.0) - lt * tok - ls * secs
        reward = utility_step * self.config.reward_scale / self._norm
        self._steps.append(self.menu.ids[a])
        ep.state.features(self.units, self._seen_view)
        info: dict[str, Any] = {"query_id": self.table.query_ids[ep.qi], "step_action": self.menu.ids[a]}
        if done:
            self._done = True
            st = ep.state
            info.update(
                {
                    "is_success": bool(correct >= 0.5),
                    "correct": float(correct),
                    "tokens": float(st.tokens),
                    "seconds": float(st.seconds),
                    "utility": float(correct - lt * st.tokens - ls * st.seconds),
                    "rounds": len(st.widths),
                    "samples": st.drawn,
                    "widths": list(st.widths),
                    "beam": self.menu.actions[a].kind == "beam" and not illegal,
                    "illegal": illegal,
                    "stop": "illegal" if illegal else self.menu.ids[a],
                    "steps": list(self._steps),
                    "lambda_tokens": lt,
                    "lambda_seconds": ls,
                }
            )
        return self._obs.copy(), reward, done, False, info

    def action_masks(self) -> np.ndarray:
        if self._ep is None:
            return np.ones(len(self.menu), dtype=bool)
        return self._ep.mask().copy()

    @property
    def action_ids(self) -> list[str]:
        return self.menu.ids


def env_config_from(d: dict[str, Any] | None) -> EnvConfig:
    """The env config of a run: ``kind: escalate`` gives an :class:`EscalateConfig`, ``allocate`` (or no
    ``kind``) Allocate-v0's :class:`env.allocate_env.EnvConfig`."""
    d = dict(d or {})
    kind = d.get("kind", "allocate")
    if kind == "escalate":
        return EscalateConfig.from_dict(d)
    if kind != "allocate":
        raise ConfigError(f"env.kind must be 'allocate' or 'escalate', got {kind!r}")
    d.pop("kind", None)
    return EnvConfig.from_dict(d)
