"""Budgets instead of prices: find the λ at which a policy's mean cost meets a target.

Users think in budgets ("at most 300 tokens per query on average", "2 s per query on average"),
the policy in prices (λ_T per token, λ_L per second). For a penalty-conditioned policy the mean
cost over a set of queries falls as the price rises (the utility actor's choice is the argmax of
gain − λ·cost per query, so it is non-increasing in λ; for other actors bisection still finds a
crossing), so the price that meets a target is found by bisection on log λ over the non-test queries
(train + validation by default, see ``BUDGET_SPLITS``: the test split stays untouched for reporting).

:func:`solve_lambda` works on any ``choose(lambda_tokens, lambda_seconds) -> action per row``; both
``evaluate.py --target-tokens/--target-seconds`` and ``serve.py``'s ``ttc.target_*`` fields call it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rollouts.errors import TTCError

COSTS = ("tokens", "seconds")
#: which queries a target is solved on. ``train+val`` (default): all non-test queries. On the bundled
#: cache the validation split alone (~216 queries) is too small: its mean cost at a fixed λ sits ~10 %
#: above the train and test splits' (docs/evaluation.md, "Budgets instead of prices"), so a λ solved on it misses on test.
BUDGET_SPLITS = ("train+val", "val")


def budget_rows(rows_of: dict[str, np.ndarray], which: str = "train+val") -> np.ndarray:
    """The rows of ``rows_of`` (split name -> table rows) that budget targets are solved on."""
    if which not in BUDGET_SPLITS:
        raise BudgetError(f"budget split must be one of {', '.join(BUDGET_SPLITS)}, got {which!r}")
    return rows_of["val"] if which == "val" else np.concatenate([rows_of["train"], rows_of["val"]])


class BudgetError(TTCError):
    """A target that cannot be met or is malformed; the message names it."""


@dataclass(frozen=True)
class BudgetSolution:
    cost: str  # "tokens" | "seconds"
    target: float
    lambda_tokens: float
    lambda_seconds: float
    achieved: float  # the policy's mean cost on the solving split at that λ
    binding: bool  # False when the target is met at λ = 0 (the budget does not constrain)
    iterations: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def solve_lambda(
    mean_cost: Callable[[float, float], float],
    cost: str,
    target: float,
    other_lambda: float = 0.0,
    scale: float = 1.0,
    iters: int = 40,
) -> BudgetSolution:
    """The smallest price (to bisection precision) at which ``mean_cost(λ_T, λ_L)`` is <= ``target``.

    ``cost`` says which λ is solved for (``tokens``: λ_T, ``seconds``: λ_L); the other stays at
    ``other_lambda``. ``scale`` is a typical price (e.g. 1 / the largest mean cost) from which the
    upper bracket is searched by doubling. Raises :class:`BudgetError` when even a prohibitive price
    cannot bring the mean cost down to the target.
    """
    if cost not in COSTS:
        raise BudgetError(f"cost must be one of {COSTS}, got {cost!r}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
        raise BudgetError(f"target_{cost} must be a finite number > 0, got {target!r}")

    def at(lam: float) -> float:
        return float(mean_cost(lam, other_lambda) if cost == "tokens" else mean_cost(other_lambda, lam))

    def solution(lam: float, achieved: float, binding: bool, n: int) -> BudgetSolution:
        lt, ls = (lam, other_lambda) if cost == "tokens" else (other_lambda, lam)
        return BudgetSolution(cost, float(target), float(lt), float(ls), achieved, binding, n)

    c0 = at(0.0)
    if c0 <= target:
        return solution(0.0, c0, False, 0)
    hi, c_hi, n = max(scale, 1e-12), at(max(scale, 1e-12)), 1
    while c_hi > target:
        if n > 60:
            raise BudgetError(
                f"target_{cost} {target:g} is below what the policy ever spends (mean {c_hi:.4g} at λ = {hi:.3g})"
            )
        hi *= 4.0
        c_hi, n = at(hi), n + 1
    lo = hi / 4.0 if n > 1 else 0.0
    for _ in range(iters):
        mid = math.sqrt(lo * hi) if lo > 0 else hi / 1e3
        c_mid = at(mid)
        n += 1
        if c_mid > target:
            lo = mid
        else:
            hi, c_hi = mid, c_mid
        if lo > 0 and hi / lo < 1.0 + 1e-6:
            break
    return solution(hi, c_hi, True, n)


def table_mean_cost(table: Any, rows: np.ndarray, choose: Callable[[float, float], np.ndarray], cost: str):
    """``mean_cost(λ_T, λ_L)`` for :func:`solve_lambda`: the outcome table's mean tokens or seconds
    of ``choose``'s actions over ``rows``."""
    arr = table.tokens if cost == "tokens" else table.seconds
    rows = np.asarray(rows)

    def mean_cost(lt: float, ls: float) -> float:
        a = np.asarray(choose(lt, ls), dtype=np.int64)
        return float(arr[rows, a].mean())

    return mean_cost


def solve_on_table(
    table: Any,
    rows: np.ndarray,
    choose: Callable[[float, float], np.ndarray],
    cost: str,
    target: float,
    other_lambda: float = 0.0,
) -> BudgetSolution:
    """:func:`solve_lambda` over an outcome table's ``rows`` (the validation split)."""
    tok, sec = table.cost_scale(rows)
    scale = 1.0 / max(tok if cost == "tokens" else sec, 1e-12)
    return solve_lambda(table_mean_cost(table, rows, choose, cost), cost, target, other_lambda, scale)


def budget_report(
    table: Any,
    choose: Callable[[np.ndarray, float, float], np.ndarray],
    solve_rows: np.ndarray,
    eval_rows: np.ndarray,
    targets: dict[str, list[float]],
    other_lambda: dict[str, float] | None = None,
) -> list[dict[str, Any]]:
    """Per target: λ solved on ``solve_rows`` (train + validation), then the policy on ``eval_rows`` (test) at
    that λ (accuracy, mean cost, relative miss of the target) beside the static configs: the most
    accurate one whose mean cost on ``eval_rows`` is within the target, and the one of closest cost.

    ``choose(rows, λ_T, λ_L)`` gives the policy's action per row; ``targets`` maps ``tokens`` /
    ``seconds`` to target values; ``other_lambda`` the fixed price of the other cost (default 0).
    """
    other = other_lambda or {}
    out = []
    for cost, values in targets.items():
        arr = table.tokens if cost == "tokens" else table.seconds
        static_cost = arr[eval_rows].mean(axis=0)
        static_acc = table.correct[eval_rows].mean(axis=0)
        for target in values:
            fixed = float(other.get("seconds" if cost == "tokens" else "tokens", 0.0))
            sol = solve_on_table(table, solve_rows, lambda lt, ls: choose(solve_rows, lt, ls), cost, target, fixed)
            a = np.asarray(choose(eval_rows, sol.lambda_tokens, sol.lambda_seconds), dtype=np.int64)
            achieved = float(arr[eval_rows, a].mean())
            within = np.flatnonzero(static_cost <= target)
            best_in = int(within[np.argmax(static_acc[within])]) if len(within) else None
            closest = int(np.argmin(np.abs(static_cost - achieved)))
            out.append({
                **sol.to_dict(),
                "solved_on_mean": sol.achieved,
                "eval_mean": achieved,
                "eval_rel_error": (achieved - target) / target,
                "eval_accuracy": float(table.correct[eval_rows, a].mean()),
                "eval_mean_tokens": float(table.tokens[eval_rows, a].mean()),
                "eval_mean_seconds": float(table.seconds[eval_rows, a].mean()),
                "static_within_budget": None if best_in is None else {
                    "action": table.action_ids[best_in], "accuracy": float(static_acc[best_in]),
                    "mean": float(static_cost[best_in]),
                },
                "static_closest_cost": {
                    "action": table.action_ids[closest], "accuracy": float(static_acc[closest]),
                    "mean": float(static_cost[closest]),
                },
            })  # fmt: skip
    return out


def budget_markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| target | λ (solved) | mean where solved | test mean | miss | test acc | best static within target (acc, mean) | static of closest cost (acc, mean) |",
        "|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        lam = r["lambda_tokens"] if r["cost"] == "tokens" else r["lambda_seconds"]
        sw, sc = r["static_within_budget"], r["static_closest_cost"]
        swt = "–" if sw is None else f"`{sw['action']}` ({sw['accuracy']:.3f}, {sw['mean']:.3g})"
        lines.append(
            f"| {r['target']:g} {r['cost']} | {lam:.3g} | {r['solved_on_mean']:.4g} | {r['eval_mean']:.4g} | "
            f"{r['eval_rel_error']:+.1%} | {r['eval_accuracy']:.3f} | {swt} | "
            f"`{sc['action']}` ({sc['accuracy']:.3f}, {sc['mean']:.3g}) |"
        )
    return "\n".join(lines) + "\n"
