"""The summary of a sequential evaluation (the JSON's ``summary``) from its per-point records.

Gap shares over the grid are *summed-gap shares*: Σ_points (U_policy − U_best_static) /
Σ_points (U_oracle − U_best_static), so a point whose oracle gap is tiny weighs by its gap rather
than dominating a mean of per-point ratios (null when the summed oracle gap is below 1e-9). The bars
count points as a share of the grid.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from evaluation.bootstrap import TOL

ABOVE_ONESHOT_SHARE = 0.4  # the "above the one-shot PPO" bar: at this share of the grid's points


def summary_from(results: dict[str, Any], ids: list[str], lt: float, ls: float) -> dict[str, Any]:
    """Summary of a policy that plays one-shot action ids[i] on query i (rows of the per-action results)."""
    c = np.stack([results[a].correct[i] for i, a in enumerate(ids)])
    t = np.stack([results[a].tokens[i] for i, a in enumerate(ids)])
    s = np.stack([results[a].seconds[i] for i, a in enumerate(ids)])
    share: dict[str, float] = {}
    for a in ids:
        share[a] = share.get(a, 0.0) + 1.0 / len(ids)
    return {
        "accuracy": float(c.mean()),
        "mean_tokens": float(t.mean()),
        "mean_seconds": float(s.mean()),
        "utility": float((c - lt * t - ls * s).mean()),
        "share": dict(sorted(share.items())),
    }


def summed_gap_share(points: list[dict[str, Any]], policy: str) -> float | None:
    """Σ_points (U_policy − U_best_static) / Σ_points (U_oracle − U_best_static); None when the summed
    oracle gap is below 1e-9."""
    pols = [p["policies"] for p in points]
    num = sum(q[policy]["utility"] - q["static:" + p["best_static"]]["utility"] for p, q in zip(points, pols))
    den = sum(p["oracle_gap"] for p in points)
    return None if den < TOL else float(num / den)


def summarize(
    points: list[dict[str, Any]],
    best_rule: str,
    fam_mean: dict[str, float],
    boots: dict[str, list[np.ndarray]],
    have_oneshot: bool,
    n_boot: int,
) -> dict[str, Any]:
    """The JSON's ``summary`` (without ``savings``)."""
    n = len(points)

    def count(key: str, side: str) -> int:
        return sum(p[key][side] for p in points)

    s: dict[str, Any] = {
        "n_points": n,
        "best_rule": best_rule,
        "rule_mean_utility": fam_mean,
        "sequential_mean_utility": float(np.mean([p["policies"]["sequential"]["utility"] for p in points])),
        "sequential_below_best_rule_90": count(f"sequential_vs_rule:{best_rule}", "below_90"),
        "sequential_above_best_rule_90": count(f"sequential_vs_rule:{best_rule}", "above_90"),
        "sequential_below_trainval_static_90": count("sequential_vs_trainval_static", "below_90"),
        "sequential_above_trainval_static_90": count("sequential_vs_trainval_static", "above_90"),
        "sequential_below_best_static_90": count("sequential_vs_best_static", "below_90"),
        "sequential_above_best_static_90": count("sequential_vs_best_static", "above_90"),
        "sequential_above_oracle_points": [
            [p["lambda_tokens"], p["lambda_seconds"]] for p in points if p["sequential_above_oracle"]
        ],
        "sequential_gap_share_summed": summed_gap_share(points, "sequential"),
        "n_boot": n_boot,
    }
    if boots[best_rule]:
        mb = np.mean(np.stack(boots[best_rule]), axis=0)  # the grid mean in each resample
        lo, hi = np.percentile(mb, [5, 95])
        d = s["sequential_mean_utility"] - fam_mean[best_rule]
        s["sequential_vs_best_rule_grid_mean"] = {
            "diff": d,
            "ci90": [float(lo), float(hi)],
            "above_90": bool(lo > TOL),
        }
    if have_oneshot:
        for name in ("oneshot_ppo", "oneshot_ppo_ungated"):
            s[f"sequential_below_{name}_90"] = count(f"sequential_vs_{name}", "below_90")
            s[f"sequential_above_{name}_90"] = count(f"sequential_vs_{name}", "above_90")
            s[f"{name}_mean_utility"] = float(np.mean([p["policies"][name]["utility"] for p in points]))
            s[f"{name}_gap_share_summed"] = summed_gap_share(points, name)
        s["oneshot_ppo_gate_open_points"] = sum(bool(p["oneshot_ppo_gate_open"]) for p in points)
        s["bars"] = {
            "never_below_oneshot_ppo_90": s["sequential_below_oneshot_ppo_90"] == 0,
            "above_oneshot_ppo_90_at_40pct_of_points": (
                s["sequential_above_oneshot_ppo_90"] >= ABOVE_ONESHOT_SHARE * n
            ),
            "never_below_best_rule_90": s["sequential_below_best_rule_90"] == 0,
            "grid_mean_above_best_rule_90": bool(
                s.get("sequential_vs_best_rule_grid_mean", {}).get("above_90", False)
            ),
        }
    return s


def savings(points: list[dict[str, Any]], oneshot_ids: list[str]) -> dict[str, Any]:
    """Tokens and seconds the sequential policy needs to reach the most accurate static's accuracy
    (the cheapest grid point that matches it), as ratios to that static's."""
    p0 = points[0]["policies"]
    top = max(oneshot_ids, key=lambda a: p0[f"static:{a}"]["accuracy"])
    ref = p0[f"static:{top}"]
    match = [p for p in points if p["policies"]["sequential"]["accuracy"] >= ref["accuracy"] - TOL]
    out: dict[str, Any] = {
        "most_accurate_static": top,
        "static_accuracy": ref["accuracy"],
        "static_tokens": ref["mean_tokens"],
        "static_seconds": ref["mean_seconds"],
        "matching_points": len(match),
        "sequential_max_accuracy": max(p["policies"]["sequential"]["accuracy"] for p in points),
    }
    if match:
        bt = min(match, key=lambda p: p["policies"]["sequential"]["mean_tokens"])
        bsec = min(match, key=lambda p: p["policies"]["sequential"]["mean_seconds"])
        out["tokens_ratio"] = bt["policies"]["sequential"]["mean_tokens"] / ref["mean_tokens"]
        out["tokens_point"] = [bt["lambda_tokens"], bt["lambda_seconds"]]
        out["seconds_ratio"] = bsec["policies"]["sequential"]["mean_seconds"] / ref["mean_seconds"]
        out["seconds_point"] = [bsec["lambda_tokens"], bsec["lambda_seconds"]]
    return out
