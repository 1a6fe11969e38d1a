"""The escalation environment, registered as ``ttc/Escalate-v0``: watch the first samples, then stop,
sample more, or switch to beam search.

One query per episode, several decisions. Same cache, splits (``make_splits``), λ sampling, penalty
encoding and query features as ``ttc/Allocate-v0`` (it subclasses :class:`env.allocate_env.AllocateEnv`
for all of that). The pools are the cache's ``sample_pool`` configs (``env.pools``: ``all``, the
default; ``primary``: the one with the most samples only; or a list of config ids; ``pool_config``
pins one); each pool's K samples of the query are drawn without replacement in a permutation fixed at
``reset`` by the episode's generator (``options={"order": [...]}`` fixes it explicitly, one
permutation per pool with several), so a replay with the same seed gives the same samples, costs and
reward. With several pools the env keeps the queries that have a record of every pool.

Actions (``Discrete``, :meth:`EscalateEnv.action_masks`; the menu is :class:`env.escalate_menu.EscalateMenu`),
in this order:

- ``draw@k`` for k in ``draw_sizes`` (``auto``: 1, 2, 4, ... and K, as Allocate-v0's budgets): the next
  k samples of the order, one engine round of width k; masked when fewer than k samples are left;
  with several pools ``draw@k:<label>`` per pool (its own order, its own samples left);
- ``stop:<selector>`` for majority, best_score, weighted: answer with that selector over the drawn
  samples (of every pool); masked before the first sample, score selectors masked when a pool has no scores;
- one action per beam/search config of the cache (its id): run it, answer with its result (earlier
  samples stay paid for); masked where the query has no such record.

A masked action forfeits the episode (correctness 0, nothing more charged, ``info["illegal"]``).
So every Allocate-v0 action is reachable as a first move (``draw@N`` then ``stop:<sel>``, or the beam).
Once the pool is exhausted only the stop and beam actions stay legal: the episode then ends with the
next decision (the selector is the policy's choice, so ``best_score@K`` stays reachable).

Costs, charged as they are incurred (the return is the episode's utility): a draw costs its samples'
generated tokens and the latency model's seconds for one round ``Round(prompt_tokens, k, longest of the
k samples)`` (the round's samples run in parallel; rounds add up; :mod:`env.round_latency`); a score selector adds the drawn
samples' scorer tokens; a beam adds its record's tokens (scorer tokens included) and seconds. Reward
per step: ``reward_scale * (correct·[final] − λ_T·Δtokens − λ_L·Δseconds)``, divided with
``reward_norm="context"`` by the same per-episode factor as Allocate-v0.

Finish by finish (``env.watch: finish``; the default ``round`` is the above): a draw launches its round
of k samples and the episode stops at each of its finishes (generated tokens ascending, ties by the
order, as a race's :func:`rollouts.strategies.race.finish_order`). At each finish the policy chooses
``wait`` (the next finish), a stop with a selector over the finished samples, or a beam (either cancels
the samples still running), and, once the round is over, another draw. Costs accrue as they happen: at
decode step L_now of a round every launched sample has generated ``min(its tokens, L_now)``, and the
round has cost ``Round(prompt_tokens, k, L_now)`` seconds (so a round watched to its end costs what the
whole-round watch charges); the observation adds :data:`env.seen.FINISH_FEATURES`, and the end-of-episode
info ``launched`` and ``cancelled``. It needs the cache's latency model.

Observation: ``[Allocate-v0's observation (query features, encoded λ), seen...]`` where ``seen``
(:data:`env.seen.SEEN_FEATURES`) is built by :class:`env.seen.SeenState` from the drawn samples, the same
code for cached and live samples (``policies/sequential_router.py``). An episode's state and steps are
:class:`env.episode.Episode`, shared with the lockstep simulator.

Live (``env.source: live``, a :class:`env.live_table.LiveTable`): the env keeps every query of its split,
with or without records. A query without its pools starts its episode *pending* (the observation and the
mask of an empty state need no samples); :meth:`EscalateEnv.live_needs` tells the live training wrapper
(``policies/live_training.py``) which configs a step needs (the query's pools on its first step, a beam's
config when a beam is taken), the wrapper has them generated for every env of the step together, and the
episode then reads them from the table as it would from a cache. Every beam is legal live (it is
generated when taken).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gymnasium import spaces

from env.allocate_env import AllocateEnv, EnvConfig
from env.episode import Episode, pick_record, prepare_query
from env.escalate_menu import POOL_CHOICES, EscalateMenu
from env.round_latency import check_round_prices
from env.seen import WATCHES, SeenUnits, fit_units, menu_seen_features, new_state, step_mask
from env.splits import split_rows
from policies.observation import OBS_BOUND
from rollouts.errors import ConfigError


@dataclass
class EscalateConfig(EnvConfig):
    """Allocate-v0's settings plus the escalation menu (``env:`` in config.yml with ``kind: escalate``)."""

    kind: str = "escalate"
    draw_sizes: Any = "auto"  # auto: pool_budgets(K); or a list of ints >= 1
    pool_config: str | None = None  # pin one pool config to draw from (overrides pools)
    pools: Any = "all"  # all: every pool config of the cache; primary: the one with most samples; or a list
    watch: str = "round"  # round: decide between whole rounds; finish: at each finish within a round

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
        if self.pools not in POOL_CHOICES and not (
            isinstance(self.pools, list)
            and self.pools
            and all(isinstance(c, str) for c in self.pools)
            and len(set(self.pools)) == len(self.pools)
        ):
            raise ConfigError(
                f"env.pools must be 'all', 'primary' or a list of distinct pool config ids, got {self.pools!r}"
            )
        if self.watch not in WATCHES:
            raise ConfigError(f"env.watch must be one of {', '.join(WATCHES)}, got {self.watch!r}")


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
        self.live = getattr(t, "source", None) is not None  # records arrive as the policy asks for them
        keep = np.array([self._has_pools(int(qi)) or self.live for qi in self.rows])
        if not keep.any():
            have = " and ".join(repr(c) for c in self.menu.pool_configs)
            raise ConfigError(f"no query of this split has a {have} record in {t.cache_path}")
        self.rows = self.rows[keep]
        self._base_obs = self._base_obs[keep]
        check_round_prices(t, self.menu, self.rows)
        train_rows = split_rows(t, self.splits, "train")
        if units is None:
            units = fit_units(t, self.menu, train_rows)
        elif isinstance(units, dict):
            units = SeenUnits.from_dict(units)
        self.units = units
        self._n_base = self.encoder.dim
        self._n_seen = len(menu_seen_features(self.menu))
        self.observation_space = spaces.Box(
            -OBS_BOUND, OBS_BOUND, shape=(self._n_base + self._n_seen,), dtype=np.float32
        )
        self.action_space = spaces.Discrete(len(self.menu))
        self._ep: Episode | None = None
        self._pending: tuple[int, float] | None = None  # live: (query row, record pick) until its pools exist
        self._prepared: dict[int, tuple] = {}  # per query row: its records and beams (built once)
        self._steps: list[str] = []

    def _has_pools(self, qi: int) -> bool:
        return all(self.table.pool_records(qi, c) for c in self.menu.pool_configs)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        options = dict(options or {})
        order = given = options.pop("order", None)
        base, info = super().reset(seed=seed, options=options)
        qi = self.query_row
        if self.cycle:
            # an evaluation pass: the order follows the cycle position, so every pass sees the same orders
            rng = np.random.default_rng([self.config.outcome_seed, self._cycle_pos])
        else:
            rng = self.np_random
        pick = float(rng.random())
        self._obs = np.zeros(self._n_base + self._n_seen, dtype=np.float32)
        self._obs[: self._n_base] = base
        self._seen_view = self._obs[self._n_base :]
        self._steps = []
        self._ep, self._pending = None, None
        if self.live and given is None and not self._has_pools(qi):  # generated before its first step
            self._pending = (qi, pick)
            new_state(self.menu).features(self.units, self._seen_view)
            return self._obs.copy(), info
        ep = self._start(qi, pick, order, rng, check=given is not None)
        orders = [[int(i) for i in o] for o in ep.orders]
        info["order"] = orders[0] if len(orders) == 1 else orders
        return self._obs.copy(), info

    def _start(self, qi: int, pick: float, order: Any, rng: np.random.Generator, check: bool) -> Episode:
        """The episode of query row ``qi`` over its records (``order`` None: a permutation per pool drawn
        from ``rng``, of the record the pick selects; pools may differ in size)."""
        prepared = self._prepared.get(qi)
        if prepared is None:  # live: built once its pools exist; a beam arriving later fills its slot (step)
            prepared = self._prepared[qi] = prepare_query(self.table, self.menu, qi)
        if order is None:
            perms = [rng.permutation(pick_record(r, pick)[0].k) for r in prepared[0]]
            order = perms[0] if len(perms) == 1 else perms
        ep = self._ep = Episode(self.table, self.menu, qi, order, pick, check=check, prepared=prepared)
        if self.live:
            ep.beams_ok = [True] * len(self.menu.beam_configs)
        ep.state.features(self.units, self._seen_view)
        return ep

    def live_needs(self, action: int) -> list[tuple[int, str]]:
        """Live: the (query row, config) records that stepping ``action`` needs and the table lacks."""
        qi, t = self.query_row, self.table
        need = [c for c in self.menu.pool_configs if not t.pool_records(qi, c)] if self._pending is not None else []
        a = self.menu.actions[int(action)] if 0 <= int(action) < len(self.menu) else None
        if a is not None and a.kind == "beam" and not t.search_outcomes(qi, str(a.config_id)):
            need.append(str(a.config_id))
        return [(qi, c) for c in need]

    def step(self, action):
        if self._pending is not None and not self._done:  # live: its pools were generated for this step
            qi, pick = self._pending
            self._pending = None
            self._start(qi, pick, None, self.np_random, check=False)
        ep = self._ep
        if self._done or ep is None:
            raise ConfigError("step() called on a finished episode; call reset() first")
        a = int(action)
        if not 0 <= a < len(self.menu):
            raise ConfigError(f"action {a} is outside the menu of {len(self.menu)} step actions")
        if self.live and self.menu.actions[a].kind == "beam":  # its records were generated for this step
            j = self.menu.beam_configs.index(str(self.menu.actions[a].config_id))
            if not ep.beams[j]:
                # the prepared query's own list (Episode keeps it): later episodes on this query see it too
                ep.beams[j] = self.table.search_outcomes(ep.qi, self.menu.beam_configs[j])
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
            if ep.finish_watch:
                info.update({"launched": st.launched, "cancelled": st.launched - st.drawn})
        return self._obs.copy(), reward, done, False, info

    def action_masks(self) -> np.ndarray:
        if self._pending is not None:  # live, before its pools exist: an empty state's mask, every beam
            return step_mask(self.menu, new_state(self.menu), [True] * len(self.menu.beam_configs))
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
