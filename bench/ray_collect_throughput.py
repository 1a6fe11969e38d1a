"""Collection throughput on Ray: 1 replica vs 2 replicas on the same work (fresh caches), as a ratio.

    python -m bench.ray_collect_throughput [--limit 8] [--num-cpus 2] [--out runs/bench_ray]

Each run starts its replicas' engines first; the timed part is the main pass only (engine starts,
featurisation and calibration excluded), the same span as ``collect.py``'s "this run" line.
On a 2-core CPU machine two engines share the cores, so expect a ratio near 1: what the run shows is
that the work really splits over replicas (each record's ``batch.replica``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORK = ["dataset=arith:11", "budgets=[1, 2, 4, 8]", "max_tokens=48", "batch_queries=2", "calibration_queries=0",
        "menu=[{strategy: sample_pool, n: 8}, {strategy: beam_search, n: 4, m: 2, max_iterations: 3}]",
        "executor=ray"]


def run(replicas: int, limit: int, out: Path) -> dict:
    from rollouts.cache import load_cache
    from rollouts.config import load_config
    from rollouts.executors import make_collector

    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(None, [*WORK, f"limit={limit}", f"replicas={replicas}", f"output={out}"])
    col = make_collector(cfg, progress=True)
    try:
        res = col.collect()
    finally:
        col.close()
    recs = load_cache(out).records
    res["records_per_replica"] = dict(Counter(r["batch"]["replica"] for r in recs))
    res["tok_s"] = res["generated_tokens"] / res["wall_s"]
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_ray"))
    args = ap.parse_args()
    import ray

    ray.init(num_cpus=args.num_cpus, include_dashboard=False)
    try:
        one = run(1, args.limit, Path(args.out) / "replicas1")
        two = run(2, args.limit, Path(args.out) / "replicas2")
    finally:
        ray.shutdown()
    report = {"replicas_1": one, "replicas_2": two, "ratio_tok_s_2_over_1": two["tok_s"] / one["tok_s"]}
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
