"""How much room the sequential bar leaves: at each λ point of the grid, the best stopping rule picked
on the evaluated (test) split itself, against the one-shot PPO run as shipped (behind its gate), on the
same queries and sample orders.

Picking each point's rule among every configuration of the families (Adaptive-Consistency, ESC,
k-agree, score threshold, the confidence threshold where the cache's samples carry their mean token
log-prob, cross-pool with several pools) on the very queries it is scored on is hindsight: an optimistic bound on
what a rule that watches the first samples can gain over the one-shot choice. The comparison is
``evaluate.py``'s (paired two-stage bootstrap over queries and orders, 90 %, ties within 1e-9 equal).

    python -m scripts.escalate_headroom --run runs/esc_ws2 --compare-run runs/default_run [--json out.json]

``--run`` is any sequential run (its step menu, encoder and splits; its model is not used). With a
run trained with ``env.watch: finish`` (``configs/train_escalate_finish.yaml``) the rules are checked at
each finish (a round's samples in the order they finish; a stop cancels the rest), else between whole
rounds; the output says which, and which families are left out and why. On a step
menu with several pools the rules are those of :func:`policies.stopping_rules.rule_grid`: the
single-pool families on the primary pool and the ``cross_pool`` family over all of them (each point
also reports the best ``cross_pool`` configuration and how many samples it draws per pool); the
one-shot policy may pick any action of the cache (any pool): its choice is played on the same orders
where the step menu can play it, else scored from the outcome table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from evaluation.bootstrap import two_stage_compare, two_stage_weights
from evaluation.options import EvalOptions
from evaluation.sequential import SequentialEvaluation
from evaluation.sequential_setup import load_setup
from evaluation.source import load_source
from policies.stopping_rules import simulate_rules
from rollouts.errors import TTCError, report


def headroom(opts: EvalOptions) -> dict:
    """Per λ point: the one-shot PPO's and the hindsight-best rule's mean utility and their paired difference."""
    setup = load_setup(opts, load_source(opts))
    if setup.oneshot is None:
        raise TTCError("--compare-run (the one-shot PPO run) is required")
    ev = SequentialEvaluation(opts, setup)
    rows = setup.rows
    configs = [(rule, res) for rules in ev.families.values() for rule, res in zip(rules, simulate_rules(ev.sim, rules))]
    cross = [c for c in configs if c[0].family == "cross_pool"]
    weights = two_stage_weights(len(rows), opts.n_orders, opts.n_boot, opts.seed)
    points = []
    for lt, ls in ev.lambdas:
        _, oneshot = ev.oneshot_choice(setup.oneshot.shipped, lt, ls)
        rule, res = max(configs, key=lambda c: c[1].utility(lt, ls).mean())
        c = two_stage_compare(res.utility(lt, ls) - oneshot, weights)
        point = {
            "lambda_tokens": lt, "lambda_seconds": ls, "rule": rule.name,
            "oneshot_ppo": float(oneshot.mean()), "rule_utility": float(res.utility(lt, ls).mean()),
            "diff": c["diff"], "ci90": c["ci90"], "above_90": c["above_90"], "below_90": c["below_90"],
            **res.pool_use(),
        }  # fmt: skip
        if cross:  # several pools: the best cross-pool configuration too
            xr, xres = max(cross, key=lambda c: c[1].utility(lt, ls).mean())
            point["cross_pool"] = {"rule": xr.name, "utility": float(xres.utility(lt, ls).mean()), **xres.pool_use()}
        points.append(point)
    return {
        "n_queries": int(len(rows)), "n_orders": opts.n_orders, "rule_configurations": len(configs),
        "pools": [p.to_dict() for p in setup.menu.pools],
        "rule_families": {f: len(r) for f, r in ev.families.items()}, "rule_notes": ev.rule_notes,
        "watch": setup.menu.watch,
        "above_90": sum(p["above_90"] for p in points), "below_90": sum(p["below_90"] for p in points),
        "points": points,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a sequential run folder (step menu, encoder, splits)")
    ap.add_argument("--compare-run", required=True, help="the one-shot PPO run folder")
    ap.add_argument("--orders", type=int, default=16, help="sample orders per query (evaluate.py's default)")
    ap.add_argument("--json", dest="json_path", help="write the per-point table here")
    args = ap.parse_args(argv)
    opts = EvalOptions(run=args.run, compare_run=args.compare_run, n_orders=args.orders, progress=False)
    try:
        out = headroom(opts)
    except TTCError as exc:
        return report(exc)
    print(f"rules watched at each {out['watch']}: " + ", ".join(f"{f} ({n})" for f, n in out["rule_families"].items()))
    for n in out["rule_notes"]:
        print(f"note: {n}")
    if len(out["pools"]) > 1:
        print("pools: " + ", ".join(f"{p['label']} = {p['config']}" for p in out["pools"]))
    for p in out["points"]:
        x = p.get("cross_pool")
        extra = "" if x is None else f"; best cross-pool rule {x['utility']:.4f} ({x['rule']})"
        print(f"λ_T {p['lambda_tokens']:.3g} λ_L {p['lambda_seconds']:.3g}: one-shot {p['oneshot_ppo']:.4f}, "
              f"best rule on test {p['rule_utility']:.4f} ({p['rule']}), diff {p['diff']:+.4f} "
              f"[{p['ci90'][0]:+.4f}, {p['ci90'][1]:+.4f}]{extra}")  # fmt: skip
    print(f"hindsight-best rule above the one-shot PPO at 90 %: {out['above_90']}/{len(out['points'])} points, "
          f"below at {out['below_90']}; {out['n_queries']} queries x {out['n_orders']} orders, "
          f"{out['rule_configurations']} rule configurations")  # fmt: skip
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
