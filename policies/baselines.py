"""Baselines behind the common ``choose`` call: every static config, random, the hindsight oracle."""

from __future__ import annotations

import numpy as np

from env.outcomes import OutcomeTable
from policies.base import AllocationPolicy, first_legal


class StaticPolicy(AllocationPolicy):
    """Always the same action; where it is missing for a query, the first legal action of the menu."""

    def __init__(self, action: int, name: str):
        self.action = int(action)
        self.name = f"static:{name}"

    def choose(self, table: OutcomeTable, rows, lambda_tokens, lambda_seconds):
        rows = np.asarray(rows)
        return first_legal(table.mask[rows], np.full(len(rows), self.action))


def static_policies(table: OutcomeTable) -> list[StaticPolicy]:
    return [StaticPolicy(i, a.id) for i, a in enumerate(table.menu)]


class RandomPolicy(AllocationPolicy):
    """Uniform over the legal actions of each query (seeded)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)

    def choose(self, table: OutcomeTable, rows, lambda_tokens, lambda_seconds):
        m = table.mask[np.asarray(rows)]
        u = self.rng.random(m.shape)
        return np.argmax(np.where(m, u, -1.0), axis=1)


class OraclePolicy(AllocationPolicy):
    """Per-query hindsight argmax of expected utility (the upper bound). Ties: the cheaper action."""

    name = "oracle"

    def choose(self, table: OutcomeTable, rows, lambda_tokens, lambda_seconds):
        rows = np.asarray(rows)
        u = table.utility(lambda_tokens, lambda_seconds)[rows]
        best = u.max(axis=1, keepdims=True)
        tie = np.isclose(u, best, rtol=0, atol=1e-12) & table.mask[rows]
        cost = np.where(tie, table.tokens[rows], np.inf)
        return np.argmin(cost, axis=1)


class TrainBestStaticPolicy(AllocationPolicy):
    """At each (λ_T, λ_L), the one action with the highest mean utility on the train split: the static
    config a practitioner would deploy without per-query routing (no hindsight on the evaluated queries)."""

    name = "static_train_best"

    def __init__(self, train_rows: np.ndarray):
        self.train_rows = np.asarray(train_rows)

    def action(self, table: OutcomeTable, lambda_tokens: float, lambda_seconds: float) -> int:
        mean = table.mean_utility(self.train_rows, lambda_tokens, lambda_seconds)
        return int(np.argmax(np.nan_to_num(mean, nan=-np.inf)))

    def choose(self, table: OutcomeTable, rows, lambda_tokens, lambda_seconds):
        rows = np.asarray(rows)
        a = self.action(table, lambda_tokens, lambda_seconds)
        return first_legal(table.mask[rows], np.full(len(rows), a))
