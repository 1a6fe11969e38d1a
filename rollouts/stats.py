"""The cache summary printed after collection and by ``collect.py stats``.

JSON keys (documented in docs/collect.md):

- ``queries``, ``records``: counts; ``tokens``: all generated tokens; ``seconds``: sum of record latencies;
- ``configs``: per config id: ``strategy``, ``records``, ``accuracy`` (a pool's per-sample accuracy, i.e.
  N=1; a search's final-answer accuracy), ``mean_tokens``, ``mean_seconds``, ``seconds_source`` counts,
  and for pools ``majority_accuracy`` (majority vote over the whole pool, ties broken at random and
  counted as their expectation, as the env counts them) and ``pass_at_n``;
- ``pass_rate_histogram_n1``: for each pool config, how many queries had k of K samples right
  (keys ``"k/K"``), the per-query variation an allocator can exploit;
- ``latency_model``: the fitted latency model's error report, when present;
- ``tokens_approximate``: records whose token counts were counted on import with another model's
  tokenizer (``provenance.tokens_approximate``), per config and in total (0 when none);
- ``short_pools``: per pool config whose pools differ in size, its largest pool ``K`` and the number
  of records per smaller size ``k`` (budgets above k are masked for those queries).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from rollouts.cache import RolloutCache
from rollouts.strategies.selectors import expected_correct


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


def summarize(cache: RolloutCache) -> dict[str, Any]:
    configs: dict[str, Any] = {}
    hist: dict[str, dict[str, int]] = {}
    short_pools: dict[str, Any] = {}
    for cid in cache.config_ids:
        recs = [r for r in cache.records if r["config_id"] == cid]
        strategy = recs[0]["strategy"]
        toks = [r["tokens"] + r["scorer_tokens"] for r in recs]
        secs = [r["seconds"] for r in recs if r["seconds"] is not None]
        entry: dict[str, Any] = {
            "strategy": strategy,
            "records": len(recs),
            "mean_tokens": _mean(toks),
            "mean_seconds": _mean(secs),
            "seconds_source": dict(Counter(r["seconds_source"] for r in recs)),
            "tokens_approximate": sum(1 for r in recs if (r.get("provenance") or {}).get("tokens_approximate")),
        }
        if strategy == "sample_pool":
            per_sample, maj, pass_n = [], [], []
            counts: Counter[str] = Counter()
            for r in recs:
                corr = [s["correct"] for s in r["samples"] if s["correct"] is not None]
                if not corr:
                    continue
                per_sample.append(float(np.mean(corr)))
                pass_n.append(float(any(corr)))
                # ties broken at random, counted as their expectation: the outcome table's value
                maj.append(expected_correct("majority", [s["answer"] for s in r["samples"]],
                                            [s["correct"] for s in r["samples"]]))
                counts[f"{sum(corr)}/{len(corr)}"] += 1
            entry.update(accuracy=_mean(per_sample), majority_accuracy=_mean(maj), pass_at_n=_mean(pass_n))
            k = max((len(r["samples"]) for r in recs), default=0)
            hist[cid] = {f"{i}/{k}": counts.get(f"{i}/{k}", 0) for i in range(k + 1)}
            short = Counter(len(r["samples"]) for r in recs if len(r["samples"]) < k)
            if short:
                short_pools[cid] = {"K": k, "records_by_k": {str(kk): v for kk, v in sorted(short.items())}}
        else:
            entry["accuracy"] = _mean([float(r["result"]["correct"]) for r in recs if r["result"]["correct"] is not None])
        configs[cid] = entry
    out: dict[str, Any] = {
        "cache": str(cache.path),
        "model": cache.meta.get("model"),
        "queries": len(cache.query_ids),
        "records": len(cache.records),
        "tokens": int(sum(r["tokens"] + r["scorer_tokens"] for r in cache.records)),
        "seconds": float(sum(r["seconds"] or 0.0 for r in cache.records)),
        "configs": configs,
        "pass_rate_histogram_n1": hist,
        "tokens_approximate": sum(e["tokens_approximate"] for e in configs.values()),
        "short_pools": short_pools,
    }
    if cache.meta.get("tokenizer"):
        out["tokenizer"] = cache.meta["tokenizer"]
    if "latency_model" in cache.meta:
        out["latency_model"] = cache.meta["latency_model"].get("fit")
    return out


def format_summary(s: dict[str, Any]) -> str:
    lines = [f"cache {s['cache']}: {s['queries']} queries, {s['records']} records, "
             f"{s['tokens']} tokens, {s['seconds']:.1f} s (sum of record latencies)"]
    lines.append(f"{'config':32} {'records':>7} {'acc':>6} {'maj@K':>6} {'tokens':>8} {'seconds':>8}")
    for cid, e in s["configs"].items():
        fmt = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        lines.append(f"{cid:32} {e['records']:>7} {fmt(e['accuracy']):>6} {fmt(e.get('majority_accuracy')):>6} "
                     f"{fmt(e['mean_tokens'], 1):>8} {fmt(e['mean_seconds'], 2):>8}")
    for cid, h in s["pass_rate_histogram_n1"].items():
        lines.append(f"pass-rate histogram at N=1 ({cid}): " + " ".join(f"{k}:{v}" for k, v in h.items()))
    if s.get("tokens_approximate"):
        tok = (s.get("tokenizer") or {}).get("name", "another model's tokenizer")
        lines.append(f"approximate token counts: {s['tokens_approximate']} of {s['records']} records were counted "
                     f"with {tok}, not the generating model's tokenizer (provenance.tokens_approximate)")
    for cid, sp in (s.get("short_pools") or {}).items():
        ks = ", ".join(f"{v} with k={k}" for k, v in sp["records_by_k"].items())
        lines.append(f"short pools in {cid}: {ks} (of K={sp['K']}); budgets above a query's k are masked")
    if s.get("latency_model"):
        f = s["latency_model"]
        ho = f.get("holdout", f)
        lines.append(f"latency model: holdout MAPE {ho.get('mape', float('nan')):.1%} on {ho.get('n')} direct measurements")
    return "\n".join(lines)
