"""Headroom check on the bundled arithmetic cache: how far can routing by true difficulty go?

The arithmetic generator labels each query with a difficulty tier that no feature carries exactly.
A policy that knows the tier and plays, per tier, the action with the best mean utility on the train
(+ validation) split is a generous stand-in for "a router with good difficulty features". This script
counts the grid points where it is >= the best static config picked in hindsight on the test split,
as evaluate.py does for PPO, and prints its gap share per point.

    .venv/bin/python scripts/headroom_tier_policy.py [--run runs/<name>]   # splits from the run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from env.allocate_env import make_splits  # noqa: E402
from env.outcomes import OutcomeTable  # noqa: E402
from policies.base import lambda_grid  # noqa: E402
from rollouts.arithmetic import generate  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default="data/default_cache")
    p.add_argument("--run", help="take splits.json from this run (default: split_seed 0, 0.7/0.15/0.15)")
    p.add_argument("--arith-seed", type=int, default=0, help="the cache's arith:<seed> dataset")
    args = p.parse_args()
    table = OutcomeTable(args.cache)
    if args.run:
        splits = json.loads((Path(args.run) / "splits.json").read_text())
    else:
        splits = make_splits(table.query_ids, 0, (0.7, 0.15, 0.15))
    rows = {s: table.indices([q for q in splits[s] if q in table.qindex]) for s in ("train", "val", "test")}
    tier_of = {q.query_id: q.extra["tier"] for q in generate(args.arith_seed, len(table.query_ids))}
    missing = [q for q in table.query_ids if q not in tier_of]
    if missing:
        print(
            f"error: {len(missing)} queries of {args.cache} are not from arith:{args.arith_seed}",
            file=sys.stderr,
        )
        return 2
    tier = np.array([tier_of[q] for q in table.query_ids])
    fit, te = np.concatenate([rows["train"], rows["val"]]), rows["test"]
    grid = lambda_grid(table, rows["train"], 5)
    wins, lines = 0, []
    for lt in grid["lambda_tokens"]:
        cells = []
        for ls in grid["lambda_seconds"]:
            u = table.utility(lt, ls)
            best_static = u[te].mean(axis=0).max()
            oracle = u[te].max(axis=1).mean()
            acts = np.zeros(len(te), dtype=int)
            for t in np.unique(tier):
                acts[tier[te] == t] = int(np.argmax(u[fit][tier[fit] == t].mean(axis=0)))
            got = u[te, acts].mean()
            wins += got >= best_static - 1e-12
            cells.append(f"{(got - best_static) / max(oracle - best_static, 1e-9):+.2f}")
        lines.append(f"λ_T={lt:.3g}: " + " ".join(cells))
    print("\n".join(lines))
    print(f"tier policy >= best static (hindsight, test split) at {wins}/{len(grid['points'])} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
