"""Never worse than the default: a static fallback per λ and a gate that lets a policy deviate from it
only where cross-fitted evidence says the deviations pay.

Every trained policy carries

- its **fallback** (:class:`StaticFallback`): at any (λ_T, λ_L), the single action with the highest
  mean utility over the train + validation queries (per-action mean correctness, tokens and seconds
  are stored, so the choice is computed per λ, also in the ONNX export);
- a **gate** (:class:`Gate`): the λ plane is cut into regions (:class:`LambdaRegions`, the cells of
  the evaluation grid, nearest centre in log λ), and each region is open or closed. In a closed region
  the policy plays the fallback; in an open one, its own choice.

The rule (:func:`decide`): a region opens only if the deviations' paired utility gain over the
fallback, measured per query on queries the routed policy was *not* fitted on, is positive with the
chosen confidence: the ``1 − confidence`` quantile of its bootstrap mean is > 0 (``TOL``). Where the
policy never deviates the gain is 0 and the region stays closed (the choice is the same either way).
For the utility actor, whose evidence comes from refits of its procedure, a region also stays closed
where the shipped policy's own deviations lose on the validation split (mean paired gain against
the train-picked static < 0; a consistency check, not evidence: that split chose its checkpoint).

The evidence is cross-fitted for the utility actor (:func:`policies.gate_fit.crossfit_utility`):
train + validation are cut into K folds; for each fold the gain head is refitted (warm start) on
the others (early stopping on one of them) and routes the held-out fold, against the fallback picked
on the same other folds. So every train + validation query contributes one out-of-fold paired gain
per region. For a policy whose fitting cannot be repeated cheaply (an SB3 ``MlpPolicy``),
:func:`policies.gate_fit.holdout_gains` uses its choices on the validation split against the
train-picked static. The sequential policy (issue #12) can use the same gate: a fallback per λ
(a :class:`StaticFallback`, or its best tuned stopping rule) and :func:`fit_gate` fed with per-query
held-out gains (its episodes' utilities minus the fallback's).

**Shrinkage.** The per-query gain δ(q) of the utility actor is scaled by α ∈ [0, 1] before it is
used: α is the least-squares coefficient of the out-of-fold residual correctness (y − c̄) on the
out-of-fold δ, pooled over the folds (cross-validated, chosen on the training folds only; no hand
constant). Where δ does not predict held-out outcomes, α → 0 and the policy is static; with more
data, δ generalises and α → 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

TOL = 1e-9
GATE_FORMAT = "ttc-alloc/gate"


# ----------------------------------------------------------------------------------------------
# Fallback and regions


@dataclass
class StaticFallback:
    """The static action with the best mean utility over ``rows`` (train + validation) at each λ."""

    action_ids: list[str]
    mean_correct: np.ndarray
    mean_tokens: np.ndarray
    mean_seconds: np.ndarray

    @classmethod
    def fit(cls, table, rows: np.ndarray) -> StaticFallback:
        """From an :class:`env.outcomes.OutcomeTable` and the rows to average over."""
        rows = np.asarray(rows)
        mt, ms = table.mean_costs(rows)
        return cls(list(table.action_ids), table.mean_correct(rows), mt, ms)

    def action(self, lambda_tokens: float, lambda_seconds: float) -> int:
        """Index of the fallback action: argmax of mean utility (never-measured actions excluded;
        ties: the first in menu order, as :class:`policies.baselines.TrainBestStaticPolicy`)."""
        u = self.mean_correct - lambda_tokens * self.mean_tokens - lambda_seconds * self.mean_seconds
        return int(np.argmax(np.nan_to_num(u, nan=-np.inf)))

    def choose(self, mask: np.ndarray, lambda_tokens: float, lambda_seconds: float) -> np.ndarray:
        """The fallback for each row of ``mask`` (the first legal action where it is masked)."""
        mask = np.atleast_2d(np.asarray(mask, dtype=bool))
        a = self.action(lambda_tokens, lambda_seconds)
        # as policies.base.first_legal (not imported: this module must load with numpy alone)
        return np.where(mask[:, a], a, np.argmax(mask, axis=1)).astype(np.int64)

    def to_dict(self) -> dict[str, Any]:
        def vals(x: np.ndarray) -> list[float | None]:
            return [None if not np.isfinite(v) else float(v) for v in x]

        return {
            "action_ids": list(self.action_ids),
            "mean_correct": vals(self.mean_correct),
            "mean_tokens": vals(self.mean_tokens),
            "mean_seconds": vals(self.mean_seconds),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StaticFallback:
        def arr(x: list) -> np.ndarray:
            return np.array([np.nan if v is None else v for v in x], dtype=np.float64)

        return cls(
            list(d["action_ids"]), arr(d["mean_correct"]), arr(d["mean_tokens"]), arr(d["mean_seconds"])
        )


def _log_axis(axis: Sequence[float]) -> tuple[np.ndarray, float]:
    """log10(λ + ε) of the axis values, ε one half-decade below the smallest positive value (so 0
    sits one grid step below it on the default sqrt(10)-spaced grid)."""
    pos = [v for v in axis if v > 0]
    eps = (min(pos) / math.sqrt(10.0)) if pos else 1.0
    return np.log10(np.asarray(axis, dtype=np.float64) + eps), eps


@dataclass
class LambdaRegions:
    """Cells of a λ grid: a λ belongs to the cell of the nearest centre per axis, in log10(λ + ε)."""

    lambda_tokens: list[float]
    lambda_seconds: list[float]

    def index(self, lambda_tokens: float, lambda_seconds: float) -> tuple[int, int]:
        out = []
        for axis, lam in ((self.lambda_tokens, lambda_tokens), (self.lambda_seconds, lambda_seconds)):
            logs, eps = _log_axis(axis)
            out.append(int(np.argmin(np.abs(logs - math.log10(max(float(lam), 0.0) + eps)))))
        return out[0], out[1]

    @property
    def centres(self) -> list[tuple[float, float]]:
        return [(a, b) for a in self.lambda_tokens for b in self.lambda_seconds]

    def to_dict(self) -> dict[str, Any]:
        return {"lambda_tokens": list(self.lambda_tokens), "lambda_seconds": list(self.lambda_seconds)}


# ----------------------------------------------------------------------------------------------
# The rule


def resample_weights(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) bootstrap draw counts / n (a resample's mean of a per-query value is one product)."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n


def decide(gains: np.ndarray, confidence: float = 0.9, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Open (True) iff the mean of the per-query paired ``gains`` is > 0 with ``confidence``: the
    ``1 − confidence`` quantile of its bootstrap distribution is above ``TOL``."""
    g = np.asarray(gains, dtype=np.float64)
    if len(g) == 0:
        return {"open": False, "gain": 0.0, "lower": 0.0, "n": 0, "deviating": 0.0}
    boot = resample_weights(len(g), n_boot, seed) @ g
    lower = float(np.quantile(boot, 1.0 - confidence))
    return {
        "open": bool(lower > TOL),
        "gain": float(g.mean()),
        "lower": lower,
        "n": int(len(g)),
        "deviating": float((np.abs(g) > TOL).mean()),
    }


@dataclass
class Gate:
    """A fallback per λ and an open/closed decision per λ region (see the module docstring)."""

    fallback: StaticFallback
    regions: LambdaRegions
    open: np.ndarray  # (len(lambda_tokens), len(lambda_seconds)) bool
    confidence: float = 0.9
    shrinkage: float | None = None  # α applied to the utility actor's per-query gain (None: not one)
    evidence: list[dict[str, Any]] = field(default_factory=list)
    method: str = "crossfit"

    def is_open(self, lambda_tokens: float, lambda_seconds: float) -> bool:
        return bool(self.open[self.regions.index(lambda_tokens, lambda_seconds)])

    @property
    def open_share(self) -> float:
        """The share of λ regions in which the policy may deviate from its fallback."""
        return float(np.mean(self.open)) if self.open.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": GATE_FORMAT,
            "method": self.method,
            "confidence": self.confidence,
            "shrinkage": self.shrinkage,
            "regions": self.regions.to_dict(),
            "open": [[bool(x) for x in row] for row in self.open],
            "open_share": self.open_share,
            "fallback": self.fallback.to_dict(),
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Gate:
        if d.get("format") != GATE_FORMAT:
            raise ValueError("not a ttc-alloc gate")
        r = d["regions"]
        return cls(
            fallback=StaticFallback.from_dict(d["fallback"]),
            regions=LambdaRegions(list(r["lambda_tokens"]), list(r["lambda_seconds"])),
            open=np.array(d["open"], dtype=bool),
            confidence=float(d["confidence"]),
            shrinkage=d.get("shrinkage"),
            evidence=list(d.get("evidence", [])),
            method=str(d.get("method", "crossfit")),
        )


def fit_gate(
    fallback: StaticFallback,
    regions: LambdaRegions,
    gains: Callable[[float, float], np.ndarray],
    confidence: float = 0.9,
    n_boot: int = 1000,
    seed: int = 0,
    shrinkage: float | None = None,
    method: str = "crossfit",
    check: Callable[[float, float], np.ndarray] | None = None,
) -> Gate:
    """A gate from ``gains(λ_T, λ_L)``: the per-query paired utility gains (policy − its fallback) on
    held-out queries at each region's centre. Generic: any policy that can produce those gains.

    ``check``: optional per-query gains of the *shipped* policy itself on queries it was not fitted on
    (when ``gains`` come from refits of its procedure): a region that ``gains`` opens stays closed if
    their mean is below 0, i.e. where the shipped policy's own deviations already lose."""
    open_ = np.zeros((len(regions.lambda_tokens), len(regions.lambda_seconds)), dtype=bool)
    evidence = []
    for i, lt in enumerate(regions.lambda_tokens):
        for j, ls in enumerate(regions.lambda_seconds):
            d = decide(gains(lt, ls), confidence, n_boot, seed)
            if check is not None:
                c = np.asarray(check(lt, ls), dtype=np.float64)
                d["check_gain"] = float(c.mean()) if len(c) else 0.0
                d["open"] = bool(d["open"] and d["check_gain"] >= -TOL)
            open_[i, j] = d["open"]
            evidence.append({"lambda_tokens": lt, "lambda_seconds": ls, **d})
    return Gate(fallback, regions, open_, confidence, shrinkage, evidence, method)
