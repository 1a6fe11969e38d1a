"""The written results of an evaluation: ``results.md``, ``results.csv`` and the JSON (``--json``).

:func:`write_results` writes one evaluation's files in one order for both kinds of run; the tables are
:func:`oneshot_markdown` (``evaluate.py`` on a one-shot run, also its CSV :func:`write_csv`) and
:func:`sequential_markdown` (:mod:`evaluation.sequential`). The JSON keys are documented where the
results are built (:mod:`evaluation.oneshot`, :mod:`evaluation.sequential`).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def write_results(
    result: dict[str, Any],
    out_dir: Path,
    markdown: Callable[[dict[str, Any]], str],
    plot: Callable[[dict[str, Any], Path], None] | None = None,
    table: Callable[[dict[str, Any], Path], None] | None = None,
    json_path: str | None = None,
) -> dict[str, Any]:
    """Write ``result`` into ``out_dir``: ``results.csv`` (with ``table``), ``results.md``, the Pareto PNGs
    (with ``plot``) and the JSON at ``json_path``; returns ``result`` with ``out_dir`` added."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if table is not None:
        table(result, out_dir / "results.csv")
    (out_dir / "results.md").write_text(markdown(result))
    if plot is not None:
        plot(result, out_dir)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    result["out_dir"] = str(out_dir)
    return result


def strip_private(o: Any) -> Any:
    """``o`` without the ``_boot`` arrays kept for grid means, numpy scalars as Python numbers."""
    if isinstance(o, dict):
        return {k: strip_private(v) for k, v in o.items() if k != "_boot"}
    if isinstance(o, list):
        return [strip_private(v) for v in o]
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.bool_):
        return bool(o)
    return o


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    raise TypeError(type(o))


def fmt(x: float | None, nd: int = 3) -> str:
    """``x`` to ``nd`` decimals; a dash for None or NaN (no gap, no value)."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def write_csv(result: dict[str, Any], path: Path) -> None:
    """One row per λ point and policy of a one-shot evaluation (``results.csv``)."""
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(
            [
                "lambda_tokens",
                "lambda_seconds",
                "policy",
                "accuracy",
                "mean_tokens",
                "mean_seconds",
                "utility",
                "gap_share",
                "is_best_static",
            ]
        )
        for p in result["points"]:
            for name, m in p["policies"].items():
                gs = p.get(f"{name}_gap_share") if name in ("ppo", "probe_router", "ppo_gated") else None
                w.writerow(
                    [
                        p["lambda_tokens"],
                        p["lambda_seconds"],
                        name,
                        f"{m['accuracy']:.6f}",
                        f"{m['mean_tokens']:.3f}",
                        f"{m['mean_seconds']:.5f}",
                        f"{m['utility']:.6f}",
                        "" if gs is None else f"{gs:.4f}",
                        name == f"static:{p['best_static']}",
                    ]
                )


def oneshot_markdown(result: dict[str, Any]) -> str:
    """``results.md`` of a one-shot run: the summary, one table row per λ point, and the gated policies."""
    s = result["summary"]
    lines = [
        f"# Evaluation: {result['model']}",
        "",
        f"Cache `{result['cache']}`, split `{result['split']}` ({result['n_queries']} queries), "
        f"{len(result['menu'])} actions. Utility = accuracy − λ_T·tokens − λ_L·seconds (expected values).",
        "",
        f"PPO ≥ best static at {s['ppo_ge_best_static']}/{s['n_points']} points; PPO ≥ probe router at "
        f"{s['ppo_ge_probe_router']}/{s['n_points']}; mean gap share closed: PPO {fmt(s['ppo_gap_share_mean'], 2)}, "
        f"router {fmt(s['probe_router_gap_share_mean'], 2)} (min PPO {fmt(s['ppo_gap_share_min'], 2)}).",
        f"PPO ≥ the static config picked on the train split (no hindsight) at "
        f"{s['ppo_ge_static_train_best']}/{s['n_points']} points; that static itself is ≥ the hindsight best "
        f"static at {s['static_train_best_ge_best_static']}/{s['n_points']} (what no routing at all scores). "
        f"Points where PPO is below the best static with 90% confidence (paired bootstrap over queries, "
        f"{s['n_boot']} resamples, best static re-picked per resample): {s['ppo_below_best_static_ci']}/{s['n_points']}.",
    ]
    if result.get("latency", "seconds from the cache") != "seconds from the cache":
        lines.append(f"Latency: {result['latency']}; the λ_L axis is [0].")
    joint = s.get("all_points_ge_best_static_p")
    if joint:
        lines.append(
            f"Share of those resamples in which a policy is ≥ the best static at every point: PPO "
            f"{joint['ppo']:.2f}, router {joint['probe_router']:.2f}, train-picked static {joint['static_train_best']:.2f}."
        )
    lines += [
        "",
        "| λ_T | λ_L | best static | U static | U oracle | U router | U PPO | PPO − static [90% CI] | P(PPO ≥ static) | PPO gap share | router gap share | PPO acc | PPO tokens | PPO s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        pol = p["policies"]
        bs = pol[f"static:{p['best_static']}"]
        vs = p["ppo_vs_best_static"]
        lines.append(
            f"| {p['lambda_tokens']:.3g} | {p['lambda_seconds']:.3g} | {p['best_static']} | {fmt(bs['utility'])} | "
            f"{fmt(pol['oracle']['utility'])} | {fmt(pol['probe_router']['utility'])} | {fmt(pol['ppo']['utility'])} | "
            f"{vs['diff']:+.3f} [{vs['ci90'][0]:+.3f}, {vs['ci90'][1]:+.3f}] | {vs['p_ge']:.2f} | "
            f"{fmt(p['ppo_gap_share'], 2)} | {fmt(p['probe_router_gap_share'], 2)} | {fmt(pol['ppo']['accuracy'])} | "
            f"{pol['ppo']['mean_tokens']:.1f} | {pol['ppo']['mean_seconds']:.3f} |"
        )
    if "ppo_gated_ge_best_static" in s:
        g = s["gate"]
        below_train = s["below_static_train_best_ci"]
        lines += [
            "",
            f"Gated (policies/gate.py): PPO's gate is open at {g['points_open']['ppo']}/{s['n_points']} points "
            f"(gain shrinkage α = {fmt(g['ppo']['shrinkage'], 3)}, evidence: {g['ppo']['method']}), the router's at "
            f"{g['points_open']['probe_router']}/{s['n_points']}. Gated PPO ≥ best static at "
            f"{s['ppo_gated_ge_best_static']}/{s['n_points']}, ≥ the train-picked static at "
            f"{s['ppo_gated_ge_static_train_best']}/{s['n_points']}, mean gap share {fmt(s['ppo_gated_gap_share_mean'], 3)} "
            f"(ungated {fmt(s['ppo_gap_share_mean'], 3)}), below the best static with 90% confidence at "
            f"{s['ppo_gated_below_best_static_ci']}. Below the train-picked static with 90% confidence: PPO "
            f"{below_train['ppo']}, gated {below_train['ppo_gated']}, router {below_train['probe_router']}, gated router "
            f"{below_train['probe_router_gated']}; below the train+validation-picked static (the fallback): PPO "
            f"{s['below_static_trainval_best_ci']['ppo']}, gated {s['below_static_trainval_best_ci']['ppo_gated']}.",
            "",
            "| λ_T | λ_L | train-picked static | fallback (train+val) | PPO gate | deviating | gated − train static [90% CI] | P(gated ≥) | P(PPO ≥) | router gate | P(router gated ≥) | P(router ≥) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in result["points"]:
            v = p["vs_static_train_best"]
            vg = v["ppo_gated"]
            lines.append(
                f"| {p['lambda_tokens']:.3g} | {p['lambda_seconds']:.3g} | {p['static_train_best']} | "
                f"{p['static_trainval_best']} | {'open' if p['gate']['ppo']['open'] else 'closed'} | "
                f"{p['gate']['ppo']['deviation_share']:.2f} | {vg['diff']:+.3f} [{vg['ci90'][0]:+.3f}, {vg['ci90'][1]:+.3f}] | "
                f"{vg['p_ge']:.2f} | {v['ppo']['p_ge']:.2f} | {'open' if p['gate']['probe_router']['open'] else 'closed'} | "
                f"{v['probe_router_gated']['p_ge']:.2f} | {v['probe_router']['p_ge']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def sequential_markdown(result: dict[str, Any]) -> str:
    """``results.md`` of a sequential run: the bars against the stopping rules and the one-shot run, savings,
    one table row per λ point."""
    s = result["summary"]
    br = s["best_rule"]
    rt = result.get("rule_tuning") or {"split": "val"}
    tuned = f"tuned on {rt['split']} per point" + (" at training time" if rt.get("from") == "rules.json" else "")
    lines = [
        f"# Sequential evaluation: {result['model']}",
        "",
        f"Cache `{result['cache']}`, split `{result['split']}` ({result['n_queries']} queries × "
        f"{result['n_orders']} sample orders, the same for every policy). Utility = accuracy − λ_T·tokens − "
        f"λ_L·seconds. Bootstrap: {s['n_boot']} paired resamples of queries and orders; '90%' = the 90% "
        "interval of the difference lies above (below) zero.",
        "",
        f"Best stopping rule (family, {tuned}; best mean test utility): `{br}`. "
        f"Sequential below it at {s['sequential_below_best_rule_90']}/{s['n_points']} points with 90% "
        f"confidence, above at {s['sequential_above_best_rule_90']}.",
    ]
    fams = ", ".join(f"{f} {u:.4f}" for f, u in s["rule_mean_utility"].items())
    lines.append(f"Rule families (grid-mean test utility of each family's tuned rule): {fams}.")
    lines += [f"Note: {n}." for n in result.get("rule_notes") or []]
    gm = s.get("sequential_vs_best_rule_grid_mean")
    if gm:
        lines.append(
            f"Grid-mean utility: sequential {s['sequential_mean_utility']:.4f}, {br} "
            f"{s['rule_mean_utility'][br]:.4f}; difference {gm['diff']:+.4f} [90% CI {gm['ci90'][0]:+.4f}, "
            f"{gm['ci90'][1]:+.4f}]."
        )
    if "sequential_above_oneshot_ppo_90" in s:
        lines.append(
            f"Versus the one-shot PPO run as shipped (gated; open at {s['oneshot_ppo_gate_open_points']}/"
            f"{s['n_points']} points): above with 90% confidence at {s['sequential_above_oneshot_ppo_90']}"
            f"/{s['n_points']} points, below at {s['sequential_below_oneshot_ppo_90']}; versus it ungated: above "
            f"at {s['sequential_above_oneshot_ppo_ungated_90']}, below at {s['sequential_below_oneshot_ppo_ungated_90']}. "
            f"Share of the summed oracle gaps Σ(U − U_best static) / Σ(U_oracle − U_best static): sequential "
            f"{fmt(s['sequential_gap_share_summed'], 3)}, one-shot {fmt(s['oneshot_ppo_gap_share_summed'], 3)} "
            f"(ungated {fmt(s['oneshot_ppo_ungated_gap_share_summed'], 3)}). Bars: {s['bars']}."
        )
    pts = result["points"]
    if pts and "oracle_no_races" in pts[0]["policies"]:
        mean = {k: float(np.mean([p["policies"][k]["utility"] for p in pts])) for k in ("oracle", "oracle_no_races")}
        lines.append(f"One-shot hindsight oracle, grid mean: {mean['oracle']:.4f} over the menu with its races, "
                     f"{mean['oracle_no_races']:.4f} without them.")  # fmt: skip
    sv = s["savings"]
    if "tokens_ratio" in sv:
        lines.append(
            f"Savings: to reach the most accurate static `{sv['most_accurate_static']}` "
            f"(accuracy {sv['static_accuracy']:.3f}, {sv['static_tokens']:.1f} tokens, {sv['static_seconds']:.2f} s) "
            f"the sequential policy needs {sv['tokens_ratio']:.2f}× its tokens and {sv['seconds_ratio']:.2f}× its seconds."
        )
    else:
        lines.append(
            f"Savings: the sequential policy never reaches the most accurate static `{sv['most_accurate_static']}`'s "
            f"accuracy {sv['static_accuracy']:.3f} on the grid (its best: {sv['sequential_max_accuracy']:.3f})."
        )
    lines += [
        "",
        "| λ_T | λ_L | best static | U static | U oracle | U 1-shot PPO | U best rule | U seq | seq − 1-shot [90% CI] | "
        "seq − rule [90% CI] | seq gap share | seq acc | seq tokens | seq s | rounds | beam |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result["points"]:
        pol = p["policies"]
        one = pol.get("oneshot_ppo")
        vs1 = p.get("sequential_vs_oneshot_ppo")
        vr = p[f"sequential_vs_rule:{br}"]
        seq = pol["sequential"]
        lines.append(
            f"| {p['lambda_tokens']:.3g} | {p['lambda_seconds']:.3g} | {p['best_static']} | "
            f"{fmt(pol['static:' + p['best_static']]['utility'])} | {fmt(pol['oracle']['utility'])} | "
            f"{fmt(one['utility']) if one else '–'} | {fmt(pol['rule:' + br]['utility'])} | {fmt(seq['utility'])} | "
            + (f"{vs1['diff']:+.3f} [{vs1['ci90'][0]:+.3f}, {vs1['ci90'][1]:+.3f}]" if vs1 else "–")
            + f" | {vr['diff']:+.3f} [{vr['ci90'][0]:+.3f}, {vr['ci90'][1]:+.3f}] | {fmt(p['sequential_gap_share'], 2)} | "
            f"{fmt(seq['accuracy'])} | {seq['mean_tokens']:.1f} | {seq['mean_seconds']:.2f} | {seq['mean_rounds']:.2f} | "
            f"{seq['beam_share']:.2f} |"
        )
    return "\n".join(lines) + "\n"
