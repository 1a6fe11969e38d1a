"""Run many ``ttc/Escalate-v0`` episodes in lockstep: the same :class:`env.episode.Episode` and
observation code as the env, batched so a policy network sees every active episode at once.

Common random numbers: :func:`make_orders` gives each query R sample orders seeded by its query id, so
every policy (the sequential PPO, the stopping rules, the statics, the one-shot PPO) is judged on the
same samples in the same order.

A *step policy* is ``act(obs (B, D) float32, masks (B, A) bool, episodes) -> actions (B,)``; one that
reads only the episodes (a stopping rule, a fixed plan) says so with ``act.needs_obs = False``, and the
simulator then leaves ``obs`` unfilled. One whose stops answer with a selector that is no step action
(a ``confidence`` stopping rule) names it as ``act.stop_selector``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from env.episode import Episode, pick_record, prepare_query
from env.escalate_menu import EscalateMenu
from env.outcomes import OutcomeTable
from env.seen import SeenUnits, menu_seen_features
from policies.observation import ObsEncoder
from rollouts.strategies.race import RaceRule, RaceWatch

StepPolicy = Callable[[np.ndarray, np.ndarray, list[Episode]], np.ndarray]


def make_orders(table: OutcomeTable, menu: EscalateMenu, rows: np.ndarray, n_orders: int, seed: int = 0):
    """(len(rows), R) permutations of each query's pool, and a (len(rows), R) record/beam pick in [0, 1);
    seeded by (seed, query id, r), so a query's orders do not depend on which other queries are evaluated.
    With several pools an order is one permutation per pool, each pool's from its own seeded generator
    (the first pool's as with one pool)."""
    orders: list[list[Any]] = []
    picks = []
    for qi in rows:
        recs = table.pool_records(int(qi), menu.pool_config)
        h = int.from_bytes(hashlib.sha256(f"{seed}:{table.query_ids[int(qi)]}".encode()).digest()[:8], "big")
        rng = np.random.default_rng([h, n_orders])
        if len({p.k for p in recs}) == 1:
            first = [rng.permutation(recs[0].k) for _ in range(n_orders)]
            pick = rng.random(n_orders)
        else:  # records of different pool sizes: each order permutes the record its pick selects
            pick = rng.random(n_orders)
            first = [rng.permutation(pick_record(recs, u).k) for u in pick]
        picks.append(pick)
        if len(menu.pool_configs) == 1:
            orders.append(first)
            continue
        per_pool = [first]
        for p, cfg in enumerate(menu.pool_configs[1:], start=1):
            prng = np.random.default_rng([h, n_orders, p])
            recs_p = table.pool_records(int(qi), cfg)
            per_pool.append([prng.permutation(pick_record(recs_p, u).k) for u in pick])
        orders.append([[o[r] for o in per_pool] for r in range(n_orders)])
    return orders, np.array(picks)


def playable_rows(table: OutcomeTable, menu: EscalateMenu, rows: np.ndarray) -> np.ndarray:
    """The ``rows`` whose query has a record of every pool of the step menu and every action measured
    (the queries every policy of a sequential evaluation can play)."""
    r = np.asarray(rows)
    if len(r) == 0:
        return r
    has_pool = np.array([all(table.pool_records(int(q), c) for c in menu.pool_configs) for q in r], dtype=bool)
    return r[has_pool & table.mask[r].all(axis=1)]


@dataclass
class SimResult:
    """Per (query row, order) outcomes of one policy at one λ point; arrays (n_rows, R)."""

    correct: np.ndarray
    tokens: np.ndarray
    seconds: np.ndarray
    rounds: np.ndarray
    samples: np.ndarray
    beam: np.ndarray
    final: list[list[str]]
    pool_samples: np.ndarray | None = None  # (n_rows, R, n pools) samples drawn per pool (several pools)
    pool_labels: list[str] | None = None

    def utility(self, lt: float, ls: float) -> np.ndarray:
        return self.correct - lt * self.tokens - ls * self.seconds

    def summary(self, lt: float, ls: float) -> dict[str, Any]:
        finals: dict[str, int] = {}
        for row in self.final:
            for f in row:
                finals[f] = finals.get(f, 0) + 1
        n = self.correct.size
        return {
            "accuracy": float(self.correct.mean()),
            "mean_tokens": float(self.tokens.mean()),
            "mean_seconds": float(self.seconds.mean()),
            "utility": float(self.utility(lt, ls).mean()),
            "mean_rounds": float(self.rounds.mean()),
            "mean_samples": float(self.samples.mean()),
            "beam_share": float(self.beam.mean()),
            "stop_share": {k: v / n for k, v in sorted(finals.items())},
            **self.pool_use(),
        }

    def pool_use(self) -> dict[str, Any]:
        """With several pools: per pool (by label) the mean samples drawn from it and the share of
        episodes that drew from it (empty otherwise)."""
        if self.pool_samples is None or self.pool_labels is None:
            return {}
        ps = self.pool_samples
        return {
            "pool_samples": {lab: float(ps[..., p].mean()) for p, lab in enumerate(self.pool_labels)},
            "pool_episode_share": {lab: float((ps[..., p] > 0).mean()) for p, lab in enumerate(self.pool_labels)},
        }


class Simulator:
    """Episodes of ``rows`` x their orders at one λ point, stepped together by a step policy."""

    def __init__(
        self,
        table: OutcomeTable,
        menu: EscalateMenu,
        encoder: ObsEncoder,
        units: SeenUnits,
        rows: np.ndarray,
        orders,
        picks: np.ndarray,
    ):
        self.table, self.menu, self.encoder, self.units = table, menu, encoder, units
        self.rows = np.asarray(rows)
        self.orders, self.picks = orders, picks
        self.base = encoder.encode_base(table.features[self.rows], table.prompt_tokens[self.rows])
        # each row's records and beams, built once: every run (one per λ point and rule) replays them
        self.prepared = [prepare_query(table, menu, int(q)) for q in self.rows]

    def run(self, policy: StepPolicy, lt: float, ls: float) -> SimResult:
        n, r_n = len(self.rows), len(self.orders[0])
        eps = [
            Episode(
                self.table, self.menu, int(self.rows[i]), self.orders[i][r], float(self.picks[i, r]),
                prepared=self.prepared[i],
            )  # fmt: skip
            for i in range(n)
            for r in range(r_n)
        ]
        row_of = np.repeat(np.arange(n), r_n)
        pen = (
            np.array(self.encoder.penalty_pair(lt, ls), dtype=np.float32)
            if self.encoder.sample_penalties
            else np.zeros(0, dtype=np.float32)
        )
        d_base = self.base.shape[1] + len(pen)
        n_seen = len(menu_seen_features(self.menu))
        needs_obs = getattr(policy, "needs_obs", True)
        stop_selector = getattr(policy, "stop_selector", None)  # a rule's answer that is no step action
        correct = np.zeros(len(eps))
        active = list(range(len(eps)))
        while active:
            obs = np.empty((len(active), d_base + n_seen), dtype=np.float32)
            if needs_obs:
                obs[:, : self.base.shape[1]] = self.base[row_of[active]]
                obs[:, self.base.shape[1] : d_base] = pen
            masks = np.empty((len(active), len(self.menu)), dtype=bool)
            batch = [eps[j] for j in active]
            for b, ep in enumerate(batch):
                if needs_obs:
                    ep.state.features(self.units, obs[b, d_base:])
                masks[b] = ep.mask()
            actions = np.asarray(policy(obs, masks, batch), dtype=np.int64).reshape(len(active))
            if not masks[np.arange(len(active)), actions].all():
                bad = int(np.argmin(masks[np.arange(len(active)), actions]))
                raise ValueError(f"the policy chose the masked step action {self.menu.ids[actions[bad]]!r}")
            still = []
            for j, ep, a in zip(active, batch, actions, strict=True):
                _, _, done, c = ep.step(int(a), stop_selector)
                if done:
                    correct[j] = c
                else:
                    still.append(j)
            active = still
        shape = (n, r_n)
        return SimResult(
            correct=correct.reshape(shape),
            tokens=np.array([e.state.tokens for e in eps]).reshape(shape),
            seconds=np.array([e.state.seconds for e in eps]).reshape(shape),
            rounds=np.array([len(e.state.widths) for e in eps]).reshape(shape),
            samples=np.array([e.state.drawn for e in eps]).reshape(shape),
            beam=np.array([_ended_on_beam(e) for e in eps]).reshape(shape),
            final=[[eps[i * r_n + r].final or "" for r in range(r_n)] for i in range(n)],
            **self._pool_use(eps, shape),
        )

    def _pool_use(self, eps: list[Episode], shape: tuple[int, int]) -> dict[str, Any]:
        if len(self.menu.pools) < 2:
            return {}
        drawn = np.array([e.state.pool_drawn for e in eps], dtype=np.float64).reshape(*shape, -1)
        return {"pool_samples": drawn, "pool_labels": [p.label for p in self.menu.pools]}


# ----------------------------------------------------------------------------------------------
# Step policies


def _ended_on_beam(ep: Episode) -> bool:
    """Whether an ended episode's final action (set when it ends) was a beam."""
    if ep.final is None:
        raise ValueError("an episode that has not ended has no final action")
    ids = ep.menu.ids  # a rule's stop may answer with a selector that is no step action (not a beam)
    return ep.final in ids and ep.menu.actions[ids.index(ep.final)].kind == "beam"


def model_policy(model) -> StepPolicy:
    """A MaskablePPO model, deterministic (argmax over legal actions)."""

    def act(obs, masks, episodes):
        a, _ = model.predict(obs, action_masks=masks, deterministic=True)
        return a

    return act


def plan_policy(plans: list[list[int]], row_plan: dict[int, int] | None = None) -> StepPolicy:
    """Follow a fixed plan of step actions (a one-shot action as ``draw@N, stop:<sel>``, or a beam).
    ``plans``: one plan per distinct choice; ``row_plan``: the plan index per query row (default 0).
    With the finish watch each round is waited out to its last finish before the plan's next action."""

    def act(obs, masks, episodes):
        out = np.empty(len(episodes), dtype=np.int64)
        for b, ep in enumerate(episodes):
            if ep.state.running:
                out[b] = ep.menu.wait_index
                continue
            plan = plans[0 if row_plan is None else row_plan[ep.qi]]
            out[b] = plan[len(ep.state.widths)]
        return out

    act.needs_obs = False  # type: ignore[attr-defined]
    return act


def race_policy(rule: RaceRule, selector: str | None, menu: EscalateMenu, pool: int = 0) -> StepPolicy:
    """A race on the finish watch: ``draw@n`` (of pool index ``pool``), then at each finish :class:`RaceWatch` decides (wait, or
    stop with ``selector`` over the finished samples, cancelling the rest); the same outcome as the
    race's cached one on the same order (``tests/test_escalate_finish.py``)."""
    draws = menu.pool_draw_index[pool]
    if menu.wait_index is None or rule.n not in draws:
        raise ValueError(f"race {rule} needs the finish watch and a draw@{rule.n} step action")
    draw, wait, stop = draws[rule.n], menu.wait_index, menu.stop_index[selector or "majority"]
    watches: dict[int, tuple[Episode, RaceWatch]] = {}  # per episode (kept with it: ids get reused)

    def act(obs, masks, episodes):
        out = np.empty(len(episodes), dtype=np.int64)
        for b, ep in enumerate(episodes):
            st = ep.state
            if not st.widths:
                out[b] = draw
                continue
            held = watches.get(id(ep))
            if held is None or held[0] is not ep:
                held = watches[id(ep)] = (ep, RaceWatch(rule))
            w = held[1]
            stopped = False
            while w.finished < st.drawn and not stopped:
                stopped = w.finish(st.keys[w.finished])
            out[b] = stop if stopped or not st.running else wait
        return out

    return act


def oneshot_policy(menu: EscalateMenu, action: Any) -> StepPolicy | None:
    """The step policy that plays one-shot ``action`` (an :class:`env.outcomes.Action`) on the step
    menu: its plan (:meth:`EscalateMenu.oneshot_plan`), or a race on the finish watch
    (:func:`race_policy`); None where the menu cannot play it."""
    plan = menu.oneshot_plan(action)
    if plan is not None:
        return plan_policy([plan])
    race, p = action.race, menu.pool_of(action.config_id)
    if race is None or menu.watch != "finish" or p is None or race.n not in menu.pool_draw_index[p]:
        return None
    return race_policy(race, action.selector, menu, p)


def choice_policy(policies: list[StepPolicy | None], row_choice: dict[int, int]) -> StepPolicy:
    """Per query row the policy ``policies[row_choice[row]]`` (a one-shot policy's choices, played)."""

    def act(obs, masks, episodes):
        out = np.empty(len(episodes), dtype=np.int64)
        groups: dict[int, list[int]] = {}
        for b, ep in enumerate(episodes):
            groups.setdefault(row_choice[ep.qi], []).append(b)
        for c, idx in groups.items():
            pol = policies[c]
            if pol is None:
                raise ValueError(f"one-shot choice {c} cannot be played on the step menu")
            out[idx] = pol(obs[idx], masks[idx], [episodes[b] for b in idx])
        return out

    return act


def oneshot_follower(oneshot: Any, table: OutcomeTable, sim: Any) -> Any:
    """``follow_at(λ_T, λ_L)``: the step policy that plays a one-shot policy's choices on ``sim``'s
    queries, or None where it picks what the step menu cannot play (another pool config; a race on
    the round watch)."""
    steps = [oneshot_policy(sim.menu, a) for a in table.menu]

    def follow_at(lt: float, ls: float) -> Any:
        choice = oneshot.choose(table, sim.rows, lt, ls)
        row_plan = {int(q): int(a) for q, a in zip(sim.rows, choice, strict=True)}
        if not all(steps[a] is not None for a in row_plan.values()):
            return None
        return choice_policy(steps, row_plan)

    return follow_at
