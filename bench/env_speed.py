"""Environment throughput: env steps/s (reset + step of the one-step episode) and table build time.

    python -m bench.env_speed [--cache data/default_cache] [--steps 200000] [--outcome expected|sampled]
    python -m bench.env_speed --train      # also: wall time of the default `python train.py` on that cache
    python -m bench.env_speed --env escalate [--train]   # ttc/Escalate-v0 (goal >= 10k steps/s)
    python -m bench.env_speed --env escalate --watch finish [--train]   # watched finish by finish

Run from the checkout (the default cache is the bundled one). Prints one JSON line: {"cache", "queries",
"actions", "table_build_s", "outcome", "penalty_mode", "steps", "steps_per_s", "load_avg_1m"} (the
machine's 1-minute load average when the timing ended: other work on the cores slows the figure). The goal is >= 20k
steps/s on one core in the default (expected, sampled-penalty) mode. With ``--train`` it then runs the
default ``python train.py --cache <cache>`` (progress bar off) into a temporary runs folder and adds
``train_wall_s`` (the whole command) and the run's ``train_summary`` (with ``--watch finish``:
``configs/train_escalate_finish.yaml``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cache", default="data/default_cache")
    p.add_argument("--steps", type=int, default=200_000)
    p.add_argument("--outcome", default="expected", choices=("expected", "sampled"))
    p.add_argument("--penalty-mode", default="sampled", choices=("sampled", "fixed"))
    p.add_argument("--train", action="store_true", help="also time the default train.py on this cache")
    p.add_argument("--env", default="allocate", choices=("allocate", "escalate"), help="which env to time")
    p.add_argument("--watch", default="round", choices=("round", "finish"), help="escalate: env.watch")
    args = p.parse_args(argv)

    from env.allocate_env import AllocateEnv
    from env.outcomes import OutcomeTable

    cache = Path(args.cache)
    if not (cache / "meta.json").exists():
        print(f"error: {cache} is not a cache folder (no meta.json)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    table = OutcomeTable(cache)
    build = time.perf_counter() - t0
    if args.env == "escalate":
        return _escalate(args, cache, table, build)
    env = AllocateEnv(table=table, outcome=args.outcome, penalty_mode=args.penalty_mode)
    env.reset(seed=0)
    n_a = table.n_actions
    t0 = time.perf_counter()
    for i in range(args.steps):
        env.reset()
        a = i % n_a
        if not env.action_masks()[a]:
            a = 0
        env.step(a)
    dt = time.perf_counter() - t0
    out = {
        "cache": str(cache),
        "queries": len(table.query_ids),
        "actions": n_a,
        "table_build_s": round(build, 3),
        "outcome": args.outcome,
        "penalty_mode": args.penalty_mode,
        "steps": args.steps,
        "steps_per_s": round(args.steps / dt),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if args.train:
        out.update(time_train(cache))
    print(json.dumps(out))
    return 0


def _escalate(args, cache, table, build: float) -> int:
    """Steps/s of ttc/Escalate-v0 under a policy that cycles through the legal step actions (draws
    first, so episodes have several rounds; with the finish watch it waits at 3 of 4 finishes); each
    step includes its action_masks() call."""
    import numpy as np

    from env.escalate_env import EscalateEnv

    env = EscalateEnv(table=table, penalty_mode=args.penalty_mode, watch=args.watch)
    env.reset(seed=0)
    n_a = len(env.menu)
    wait = env.menu.wait_index
    steps = episodes = 0
    t0 = time.perf_counter()
    while steps < args.steps:
        env.reset()
        episodes += 1
        done = False
        while not done:
            m = env.action_masks()
            legal = np.flatnonzero(m)
            if wait is not None and m[wait] and steps % 4:  # finish watch: mostly watch the round
                a = wait
            else:
                a = int(legal[(steps * 7) % len(legal)])
            _, _, done, _, _ = env.step(a)
            steps += 1
    dt = time.perf_counter() - t0
    out = {
        "env": "ttc/Escalate-v0",
        "watch": args.watch,
        "cache": str(cache),
        "queries": len(env.rows),
        "step_actions": n_a,
        "table_build_s": round(build, 3),
        "penalty_mode": args.penalty_mode,
        "steps": steps,
        "episodes": episodes,
        "steps_per_episode": round(steps / episodes, 2),
        "steps_per_s": round(steps / dt),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    if args.train:
        config = "configs/train_escalate_finish.yaml" if args.watch == "finish" else "configs/train_escalate.yaml"
        out.update(time_train(cache, "--config", config))
    print(json.dumps(out))
    return 0


def time_train(cache: Path, *config_args: str) -> dict:
    """Wall time of the whole ``train.py`` command on ``cache`` (into a temp runs folder) and its summary."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as runs:
        cmd = [sys.executable, "train.py", *config_args, "--cache", str(cache), "--runs-dir", runs,
               "--name", "bench", "--no-progress"]  # fmt: skip
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=root, check=True, stdout=subprocess.DEVNULL)
        wall = round(time.perf_counter() - t0, 1)
        summary = json.loads((Path(runs) / "bench" / "train_summary.json").read_text())[-1]
    return {"train_wall_s": wall, "train_summary": summary}


if __name__ == "__main__":
    sys.exit(main())
