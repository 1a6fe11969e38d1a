"""One query's escalation episode over a fixed sample order (one per pool), on the cached records.

:class:`Episode` holds the query's pool record, its beam outcomes and the :class:`env.seen.SeenState`;
``ttc/Escalate-v0`` and the lockstep simulator (``policies/escalate_sim.py``) both step episodes
through it. A draw's seconds are :func:`env.round_latency.round_seconds`.

With the menu's ``watch == "finish"`` a draw launches its round and the episode stops at each finish
(:func:`rollouts.strategies.race.finish_order`: generated tokens ascending, ties by sample order): the
draw itself runs to the first finish, ``wait`` to the next one; a stop or a beam cancels the samples
still running, which keep what they generated until then.
"""

from __future__ import annotations

import numpy as np

from env.escalate_menu import DEFAULT_SELECTOR, EscalateMenu
from env.outcomes import OutcomeTable
from env.round_latency import round_seconds
from env.seen import SeenState, step_mask
from rollouts.errors import ConfigError
from rollouts.strategies.race import finish_order


def prepare_query(table: OutcomeTable, menu: EscalateMenu, qi: int) -> tuple[list, list, list[bool]]:
    """What an :class:`Episode` of query row ``qi`` reads (the env builds it once per query): per pool of
    the menu its records, each with its per-sample values as plain lists (indexing numpy arrays one
    element at a time is what made steps slow; the confidences None where the record has none), the beam
    outcomes per beam config, and which beams it has."""
    beams = [table.search_outcomes(qi, c) for c in menu.beam_configs]
    recs = [
        [
            (p, p.gen_tokens.tolist(), p.scorer_tokens.tolist(), None if p.scores is None else p.scores.tolist(),
             None if p.confidence is None else p.confidence.tolist())
            for p in table.pool_records(qi, cfg)
        ]
        for cfg in menu.pool_configs
    ]
    return recs, beams, [bool(b) for b in beams]


def pick_record(recs: list, pick: float):
    """The record that pick ``pick`` in [0, 1) selects among a query's records of one pool config."""
    return recs[min(int(pick * len(recs)), len(recs) - 1)]


def _as_list(order) -> list[int]:
    return order.tolist() if isinstance(order, np.ndarray) else [int(i) for i in order]


class Episode:
    """One query's escalation over a fixed sample order per pool: the cached pool records, the beams, the state.

    ``step(a)`` returns ``(tokens, seconds, done, correct)`` of that step (correct only when done).
    The env and the lockstep simulator (``policies/escalate_sim.py``) both run episodes through it.
    ``order``: a permutation of the pool's samples, or with several pools one per pool (a list of them).
    """

    __slots__ = (
        "menu", "table", "qi", "pool", "order", "orders", "recs", "state", "beams", "beams_ok", "beam_pick",
        "done", "final", "correct", "_mask", "_gen", "_scorer", "_scores", "finish_watch", "finished", "picked",
        "_round", "_next",
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
        recs, self.beams, self.beams_ok = prepared or prepare_query(table, menu, self.qi)
        self.recs = [pick_record(r, pick) for r in recs]  # per pool: (record, gen, scorer, scores, confidences)
        self.pool, self._gen, self._scorer, self._scores = self.recs[0][:4]
        sizes = [r[0].k for r in self.recs]
        if order is None:
            self.orders = [list(range(k)) for k in sizes]
        elif len(sizes) == 1:
            self.orders = [_as_list(order)]
        else:
            self.orders = [_as_list(o) for o in order]
        self.order = self.orders[0]
        if check and (len(self.orders) != len(sizes) or any(sorted(o) != list(range(k)) for o, k in zip(self.orders, sizes))):
            want = " and ".join(f"range({k})" for k in sizes)
            raise ConfigError(f"a sample order must be a permutation of {want} (one per pool), got {order!r}")
        scored = all(r[0].scores is not None for r in self.recs)
        self.state = SeenState(sizes[0] if len(sizes) == 1 else sizes, scored)
        self.beam_pick = pick
        self.done = False
        self.final: str | None = None
        self.correct = 0.0  # of the final answer, once done
        self._mask: np.ndarray | None = None
        self.finish_watch = menu.watch == "finish"
        self.finished: list[int] = []  # pool positions of the finished samples, in finish order
        self.picked: list[tuple[int, int]] = []  # (pool, position) of each finished sample, in finish order
        self._round: list[int] = []  # the current round's pool positions in finish order
        self._next = 0  # its next finisher

    def mask(self) -> np.ndarray:
        """Legal step actions now (computed once per state; callers must not modify it)."""
        if self._mask is None:
            self._mask = step_mask(self.menu, self.state, self.beams_ok)
        return self._mask

    def step(self, a: int, selector: str | None = None) -> tuple[float, float, bool, float]:
        """``selector``: a stop answers with it instead of the stop action's own (a stopping rule's
        answer that is no step action: the ``confidence`` vote)."""
        act = self.menu.actions[a]
        self._mask = None
        if self.finish_watch and act.kind in ("draw", "wait"):
            if act.kind == "draw":
                self._launch(act.k, act.pool)
            tok, secs = self._finish_next()
            return tok, secs, False, 0.0
        if act.kind == "draw":
            return self._draw(act.k, act.pool)
        self.done = True
        self.final = act.id
        if act.kind == "stop":
            sel = selector or act.selector or DEFAULT_SELECTOR
            self.final = f"stop:{sel}"  # the answer's selector (a rule's may be no step action)
            self.state.cancel()
            p, i = self.picked[self.state.answer(sel)]
            tok = self.state.stop_tokens(sel)
            self.state.tokens += tok
            self.correct = float(self.recs[p][0].correct[i])
            return tok, 0.0, True, self.correct
        self.state.cancel()
        outs = self.beams[self.menu.beam_configs.index(str(act.config_id))]
        ok, tok, secs = outs[min(int(self.beam_pick * len(outs)), len(outs) - 1)]
        self.state.tokens += tok
        self.state.seconds += secs
        self.correct = float(ok)
        return tok, secs, True, self.correct

    def _draw(self, k: int, p: int) -> tuple[float, float, bool, float]:
        """A whole round of the next ``k`` samples of pool ``p``'s order (the round watch)."""
        st = self.state
        rec, gen_l, scorer_l, scores_l, conf_l = self.recs[p]
        lo = st.pool_launched[p]
        idx = self.orders[p][lo : lo + k]
        gen = [gen_l[i] for i in idx]
        secs = round_seconds(self.table, self.qi, rec, k, max(gen))
        tok, secs = st.add_round(
            [rec.keys[i] for i in idx],
            gen,
            [scorer_l[i] for i in idx],
            None if scores_l is None else [scores_l[i] for i in idx],
            secs,
            p,
            None if conf_l is None else [conf_l[i] for i in idx],
        )
        self.picked.extend((p, i) for i in idx)
        return tok, secs, False, 0.0

    def _launch(self, k: int, p: int) -> None:
        """Launch the next ``k`` samples of pool ``p``'s order as one round (finish watch)."""
        st = self.state
        gen_l = self.recs[p][1]
        lo = st.pool_launched[p]
        idx = self.orders[p][lo : lo + k]
        self._round = [idx[j] for j in finish_order([gen_l[i] for i in idx])]
        self._next = 0
        st.launch(k, p)

    def _finish_next(self) -> tuple[float, float]:
        """Run the current round to its next finish; the (tokens, seconds) accrued until then."""
        st = self.state
        p = st.round_pools[-1]
        rec, gen_l, scorer_l, scores_l, conf_l = self.recs[p]
        i = self._round[self._next]
        self._next += 1
        self.finished.append(i)
        self.picked.append((p, i))
        g = gen_l[i]
        secs = round_seconds(self.table, self.qi, rec, st.widths[-1], g)
        score = None if scores_l is None else scores_l[i]
        return st.finish(rec.keys[i], g, scorer_l[i], score, secs, None if conf_l is None else conf_l[i])
