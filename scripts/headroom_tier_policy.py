"""Headroom check on the bundled arithmetic cache: how far can routing by true difficulty go?

The arithmetic generator labels each query with a difficulty tier that no feature carries exactly.
A policy that knows the tier and plays, per tier, the action with the best mean utility on the train
(+ validation) split is a generous stand-in for "a router with good difficulty features". This script
counts the grid points where it is >= the best static config picked in hindsight on the test split,
as evaluate.py does for PPO, and prints its gap share per point. For scale it also counts the points
where the static config picked on train (+ validation) is >= that hindsight best: what the winner's
curse of picking the best of 17 noisy test means costs a policy with no routing at all.

    .venv/bin/python -m scripts.headroom_tier_policy [--run runs/<name>]   # splits from the run
    .venv/bin/python -m scripts.headroom_tier_policy --split-seeds 10     # split seeds 0..9
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from env.outcomes import OutcomeTable
from env.splits import SPLITS, make_splits, split_rows
from policies.base import lambda_grid
from policies.baselines import TrainBestStaticPolicy
from rollouts.arithmetic import generate


def headroom(table: OutcomeTable, tier: np.ndarray, splits: dict) -> tuple[int, int, int, float, list[str]]:
    """(grid points, tier-policy wins, train-picked static wins, the tier policy's mean gap share,
    per-λ_T lines of its gap share)."""
    rows = {s: split_rows(table, splits, s) for s in SPLITS}
    fit, te = np.concatenate([rows["train"], rows["val"]]), rows["test"]
    grid = lambda_grid(table, rows["train"], 5)
    # "best static on these rows" is TrainBestStaticPolicy's pick: per tier, and over all of train + val
    per_tier = [(tier[te] == t, TrainBestStaticPolicy(fit[tier[fit] == t])) for t in np.unique(tier)]
    overall = TrainBestStaticPolicy(fit)
    tier_wins, static_wins, lines, shares = 0, 0, [], []
    for lt in grid["lambda_tokens"]:
        cells = []
        for ls in grid["lambda_seconds"]:
            u = table.utility(lt, ls)[te]
            best_static = u.mean(axis=0).max()
            oracle = u.max(axis=1).mean()
            acts = np.zeros(len(te), dtype=int)
            for in_tier, pick in per_tier:
                acts[in_tier] = pick.action(table, lt, ls)
            got = u[np.arange(len(te)), acts].mean()
            tier_wins += got >= best_static - 1e-12
            static_wins += u[:, overall.action(table, lt, ls)].mean() >= best_static - 1e-12
            shares.append((got - best_static) / max(oracle - best_static, 1e-9))
            cells.append(f"{shares[-1]:+.2f}")
        lines.append(f"λ_T={lt:.3g}: " + " ".join(cells))
    return len(grid["points"]), tier_wins, static_wins, float(np.mean(shares)), lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default="data/default_cache")
    p.add_argument("--run", help="take splits.json from this run (default: split_seed 0, 0.7/0.15/0.15)")
    p.add_argument(
        "--split-seeds", type=int, default=1, help="repeat over split seeds 0..N-1 (not with --run)"
    )
    p.add_argument("--arith-seed", type=int, default=0, help="the cache's arith:<seed> dataset")
    args = p.parse_args(argv)
    if args.run and args.split_seeds != 1:
        print(
            "error: --split-seeds repeats over fresh splits; a --run has its own (give one or the other)",
            file=sys.stderr,
        )
        return 2
    table = OutcomeTable(args.cache)
    tier_of = {q.query_id: q.extra["tier"] for q in generate(args.arith_seed, len(table.query_ids))}
    missing = [q for q in table.query_ids if q not in tier_of]
    if missing:
        print(
            f"error: {len(missing)} queries of {args.cache} are not from arith:{args.arith_seed}",
            file=sys.stderr,
        )
        return 2
    tier = np.array([tier_of[q] for q in table.query_ids])
    if args.run:
        all_splits = [json.loads((Path(args.run) / "splits.json").read_text())]
    else:
        all_splits = [
            make_splits(table.query_ids, s, (0.7, 0.15, 0.15)) for s in range(max(args.split_seeds, 1))
        ]
    for k, splits in enumerate(all_splits):
        n_points, tier_wins, static_wins, mean_share, lines = headroom(table, tier, splits)
        if k == 0:
            print("tier policy's gap share per point (rows λ_T, columns λ_L), first split:")
            print("\n".join(lines))
        print(
            f"split seed {splits['seed']}: >= best static (hindsight, {len(splits['test'])} test queries) at "
            f"{tier_wins}/{n_points} points for the tier policy, {static_wins}/{n_points} for the static "
            f"config picked on train+val; the tier policy's mean gap share {mean_share:+.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
