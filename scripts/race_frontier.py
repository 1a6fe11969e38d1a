"""What races buy on the one-shot side: a run over the menu with races against one over the old menu.

At every λ point of the default grid, on the test split (the same queries for both runs), with
``evaluate.py``'s paired bootstrap over queries (90 %):

- ``static``: the static picked on train+val over the new menu vs the one picked over the old menu
  (no learning at all: how far the frontier moved);
- ``ppo_gated`` / ``ppo``: the new run's shipped (gated) PPO, and its ungated PPO, vs the old run's
  shipped (gated) PPO;

and the savings headline: the cheapest policy of the new run (its gated PPO at any grid point, or a
static of its menu) whose test accuracy is not below the most accurate old-menu static's with 90 %
confidence (the upper end of the 90 % interval of the accuracy difference is ≥ 0), as ratios of
seconds and tokens to that static's; and the same among those whose test accuracy is at least the
static's (no loss in the point estimate either).

    python -m scripts.race_frontier --run runs/races --compare-run runs/oldmenu [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluation.bootstrap import resample_weights
from evaluation.options import EvalOptions
from evaluation.source import load_source
from rollouts.errors import TTCError, report


@dataclass
class _Run:
    """One run's table, evaluated rows and λ axes, its shipped (gated) and ungated PPO, and the static
    picked on train + validation (the gate's fallback)."""

    inputs: Any
    ppo_gated: Any
    ppo: Any
    trval_static: Any


def _load(run: str, trust: bool) -> _Run:
    from evaluate import load_inputs
    from policies.budget import budget_rows
    from policies.gate import StaticFallback
    from policies.gate_fit import GatedPolicy, run_gate, shrink_gain
    from policies.ppo import PPOPolicy, load_model

    opts = EvalOptions(run=run, progress=False, trust_checkpoint=trust)
    source = load_source(opts)
    inputs = load_inputs(opts, source)
    table, rows_of = inputs.table, inputs.rows_of
    gated = load_model(source.model_path, table, trust=trust)
    gate = run_gate(source.run_dir, gated, table, rows_of["train"], rows_of["val"], source.run_config)
    if gate.shrinkage is not None:
        shrink_gain(gated, gate.shrinkage)
    ungated = PPOPolicy(load_model(source.model_path, table, trust=trust))
    return _Run(inputs, GatedPolicy(PPOPolicy(gated), gate), ungated,
                StaticFallback.fit(table, budget_rows(rows_of, "train+val")))


def _interval(d_q: np.ndarray, weights: np.ndarray) -> dict[str, Any]:
    d = weights @ d_q
    lo, hi = np.percentile(d, [5, 95])
    verdict = "above" if lo > 1e-9 else "below" if hi < -1e-9 else "tie"
    return {"diff": float(d_q.mean()), "ci90": [float(lo), float(hi)], "verdict": verdict}


def _aligned(inputs: Any, ids: list[str]) -> np.ndarray:
    return inputs.table.indices(ids)


def frontier(run: str, compare_run: str, n_boot: int = 1000, seed: int = 0, trust: bool = False) -> dict[str, Any]:
    new_pol, old_pol = _load(run, trust), _load(compare_run, trust)
    new_in, old_in = new_pol.inputs, old_pol.inputs
    if any(a.race for a in old_in.table.menu):
        raise TTCError(f"--compare-run {compare_run}: its menu has races; give a run trained with env.races=[]")
    ids = [new_in.table.query_ids[r] for r in new_in.rows if new_in.table.query_ids[r] in old_in.table.qindex]
    rn, ro = _aligned(new_in, ids), _aligned(old_in, ids)
    weights = resample_weights(len(ids), n_boot, seed)
    tn, to = new_in.table, old_in.table
    points = []
    for lt in new_in.lt_axis:
        for ls in new_in.ls_axis:
            un, uo = tn.utility(lt, ls), to.utility(lt, ls)
            old_ppo = old_pol.ppo_gated.choose(to, ro, lt, ls)
            base = uo[ro, old_ppo]
            s_new = new_pol.trval_static.choose(tn.mask[rn], lt, ls)
            s_old = old_pol.trval_static.choose(to.mask[ro], lt, ls)
            row: dict[str, Any] = {"lambda_tokens": lt, "lambda_seconds": ls,
                                   "static_new": tn.action_names[int(s_new[0])],
                                   "static_old": to.action_names[int(s_old[0])]}
            row["static"] = _interval(un[rn, s_new] - uo[ro, s_old], weights)
            for name in ("ppo_gated", "ppo"):
                row[name] = _interval(un[rn, getattr(new_pol, name).choose(tn, rn, lt, ls)] - base, weights)
            points.append(row)
    counts = {k: {v: sum(p[k]["verdict"] == v for p in points) for v in ("above", "below")}
              for k in ("static", "ppo_gated", "ppo")}
    return {"run": run, "compare_run": compare_run, "test_queries": len(ids), "n_boot": n_boot,
            "points": points, "counts": counts, "savings": savings(new_in, new_pol, old_in, rn, ro, weights)}


def savings(new_in: Any, new_pol: Any, old_in: Any, rn: np.ndarray, ro: np.ndarray, weights: np.ndarray) -> dict:
    """The cheapest new-run policy not below the most accurate old static's accuracy with 90 % confidence."""
    tn, to = new_in.table, old_in.table
    ref = int(np.argmax(to.correct[ro].mean(axis=0)))
    ref_c, ref_t, ref_s = to.correct[ro, ref], to.tokens[ro, ref], to.seconds[ro, ref]
    cands: list[tuple[str, np.ndarray]] = [(f"static:{n}", np.full(len(rn), a)) for a, n in enumerate(tn.action_names)]
    for lt in new_in.lt_axis:
        for ls in new_in.ls_axis:
            cands.append((f"ppo_gated@({lt:.3g},{ls:.3g})", new_pol.ppo_gated.choose(tn, rn, lt, ls)))
    ok = []
    for name, choice in cands:
        c = tn.correct[rn, choice]
        hi = float(np.percentile(weights @ (c - ref_c), 95))
        if hi >= 0:
            ok.append({"policy": name, "accuracy": float(c.mean()), "accuracy_ci90_hi": hi,
                       "seconds_ratio": float(tn.seconds[rn, choice].mean() / ref_s.mean()),
                       "tokens_ratio": float(tn.tokens[rn, choice].mean() / ref_t.mean())})
    level = [r for r in ok if r["accuracy"] >= float(ref_c.mean())]  # stricter: no loss in the point estimate
    out: dict[str, Any] = {"reference": to.action_names[ref], "reference_accuracy": float(ref_c.mean()),
                           "reference_seconds": float(ref_s.mean()), "reference_tokens": float(ref_t.mean())}
    for k in ("seconds", "tokens"):
        out[f"cheapest_in_{k}"] = min(ok, key=lambda r: r[f"{k}_ratio"], default=None)
        out[f"cheapest_in_{k}_at_level_accuracy"] = min(level, key=lambda r: r[f"{k}_ratio"], default=None)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="a one-shot run over the menu with races")
    ap.add_argument("--compare-run", required=True, help="a one-shot run over the old menu (env.races=[])")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--trust-checkpoint", action="store_true",
                    help="load the runs' zips even if this user's train.py did not write them")
    args = ap.parse_args(argv)
    try:
        out = frontier(args.run, args.compare_run, args.n_boot, trust=args.trust_checkpoint)
    except TTCError as exc:
        return report(exc)
    for p in out["points"]:
        print(f"λ=({p['lambda_tokens']:.2g}, {p['lambda_seconds']:.2g})  static {p['static_old']} -> {p['static_new']}: "
              + "  ".join(f"{k} {p[k]['diff']:+.4f} [{p[k]['ci90'][0]:+.4f}, {p[k]['ci90'][1]:+.4f}]"
                          for k in ("static", "ppo_gated", "ppo")))
    print("above / below with 90 % confidence:", json.dumps(out["counts"]))
    print("savings:", json.dumps(out["savings"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
