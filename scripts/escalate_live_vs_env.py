"""Live sequential routing vs the env: route a run's test queries with ``route.py --mode sequential`` and
compare the realized rounds, tokens and seconds with what ``ttc/Escalate-v0`` predicts for the same
queries at the same λ (its episodes over R cached sample orders), and each live round's measured
seconds with the latency model's value for that round (what the env charges).

    python -m scripts.escalate_live_vs_env --run runs/<escalate run> --n 20 --lambda-tokens 2e-4 --lambda-seconds 0.025

Prints one JSON object (means over the queries) and writes the route.py lines to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--lambda-tokens", type=float, default=0.0)
    p.add_argument("--lambda-seconds", type=float, default=0.0)
    p.add_argument("--orders", type=int, default=16)
    p.add_argument(
        "--out", default=None, help="where to keep route.py's JSON lines (default: <run>/live.jsonl)"
    )
    args = p.parse_args(argv)

    from env.escalate_menu import EscalateMenu
    from env.outcomes import OutcomeTable
    from env.seen import SeenUnits
    from policies.escalate_sim import Simulator, make_orders, model_policy
    from policies.observation import ObsEncoder
    from policies.ppo import load_model
    from rollouts.cache import load_cache

    run = Path(args.run)
    model = load_model(run / "best_model.zip")
    meta = model.ttc_meta
    cache = Path(meta["cache"])
    ids = json.loads((run / "splits.json").read_text())["test"][: args.n]
    rows = load_cache(cache).queries  # packed (.gz) or as collected
    out = Path(args.out) if args.out else run / "live.jsonl"
    with tempfile.TemporaryDirectory() as tmp:
        qfile = Path(tmp) / "q.jsonl"
        qfile.write_text(
            "".join(
                json.dumps({"question": rows[q]["question"], "answer": rows[q]["answer"]}) + "\n" for q in ids
            )
        )
        cmd = [sys.executable, str(ROOT / "route.py"), "--mode", "sequential", "--export", str(run / "export"),
               "--dataset", f"jsonl:{qfile}", "--lambda-tokens", str(args.lambda_tokens),
               "--lambda-seconds", str(args.lambda_seconds)]  # fmt: skip
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if res.returncode != 0:
        print(res.stderr[-3000:], file=sys.stderr)
        return res.returncode
    out.write_text(res.stdout)
    live = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]

    table = OutcomeTable(
        cache, mc_subsets=meta["env"]["mc_subsets"], outcome_seed=meta["env"]["outcome_seed"]
    )
    menu = EscalateMenu.from_dict(meta["escalate"])
    qrows = table.indices(ids)
    orders, picks = make_orders(table, menu, qrows, args.orders)
    sim = Simulator(
        table,
        menu,
        ObsEncoder.from_dict(meta["encoder"]),
        SeenUnits.from_dict(meta["escalate"]["units"]),
        qrows,
        orders,
        picks,
    )
    env = sim.run(model_policy(model), args.lambda_tokens, args.lambda_seconds)
    meas = np.array([s for r in live for s in r["round_seconds"]])
    pred = np.array([s for r in live for s in r["predicted_round_seconds"]])
    report = {
        "queries": len(live),
        "lambda_tokens": args.lambda_tokens,
        "lambda_seconds": args.lambda_seconds,
        "live": {
            "accuracy": float(np.mean([r["correct"] for r in live])),
            "rounds": float(np.mean([r["rounds"] for r in live])),
            "samples": float(np.mean([sum(r["widths"]) for r in live])),
            "beam_share": float(np.mean([r["beam"] is not None for r in live])),
            "tokens": float(np.mean([r["tokens"] for r in live])),
            "seconds": float(np.mean([r["seconds"] for r in live])),
        },
        "env_same_queries": {
            "accuracy": float(env.correct.mean()),
            "rounds": float(env.rounds.mean()),
            "samples": float(env.samples.mean()),
            "beam_share": float(env.beam.mean()),
            "tokens": float(env.tokens.mean()),
            "seconds": float(env.seconds.mean()),
        },
        "rounds_measured_vs_latency_model": {
            "n": int(len(meas)),
            "measured_mean_s": float(meas.mean()) if len(meas) else None,
            "predicted_mean_s": float(pred.mean()) if len(pred) else None,
            "mape": float(np.mean(np.abs(pred - meas) / np.maximum(meas, 1e-9))) if len(meas) else None,
        },
        "route_lines": str(out),
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
