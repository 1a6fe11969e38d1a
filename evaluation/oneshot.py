"""A one-shot run's evaluation: every policy scored at every λ point on the same rows, and the summary.

:class:`OneShotPolicies` holds what is compared (PPO and the probe router, each with and without its
gate, the statics, the oracle, random, the train- and train+val-picked statics); :class:`GridEvaluation`
scores them at each (λ_T, λ_L) point and judges every point on the same query resamples
(:mod:`evaluation.bootstrap`). ``evaluate.py`` loads the run and the policies, then writes
``points`` and ``summary`` (its docstring lists the JSON keys).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.bootstrap import (
    TOL,
    below,
    bootstrap_vs_action,
    bootstrap_vs_best_static,
    mean_gap_share_spread,
    resample_weights,
    resampled_diff_to_best_static,
    resampled_gap_share,
)
from policies.base import score_choices
from policies.baselines import OraclePolicy, RandomPolicy, StaticPolicy, TrainBestStaticPolicy
from policies.gate import Gate, StaticFallback

#: the policies compared with the statics one by one (``vs_static_*`` keys), in the JSON's order
COMPARED = ("ppo", "ppo_gated", "probe_router", "probe_router_gated")


@dataclass
class OneShotPolicies:
    """The policies of a one-shot evaluation; each answers ``choose(table, rows, λ_T, λ_L)``."""

    ppo: Any
    ppo_gated: Any
    router: Any
    router_gated: Any
    gate: Gate  # PPO's gate (the run's, or the export's)
    router_gate: Gate  # the router's, fitted by the same cross-fitted rule
    trval_static: StaticFallback  # the static picked on train + validation: the gates' fallback
    statics: list[StaticPolicy]
    oracle: OraclePolicy
    train_static: TrainBestStaticPolicy
    seed: int  # of the random policy


class ExportedPolicy:
    """The ONNX export (policies/onnx_policy.py) behind the policies' ``choose`` call, on cache rows."""

    name = "ppo"

    def __init__(self, onnx: Any, gated: bool = True):
        self.onnx, self.gated = onnx, gated

    def choose(self, table: Any, rows: np.ndarray, lambda_tokens: float, lambda_seconds: float) -> np.ndarray:
        rows = np.asarray(rows)
        a = self.onnx.act_index(
            table.features[rows], table.prompt_tokens[rows], lambda_tokens, lambda_seconds,
            mask=table.mask[rows], use_gate=self.gated,
        )  # fmt: skip
        return np.asarray(a, dtype=np.int64).reshape(len(rows))


class GridEvaluation:
    """Score :class:`OneShotPolicies` on ``rows`` of ``table`` at λ points (:meth:`run`), then :meth:`summary`.

    The same resampled test sets serve every λ point: the share of resamples in which a policy clears
    the hindsight best static at *all* points is how likely the grid criterion is on a fresh split.
    """

    def __init__(self, policies: OneShotPolicies, table: Any, rows: np.ndarray, n_boot: int, seed: int):
        self.policies, self.table, self.rows = policies, table, rows
        self.n_boot, self.seed = n_boot, seed
        self.weights = resample_weights(len(rows), n_boot, seed) if n_boot > 0 else None
        self.all_points_ge = {k: np.ones(n_boot, dtype=bool) for k in (*COMPARED, "static_train_best")}
        self.gap_boot: dict[str, list[np.ndarray]] = {k: [] for k in ("ppo", "ppo_gated")}
        self.points: list[dict[str, Any]] = []

    def run(self, lt_axis: list[float], ls_axis: list[float], progress: bool = False) -> list[dict[str, Any]]:
        """One record per (λ_T, λ_L), λ_T outer (the JSON's ``points``)."""
        from tqdm.auto import tqdm

        bar = tqdm(total=len(lt_axis) * len(ls_axis), desc="evaluate", unit="λ point", disable=not progress)
        for lt in lt_axis:
            for ls in ls_axis:
                bar.update(1)
                self.points.append(self._point(lt, ls))
        bar.close()
        return self.points

    def _scores(
        self, lt: float, ls: float, a_train: int, a_trval: int
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Every policy's scores at (λ_T, λ_L), in the JSON's order, and the compared ones' and the
        oracle's choices (``a_train``, ``a_trval``: the train- and train+val-picked static actions)."""
        pol, table, rows = self.policies, self.table, self.rows

        def scored(actions: np.ndarray) -> dict[str, Any]:
            return score_choices(table, rows, actions, lt, ls)

        chosen = {
            "ppo": pol.ppo.choose(table, rows, lt, ls),
            "probe_router": pol.router.choose(table, rows, lt, ls),
            "ppo_gated": pol.ppo_gated.choose(table, rows, lt, ls),
            "probe_router_gated": pol.router_gated.choose(table, rows, lt, ls),
            "oracle": pol.oracle.choose(table, rows, lt, ls),
        }
        scores = {name: scored(a) for name, a in chosen.items()}
        scores["random"] = scored(RandomPolicy(pol.seed).choose(table, rows, lt, ls))
        for sp in pol.statics:
            scores[sp.name] = scored(sp.choose(table, rows, lt, ls))
        # every evaluated row has every action, so the train-picked static is one of the statics
        scores["static_train_best"] = scores[f"static:{table.action_ids[a_train]}"]
        scores["static_trainval_best"] = scores[f"static:{table.action_ids[a_trval]}"]
        return scores, chosen

    def _resample(self, u_rows: np.ndarray, chosen: dict[str, np.ndarray], a_train: int) -> None:
        """Add this point to the all-points shares and the gap-share spread (with resamples)."""
        if self.weights is None:
            return
        picks = {**chosen, "static_train_best": np.full(len(self.rows), a_train)}
        for k in self.all_points_ge:
            self.all_points_ge[k] &= resampled_diff_to_best_static(u_rows, picks[k], self.weights) >= -TOL
        for k in self.gap_boot:
            self.gap_boot[k].append(resampled_gap_share(u_rows, picks[k], chosen["oracle"], self.weights))

    def _point(self, lt: float, ls: float) -> dict[str, Any]:
        pol, table, weights = self.policies, self.table, self.weights
        a_train, a_trval = pol.train_static.action(table, lt, ls), pol.trval_static.action(lt, ls)
        scores, chosen = self._scores(lt, ls, a_train, a_trval)
        a_fallback = pol.trval_static.choose(table.mask[self.rows], lt, ls)
        best = max((sp.name for sp in pol.statics), key=lambda n: scores[n]["utility"])
        u_rows = table.utility(lt, ls)[self.rows]
        self._resample(u_rows, chosen, a_train)
        u_bs, u_or = scores[best]["utility"], scores["oracle"]["utility"]
        gap = u_or - u_bs

        def share(name: str) -> float | None:
            return None if gap < TOL else (scores[name]["utility"] - u_bs) / gap

        def ge(name: str, than: float) -> bool:
            return bool(scores[name]["utility"] >= than - TOL)

        def vs_best_static(name: str) -> dict[str, Any]:
            return bootstrap_vs_best_static(u_rows, chosen[name], n_boot=self.n_boot, seed=self.seed, weights=weights)

        u_train = scores["static_train_best"]["utility"]
        return {
            "lambda_tokens": lt,
            "lambda_seconds": ls,
            "policies": scores,
            "best_static": best.removeprefix("static:"),
            "oracle_gap": gap,
            "ppo_gap_share": share("ppo"),
            "probe_router_gap_share": share("probe_router"),
            "ppo_ge_best_static": ge("ppo", u_bs),
            "ppo_ge_probe_router": ge("ppo", scores["probe_router"]["utility"]),
            "static_train_best": table.action_ids[a_train],
            "ppo_ge_static_train_best": ge("ppo", u_train),
            "static_train_best_ge_best_static": ge("static_train_best", u_bs),
            "ppo_vs_best_static": vs_best_static("ppo"),
            "ppo_gated_gap_share": share("ppo_gated"),
            "ppo_gated_ge_best_static": ge("ppo_gated", u_bs),
            "ppo_gated_ge_static_train_best": ge("ppo_gated", u_train),
            "ppo_gated_vs_best_static": vs_best_static("ppo_gated"),
            "static_trainval_best": table.action_ids[a_trval],
            "gate": {
                name: {"open": g.is_open(lt, ls), "deviation_share": float((chosen[gated] != a_fallback).mean())}
                for name, g, gated in (
                    ("ppo", pol.gate, "ppo_gated"),
                    ("probe_router", pol.router_gate, "probe_router_gated"),
                )
            },
            "vs_static_train_best": {
                name: bootstrap_vs_action(u_rows, chosen[name], a_train, weights) for name in COMPARED
            },
            # the static one would pick from all the data the policy saw (= the gate's fallback)
            "vs_static_trainval_best": {
                name: bootstrap_vs_action(u_rows, chosen[name], a_trval, weights) for name in COMPARED
            },
        }

    def summary(self) -> dict[str, Any]:
        """The grid's counts and means (the JSON's ``summary``)."""
        points, gate, router_gate = self.points, self.policies.gate, self.policies.router_gate

        def count(key: str) -> int:
            return sum(p[key] for p in points)

        def shares(key: str) -> list[float]:
            return [p[key] for p in points if p[key] is not None]

        def below_ci(key: str, name: str | None = None) -> int:
            return sum(below((p[key] if name is None else p[key][name])["ci90"][1]) for p in points)

        ppo_shares, router_shares, gated_shares = (
            shares("ppo_gap_share"), shares("probe_router_gap_share"), shares("ppo_gated_gap_share")
        )  # fmt: skip
        resampled = self.weights is not None
        return {
            "n_points": len(points),
            "ppo_ge_best_static": count("ppo_ge_best_static"),
            "ppo_ge_probe_router": count("ppo_ge_probe_router"),
            "ppo_ge_static_train_best": count("ppo_ge_static_train_best"),
            "static_train_best_ge_best_static": count("static_train_best_ge_best_static"),
            "ppo_gap_share_mean": float(np.mean(ppo_shares)) if ppo_shares else None,
            "ppo_gap_share_min": float(np.min(ppo_shares)) if ppo_shares else None,
            "probe_router_gap_share_mean": float(np.mean(router_shares)) if router_shares else None,
            "ppo_below_best_static_ci": below_ci("ppo_vs_best_static"),
            "ppo_gated_ge_best_static": count("ppo_gated_ge_best_static"),
            "ppo_gated_ge_static_train_best": count("ppo_gated_ge_static_train_best"),
            "ppo_gated_gap_share_mean": float(np.mean(gated_shares)) if gated_shares else None,
            "ppo_gated_below_best_static_ci": below_ci("ppo_gated_vs_best_static"),
            "below_static_train_best_ci": {k: below_ci("vs_static_train_best", k) for k in COMPARED},
            "below_static_trainval_best_ci": {k: below_ci("vs_static_trainval_best", k) for k in COMPARED},
            "gap_share_mean_boot_std": (
                {k: mean_gap_share_spread(v) for k, v in self.gap_boot.items()} if resampled else None
            ),
            "gate": {
                "ppo": {"open_share": gate.open_share, "shrinkage": gate.shrinkage, "method": gate.method},
                "probe_router": {"open_share": router_gate.open_share},
                "points_open": {k: sum(p["gate"][k]["open"] for p in points) for k in ("ppo", "probe_router")},
            },
            "all_points_ge_best_static_p": (
                {k: float(v.mean()) for k, v in self.all_points_ge.items()} if resampled else None
            ),
            "n_boot": self.n_boot,
        }
