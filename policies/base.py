"""The one call every allocation policy answers: choose an action for these queries at these penalties.

``policy.choose(table, rows, lambda_tokens, lambda_seconds) -> actions`` takes an
:class:`env.outcomes.OutcomeTable`, row indices of queries in it, and the penalties; it returns one
legal action index per row (never a masked one). ``choose_one`` does the same for one query id and
returns the action id. Policies only read what they are allowed to: features, prompt length and the
mask, except the hindsight oracle, which reads the outcomes (it is the upper bound).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from env.outcomes import OutcomeTable, validate_lambda


class AllocationPolicy(ABC):
    name: str = "policy"

    @abstractmethod
    def choose(
        self, table: OutcomeTable, rows: np.ndarray, lambda_tokens: float, lambda_seconds: float
    ) -> np.ndarray:
        """Action indices (len(rows),) for these table rows at these penalties."""

    def choose_one(
        self, table: OutcomeTable, query_id: str, lambda_tokens: float = 0.0, lambda_seconds: float = 0.0
    ) -> str:
        lt = validate_lambda("lambda_tokens", lambda_tokens)
        ls = validate_lambda("lambda_seconds", lambda_seconds)
        a = self.choose(table, table.indices([query_id]), lt, ls)
        return table.action_ids[int(a[0])]


def first_legal(mask: np.ndarray, preferred: np.ndarray) -> np.ndarray:
    """``preferred`` where legal, else the first legal action of the row."""
    ok = mask[np.arange(len(mask)), preferred]
    return np.where(ok, preferred, np.argmax(mask, axis=1))


def score_choices(
    table: OutcomeTable, rows: np.ndarray, actions: np.ndarray, lambda_tokens: float, lambda_seconds: float
) -> dict[str, Any]:
    """Expected accuracy, mean tokens, mean seconds, utility and the share of each action chosen."""
    rows = np.asarray(rows)
    actions = np.asarray(actions, dtype=np.int64)
    if not table.mask[rows, actions].all():
        bad = int(np.argmin(table.mask[rows, actions]))
        raise ValueError(
            f"policy chose masked action {table.action_ids[actions[bad]]!r} for {table.query_ids[rows[bad]]!r}"
        )
    c = table.correct[rows, actions]
    t = table.tokens[rows, actions]
    s = table.seconds[rows, actions]
    u = c - lambda_tokens * t - lambda_seconds * s
    counts = np.bincount(actions, minlength=table.n_actions)
    return {
        "accuracy": float(c.mean()),
        "mean_tokens": float(t.mean()),
        "mean_seconds": float(s.mean()),
        "utility": float(u.mean()),
        "share": {
            table.action_ids[i]: float(counts[i] / len(rows)) for i in range(table.n_actions) if counts[i]
        },
    }


def lambda_grid(table: OutcomeTable, rows: np.ndarray, n: int = 5) -> dict[str, Any]:
    """The n x n evaluation grid from "accuracy only" (0, 0) to "cost dominates".

    Per axis: 0 and n-1 points log-spaced up to λ_max with ratio sqrt(10) (n = 5: 0, 0.032, 0.1,
    0.32, 1 x λ_max), where λ_max = 1 / (largest per-action mean cost over ``rows``): at λ_max the
    most expensive action's tokens (or seconds) alone cost one unit of accuracy. A cache without
    latency (``table.latency_available`` false) gets the λ_L axis [0] only.
    """
    if n < 2:
        raise ValueError("the λ grid needs n >= 2")
    tok, sec = table.cost_scale(rows)
    mults = [0.0] + [10 ** (-(n - 2 - k) / 2) for k in range(n - 1)]
    lt = [float(f"{m / max(tok, 1e-12):.6g}") for m in mults]
    ls = [float(f"{m / max(sec, 1e-12):.6g}") for m in mults]
    if not getattr(table, "latency_available", True):
        ls = [0.0]  # no seconds in the cache: λ_L stays 0, only λ_T is gridded
    return {
        "lambda_tokens": lt,
        "lambda_seconds": ls,
        "multipliers": mults,
        "points": [(a, b) for a in lt for b in ls],
    }
