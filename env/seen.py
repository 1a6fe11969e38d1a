"""What an escalation episode has seen: the drawn samples, their costs, and the ``seen`` observation
features (:data:`SEEN_FEATURES`).

Shared by ``ttc/Escalate-v0``, the lockstep simulator (``policies/escalate_sim.py``) and live routing
(``policies/sequential_router.py``): cached and live samples go through the same :class:`SeenState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from env.escalate_menu import EscalateMenu
from env.outcomes import OutcomeTable
from rollouts.strategies.selectors import SCORE_SELECTORS, select

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
        "pool_size", "has_scores", "keys", "scorer", "scores", "counts", "score_sum",
        "n_none", "max_score", "gen_sum", "tokens", "seconds", "widths", "round_tokens", "round_seconds",
    )  # fmt: skip

    def __init__(self, pool_size: int, has_scores: bool):
        self.pool_size = int(pool_size)
        self.has_scores = bool(has_scores)
        self.keys: list[str | None] = []
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
