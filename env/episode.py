"""One query's escalation episode over a fixed sample order, on the cached records.

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
    """What an :class:`Episode` of query row ``qi`` reads (the env builds it once per query): its pool
    records, each with its per-sample values as plain lists (indexing numpy arrays one element at a
    time is what made steps slow), the beam outcomes per beam config, and which beams it has."""
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
        "correct", "_mask", "_gen", "_scorer", "_scores", "finish_watch", "finished", "_round", "_next",
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
        self.finish_watch = menu.watch == "finish"
        self.finished: list[int] = []  # pool positions of the finished samples, in finish order
        self._round: list[int] = []  # the current round's pool positions in finish order
        self._next = 0  # its next finisher

    def mask(self) -> np.ndarray:
        """Legal step actions now (computed once per state; callers must not modify it)."""
        if self._mask is None:
            self._mask = step_mask(self.menu, self.state, self.beams_ok)
        return self._mask

    def step(self, a: int) -> tuple[float, float, bool, float]:
        act = self.menu.actions[a]
        self._mask = None
        if self.finish_watch and act.kind in ("draw", "wait"):
            if act.kind == "draw":
                self._launch(act.k)
            tok, secs = self._finish_next()
            return tok, secs, False, 0.0
        if act.kind == "draw":
            st = self.state
            idx = self.order[st.drawn : st.drawn + act.k]
            gen = [self._gen[i] for i in idx]
            secs = round_seconds(self.table, self.qi, self.pool, act.k, max(gen))
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
            self.state.cancel()
            ans = self.state.answer(sel)
            pick = self.finished[ans] if self.finish_watch else self.order[ans]
            tok = self.state.stop_tokens(sel)
            self.state.tokens += tok
            self.correct = float(self.pool.correct[pick])
            return tok, 0.0, True, self.correct
        self.state.cancel()
        outs = self.beams[self.menu.beam_configs.index(str(act.config_id))]
        ok, tok, secs = outs[min(int(self.beam_pick * len(outs)), len(outs) - 1)]
        self.state.tokens += tok
        self.state.seconds += secs
        self.correct = float(ok)
        return tok, secs, True, self.correct

    def _launch(self, k: int) -> None:
        """Launch the next ``k`` samples of the order as one round (finish watch)."""
        st = self.state
        idx = self.order[st.launched : st.launched + k]
        self._round = [idx[j] for j in finish_order([self._gen[i] for i in idx])]
        self._next = 0
        st.launch(k)

    def _finish_next(self) -> tuple[float, float]:
        """Run the current round to its next finish; the (tokens, seconds) accrued until then."""
        st = self.state
        i = self._round[self._next]
        self._next += 1
        self.finished.append(i)
        g = self._gen[i]
        secs = round_seconds(self.table, self.qi, self.pool, st.widths[-1], g)
        score = None if self._scores is None else self._scores[i]
        return st.finish(self.pool.keys[i], g, self._scorer[i], score, secs)
