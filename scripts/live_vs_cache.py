"""What a live run costs and what it gives up, against a collection of every menu item on the same queries.

- **engine cost**: the engine seconds and generated tokens of the live run's cache (its calibration, its
  validation split, what training asked for) against the collected cache's (its calibration and every
  menu item), both over the live run's train + validation queries (test queries are completed alike for
  both). Engine seconds are the wall-clock seconds of the batched engine calls the records were made in
  (each record's ``batch.wall_s`` shared by the ``batch.queries`` records of its call) plus the
  calibration's direct measurements;
- **utility**: the live run's PPO against a run trained on the collected cache (``--cache-run``), both
  played on the collected cache's outcomes of the same test split, at every point of ``evaluate.py``'s
  λ grid, with the paired bootstrap over queries (90 %);
- **at the collection's prices**: the live run's work priced by the collected cache's own records (its
  calibration, the validation split complete, and the (query, config) pairs the live run generated on
  train: ``same_pairs``), over the collected cost: the ratio without the live run's smaller batches and
  the load it ran under. And the floor for the train queries it visited: one record each (``pool``: the
  query's pool record; ``cheapest``: its cheapest config's); no run that visits them goes below
  ``cheapest``.

    python -m scripts.live_vs_cache --run runs/live_run --cache-run runs/full_run [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from evaluation.bootstrap import resample_weights
from evaluation.options import EvalOptions
from evaluation.source import load_source
from rollouts.cache import RolloutCache, load_cache


def record_seconds(r: dict[str, Any]) -> float:
    """A record's share of the wall-clock seconds of the batched engine call it came from."""
    return r["batch"]["wall_s"] / r["batch"]["queries"]


def calibration_seconds(cache: RolloutCache) -> float:
    return sum(m["seconds"] for m in cache.meta.get("latency_calibration", []))


def engine_cost(cache: RolloutCache, query_ids: set[str]) -> dict[str, float]:
    """Engine seconds and generated tokens of ``cache``'s records on ``query_ids``, plus its calibration."""
    recs = [r for r in cache.records if r["query_id"] in query_ids]
    return {
        "records": len(recs),
        "engine_seconds": round(sum(record_seconds(r) for r in recs) + calibration_seconds(cache), 2),
        "generated_tokens": int(sum(r["tokens"] for r in recs)),
    }


def priced(cache: RolloutCache, val: set[str], pairs: set[tuple[str, str]], pool: str) -> dict[str, float]:
    """Engine seconds at the collected ``cache``'s own prices (its records' shares of their batches, as in
    :func:`engine_cost`): its calibration and every record of ``val``, plus one record per train query of
    ``pairs`` (the pool config's: ``pool``; the query's cheapest: ``cheapest``), or every pair itself
    (``same_pairs``)."""
    per: dict[str, dict[str, float]] = {}
    for r in cache.records:
        per.setdefault(r["query_id"], {})[r["config_id"]] = record_seconds(r)
    base = calibration_seconds(cache) + sum(sum(per.get(q, {}).values()) for q in val)
    visited = {q for q, _ in pairs}
    return {"pool": round(base + sum(per.get(q, {}).get(pool, 0.0) for q in visited), 2),
            "cheapest": round(base + sum(min(per[q].values()) for q in visited if q in per), 2),
            "same_pairs": round(base + sum(per.get(q, {}).get(c, 0.0) for q, c in pairs), 2)}


def compare(run: str, cache_run: str, n_boot: int = 1000, seed: int = 0, trust: bool = False) -> dict[str, Any]:
    from evaluate import load_inputs
    from policies.ppo import PPOPolicy, load_model

    live_src = load_source(EvalOptions(run=run, progress=False, trust_checkpoint=trust))
    full_src = load_source(EvalOptions(run=cache_run, progress=False, trust_checkpoint=trust))
    full = load_inputs(EvalOptions(run=cache_run, progress=False, trust_checkpoint=trust), full_src)
    splits = json.loads((live_src.run_dir / "splits.json").read_text())
    trval = set(splits["train"]) | set(splits["val"])
    live_cache, full_cache = load_cache(live_src.cache), load_cache(full_src.cache)
    cost: dict[str, Any] = {"live": engine_cost(live_cache, trval), "collected": engine_cost(full_cache, trval)}
    cost["ratio_engine_seconds"] = round(cost["live"]["engine_seconds"] / cost["collected"]["engine_seconds"], 3)
    cost["ratio_generated_tokens"] = round(cost["live"]["generated_tokens"] / cost["collected"]["generated_tokens"], 3)
    train = set(splits["train"])
    pairs = {(r["query_id"], r["config_id"]) for r in live_cache.records if r["query_id"] in train}
    pools = [c for c in full_cache.config_ids if c.startswith("pool:")]
    at = priced(full_cache, set(splits["val"]), pairs, pools[0] if pools else "")
    cost["at_collected_prices"] = {
        "train_queries_visited": len({q for q, _ in pairs}), "train_queries": len(train), "train_pairs": len(pairs),
        **{f"ratio_{k}": round(v / cost["collected"]["engine_seconds"], 3) for k, v in at.items()}}
    table = full.table
    rows = table.indices([q for q in splits["test"] if q in table.qindex])
    rows = rows[table.mask[rows].all(axis=1)]
    live_pol = PPOPolicy(load_model(live_src.model_path, table, trust=trust))
    full_pol = PPOPolicy(load_model(full_src.model_path, table, trust=trust))
    weights = resample_weights(len(rows), n_boot, seed)
    points = []
    for lt in full.lt_axis:
        for ls in full.ls_axis:
            u = table.utility(lt, ls)
            d_q = u[rows, live_pol.choose(table, rows, lt, ls)] - u[rows, full_pol.choose(table, rows, lt, ls)]
            lo, hi = np.percentile(weights @ d_q, [5, 95])
            verdict = "above" if lo > 1e-9 else "below" if hi < -1e-9 else "tie"
            points.append({"lambda_tokens": lt, "lambda_seconds": ls, "diff": float(d_q.mean()),
                           "ci90": [float(lo), float(hi)], "verdict": verdict})
    counts = {v: sum(p["verdict"] == v for p in points) for v in ("above", "below", "tie")}
    return {"run": run, "cache_run": cache_run, "test_queries": len(rows), "cost": cost, "points": points,
            "counts": counts}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="the live run (env.source: live), its test split completed")
    ap.add_argument("--cache-run", required=True, help="a run trained on the collected cache of the same queries")
    ap.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default: 1000)")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--trust-checkpoint", action="store_true", help="load zips this user's train.py did not write")
    args = ap.parse_args(argv)
    from rollouts.errors import TTCError, report

    try:
        out = compare(args.run, args.cache_run, args.n_boot, trust=args.trust_checkpoint)
    except TTCError as exc:
        return report(exc)
    c = out["cost"]
    print(f"engine seconds, train+val queries: live {c['live']['engine_seconds']} vs collected "
          f"{c['collected']['engine_seconds']} (ratio {c['ratio_engine_seconds']}); generated tokens: ratio "
          f"{c['ratio_generated_tokens']} ({c['live']['records']} vs {c['collected']['records']} records)")
    f = c["at_collected_prices"]
    print(f"at the collection's prices ({f['train_queries_visited']} of {f['train_queries']} train queries visited, "
          f"validation complete): the same pairs {f['ratio_same_pairs']}; floor with one pool record per visited "
          f"query {f['ratio_pool']}, one cheapest record {f['ratio_cheapest']}")
    print(f"utility of the live run's PPO vs the cached run's on {out['test_queries']} test queries, "
          f"{len(out['points'])} λ points (90 %): above {out['counts']['above']}, below {out['counts']['below']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
