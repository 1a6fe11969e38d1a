"""Where the gate is closed the gated policy plays its fallback (the static best on train + validation);
how does that fallback fare against evaluate.py's train-only pick on the test split, where the two differ?

Runs what ``tests/test_gate_small_data.py`` runs (short PPO, the gate fitted, evaluate on the 5 x 5 grid)
on random subsets of the bundled cache (``--subsets 200:0 400:1 ...``, size:seed), on a Qwen2.5-Math
harness folder imported as that test imports it (``--qwen-harness DIR``), and on any cache (``--cache DIR``),
and counts per cache: closed cells, closed cells whose two statics
differ, and there the paired bootstrap verdicts (90 %) of fallback - train-only pick.

    python -m scripts.gate_fallback_noise --subsets 200:0 200:1 200:2 400:0 400:1 400:2 \
        --qwen-harness ../shared/data/qwen25math_rm_maj_math100 --json out.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import evaluate
import train
from evaluation.options import EvalOptions
from rollouts.cache import RolloutCache, load_cache
from rollouts.cache_rewrite import write_subset

ROOT = Path(__file__).resolve().parents[1]
SHORT = ["--total-timesteps", "1024", "--no-progress", "--hyperparams", "n_envs=2", "eval_freq=512",
         "checkpoint_freq=1024", "val_grid=2", "export=false"]  # fmt: skip
TOL = 1e-9


def subset_cache(src: RolloutCache, n: int, seed: int, out: Path) -> Path:
    """A cache of ``n`` random queries of ``src`` (query ids drawn with ``seed``), as the small-data test's."""
    keep = set(np.random.default_rng(seed).choice(src.query_ids, size=n, replace=False).tolist())
    return write_subset(src, keep, out)


def import_qwen_harness(src: Path, out: Path) -> Path:
    """The harness folder as the small-data test imports it: RM scores, seconds from the shipped latency model."""
    from rollouts.importers import Importer, load_featurizer
    from rollouts.importers.qwen25math import QwenHarnessReader
    from rollouts.latency_fit import default_latency_model

    reader = QwenHarnessReader(src, scorer="Qwen2.5-Math-RM-72B")
    Importer(out, featurizer=load_featurizer(), latency_model=default_latency_model(), progress=False).run(reader)
    return out


def fallback_vs_train_pick(cache: Path, work: Path) -> dict:
    """Train + evaluate on ``cache``; the counts of the closed cells' fallback against the train-only pick."""
    assert train.main(["--cache", str(cache), "--runs-dir", str(work), "--name", "r", *SHORT]) == 0
    res = evaluate.evaluate(EvalOptions(run=str(work / "r"), out=str(work / "eval"), plots=False, n_boot=1000))
    cells = []
    for p in res["points"]:
        if p["gate"]["ppo"]["open"] or p["static_trainval_best"] == p["static_train_best"]:
            continue
        v = p["vs_static_train_best"]["ppo_gated"]  # gate closed: the gated policy is the fallback
        cells.append({"lambda_tokens": p["lambda_tokens"], "lambda_seconds": p["lambda_seconds"],
                      "train_pick": p["static_train_best"], "fallback": p["static_trainval_best"],
                      "diff": v["diff"], "ci90": v["ci90"]})  # fmt: skip
    open_below = sum(
        p["gate"]["ppo"]["open"] and p["vs_static_train_best"]["ppo_gated"]["ci90"][1] < -TOL for p in res["points"]
    )
    return {
        "n_test": res["n_queries"], "closed": sum(not p["gate"]["ppo"]["open"] for p in res["points"]),
        "closed_and_differ": len(cells), "fallback_below_90": sum(c["ci90"][1] < -TOL for c in cells),
        "fallback_above_90": sum(c["ci90"][0] > TOL for c in cells),
        "fallback_better": sum(c["diff"] > TOL for c in cells), "fallback_worse": sum(c["diff"] < -TOL for c in cells),
        "open_below_90": int(open_below), "cells": cells,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subsets", nargs="*", default=[], help="size:seed subsets of the bundled cache")
    ap.add_argument("--qwen-harness", help="a Qwen2.5-Math harness folder, imported as the small-data test does")
    ap.add_argument("--cache", action="append", default=[], help="a whole cache (e.g. an import), repeatable")
    ap.add_argument("--json", dest="json_path", help="write the counts and cells here")
    args = ap.parse_args(argv)
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        bundled = load_cache(ROOT / "data" / "default_cache") if args.subsets else None
        jobs = [(f"subset {s}", "subset", s) for s in args.subsets] + [(c, "cache", c) for c in args.cache]
        if args.qwen_harness:
            jobs.append((f"qwen harness {args.qwen_harness}", "qwen", args.qwen_harness))
        for i, (label, kind, what) in enumerate(jobs):
            if kind == "subset":
                n, seed = (int(x) for x in what.split(":"))
                cache = subset_cache(bundled, n, seed, work / f"cache{i}")  # type: ignore[arg-type]
            elif kind == "qwen":
                cache = import_qwen_harness(Path(what), work / f"cache{i}")
            else:
                cache = Path(what)
            out[label] = fallback_vs_train_pick(cache, work / f"runs{i}")
            print(label, {k: v for k, v in out[label].items() if k != "cells"}, flush=True)
    total = {k: sum(r[k] for r in out.values()) for k in next(iter(out.values())) if k not in ("cells",)}
    print("total", total)
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"total": total, "caches": out}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
