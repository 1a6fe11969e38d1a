"""Latency under load: every menu strategy with k queries in flight against a real vLLM server, and
the latency model fitted per load level.

A record's ``seconds`` in the cache is the wall time of the query *alone* on the engine. A served
model always has other requests in flight, and then strategies change price differently: a pool's
one wide call shares the engine's decode steps, beam search's sequential rounds each wait behind the
other requests. This script measures that on the machine at hand:

- an upstream ``vllm.entrypoints.openai.api_server`` (started here, or ``--base-url``), reached
  through the project's HTTP backend (``rollouts/backends/openai_http.py``);
- for each load k and each strategy of the bundled cache's menu (pools of n = 1, 2, 4, 8, 16 and
  the four beam searches, run by the project's strategy code with the cache's sampling and scorer),
  k worker threads keep k queries of that strategy in flight (closed loop: a worker starts its next
  query when one finishes; fillers keep the load at k until the last measured query ends) and the
  wall time of each measured query is recorded with its engine rounds;
- per k, :func:`rollouts.latency_fit.fit` fits ``rollouts.latency.LatencyModel`` on those direct
  measurements (its in-sample and 5-fold cross-validated error are the error vs the direct
  measurements), and the load-1 model's error on every other load says what pricing an idle engine
  gets wrong.

    python -m bench.load_latency --loads 1 4 16 --out configs/latency_load_cpu_smollm2.json

The output JSON (``ttc-alloc/latency-by-load``) is what ``env.latency_load: k`` reads
(:mod:`rollouts.latency_load`): ``loads`` maps k to a LatencyModel dict, ``table`` has the measured
and modelled mean seconds per (k, strategy), ``measurements`` the raw (rounds, seconds) pairs.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

# (label, strategy, params): the bundled cache's menu (configs/collect_default.yaml), one entry per engine
# workload (a pool of n serves sample@1 / majority / best_score / weighted alike)
MENU: list[tuple[str, str, dict[str, int]]] = [
    *[(f"pool:n={n}", "sample_pool", {"n": n}) for n in (1, 2, 4, 8, 16)],
    *[
        (f"beam:N={n},M={m},K=4", "beam_search", {"n": n, "m": m, "max_iterations": 4})
        for n, m in ((2, 2), (4, 2), (8, 2), (8, 4))
    ],
]


def measure(
    backend: Any,
    queries: list[Any],
    strategy: str,
    params: dict[str, int],
    k: int,
    n_measured: int,
    sampling: Any,
    scorer: Any,
    seed: int,
) -> list[dict[str, Any]]:
    """Run ``n_measured`` queries of one strategy with k in flight; one measurement dict per query."""
    from rollouts.grading import grade
    from rollouts.strategies import parse_strategy

    run = parse_strategy({"strategy": strategy, **params})

    lock = threading.Lock()
    state = {"next": 0, "done": 0}
    out: list[dict[str, Any]] = []
    stop = threading.Event()

    def one(q: Any) -> Any:
        return run.run(backend, [q], sampling, scorer, grade, seed)[0]

    def worker() -> None:
        while not stop.is_set():
            with lock:
                i = state["next"]
                state["next"] += 1
            q = queries[i % len(queries)]
            t0 = time.perf_counter()
            res = one(q)
            secs = time.perf_counter() - t0
            if i < n_measured:  # fillers (i >= n_measured) only keep the load up
                with lock:
                    out.append({
                        "query_id": q.query_id, "strategy": strategy, "load": k, "seconds": secs,
                        "tokens": res.tokens, "rounds": [r.__dict__ for r in res.rounds],
                    })  # fmt: skip
                    state["done"] += 1
                    if state["done"] == n_measured:
                        stop.set()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(k)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def fit_loads(measurements: dict[int, list[dict[str, Any]]], label: str) -> dict[str, Any]:
    """Per load: the fitted LatencyModel dict; plus the measured/modelled table and the idle model's error."""
    import numpy as np

    from rollouts.latency import Round, error_report
    from rollouts.latency_fit import fit

    def pairs(ms: list[dict[str, Any]]) -> list[tuple[list[Round], float]]:
        return [([Round(**r) for r in m["rounds"]], m["seconds"]) for m in ms]

    models = {k: fit(pairs(ms), label=f"{label} load={k}", source="bench/load_latency.py") for k, ms in measurements.items()}
    table = []
    for k, ms in measurements.items():
        for lab, _, _ in MENU:
            sel = [m for m in ms if m["label"] == lab]
            if not sel:
                continue
            actual = np.array([m["seconds"] for m in sel])
            pred = np.array([models[k].predict([Round(**r) for r in m["rounds"]]) for m in sel])
            table.append({
                "load": k, "strategy": lab, "n": len(sel), "measured_mean_s": float(actual.mean()),
                "measured_p95_s": float(np.percentile(actual, 95)), "modelled_mean_s": float(pred.mean()),
                "mean_tokens": float(np.mean([m["tokens"] for m in sel])),
            })  # fmt: skip
    idle = min(measurements)
    idle_error = {}
    for k, ms in measurements.items():
        actual = np.array([m["seconds"] for m in ms])
        pred = np.array([models[idle].predict([Round(**r) for r in m["rounds"]]) for m in ms])
        idle_error[str(k)] = error_report(pred, actual)
    return {
        "loads": {str(k): m.to_dict() for k, m in models.items()},
        "table": table,
        "idle_model_error": idle_error,
    }


def markdown(doc: dict[str, Any]) -> str:
    rows = doc["table"]
    loads = sorted({r["load"] for r in rows})
    strategies = list(dict.fromkeys(r["strategy"] for r in rows))
    cell = {(r["load"], r["strategy"]): r for r in rows}
    head = "| strategy | " + " | ".join(f"k={k} measured / modelled s" for k in loads) + " |"
    lines = [head, "|---|" + "---:|" * len(loads)]
    for s in strategies:
        vals = []
        for k in loads:
            r = cell.get((k, s))
            vals.append("–" if r is None else f"{r['measured_mean_s']:.2f} / {r['modelled_mean_s']:.2f}")
        lines.append(f"| `{s}` | " + " | ".join(vals) + " |")
    lines.append("")
    lines.append("| load k | n | in-sample MAPE | 5-fold CV MAPE | CV max abs error s | idle (k=1) model's MAPE here |")
    lines.append("|---:|---:|---:|---:|---:|---:|")
    for k in loads:
        f = doc["loads"][str(k)]["fit"]
        lines.append(
            f"| {k} | {f['n']} | {f['mape']:.1%} | {f.get('cv_mape', float('nan')):.1%} | "
            f"{f.get('cv_max_abs_error_s', float('nan')):.2f} | {doc['idle_model_error'][str(k)]['mape']:.1%} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, nargs="+", default=[1, 4, 16], help="queries in flight (default 1 4 16)")
    ap.add_argument("--measured", type=int, nargs="+", help="measured queries per strategy at each load (default 4, 2k)")
    ap.add_argument("--cache", default="data/default_cache", help="cache whose sampling/scorer/model to use")
    ap.add_argument("--base-url", help="an already running upstream (default: start one here)")
    ap.add_argument("--out", help="write the fitted per-load models (JSON) here")
    ap.add_argument("--md", help="also write the markdown tables here")
    ap.add_argument("--server-log", default="/tmp/load_latency_server.log", help="the started server's log")
    ap.add_argument("--resume-raw", help="a raw measurements JSON of an interrupted run: its (load, strategy) jobs are kept")
    args = ap.parse_args(argv)
    if any(k < 1 for k in args.loads):
        print("error: --loads must be >= 1", file=sys.stderr)
        return 2
    measured = args.measured or [max(4, 2 * k) for k in args.loads]
    if len(measured) != len(args.loads):
        print("error: --measured needs one count per --loads value", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from rollouts.backends import SamplingSpec
    from rollouts.backends.openai_http import OpenAIBackend
    from rollouts.backends.vllm_server import VLLMServer
    from rollouts.cache import read_meta
    from rollouts.datasets import load_queries
    from rollouts.models import resolve_model
    from rollouts.prompts import build_messages, prompt_token_ids
    from rollouts.scorers import scorer_from_description
    from rollouts.strategies.base import PromptedQuery

    meta = read_meta(Path(args.cache))
    model = resolve_model(meta["model"])
    s = meta["sampling"]
    sampling = SamplingSpec(temperature=s["temperature"], top_p=s["top_p"], max_tokens=s["max_tokens"], logprobs=True)
    scorer = scorer_from_description(meta["scorer"])
    server = None
    t_start = time.perf_counter()
    if args.base_url:
        url = args.base_url
    else:
        server = VLLMServer(model, log_path=args.server_log).start()
        url = server.url
    try:
        backend = OpenAIBackend(model, base_url=url, max_concurrency=64, timeout_s=600)
        tok = backend.tokenizer
        need = sum(m + k for k, m in zip(args.loads, measured)) * len(MENU)
        qs = load_queries(meta["dataset"]["source"], limit=need)
        prompted = [
            PromptedQuery(q.query_id, q.question, q.answer,
                          prompt_token_ids(tok, build_messages(q.question, s["prompt_suffix"], s.get("system_prompt"))))
            for q in qs
        ]  # fmt: skip
        run_one(backend, prompted[:2], sampling, scorer)  # warm-up: first requests compile/allocate
        results: dict[int, list[dict[str, Any]]] = {}
        if args.resume_raw:
            kept = {int(k): v for k, v in json.loads(Path(args.resume_raw).read_text()).items()}
            results = {k: v for k, v in kept.items() if k in args.loads}
        done = {(k, m["label"]) for k, ms in results.items() for m in ms}
        offset = 0
        jobs = [(k, m, lab, strat, params) for k, m in zip(args.loads, measured) for lab, strat, params in MENU]
        wall: dict[int, float] = {}
        for k, m, lab, strat, params in tqdm(jobs, desc="load x strategy"):
            t0 = time.perf_counter()
            chunk = prompted[offset : offset + m + k]
            offset += m + k  # fresh questions per job: no job reuses another's prefix cache
            if (k, lab) in done:
                continue
            ms = measure(backend, chunk, strat, params, k, m, sampling, scorer, int(meta.get("seed", 0)))
            for x in ms:
                x["label"] = lab
            results.setdefault(k, []).extend(ms)
            wall[k] = wall.get(k, 0.0) + time.perf_counter() - t0
            if args.out:  # raw measurements so far: a crash late in the run loses nothing measured
                Path(args.server_log).with_suffix(".raw.json").write_text(json.dumps(results))
    finally:
        if server is not None:
            server.stop()
    label = f"{meta['model']}/vllm-openai-server/{platform.machine()}"
    doc = {
        "format": "ttc-alloc/latency-by-load",
        "model": meta["model"],
        "upstream": "vllm.entrypoints.openai.api_server via rollouts/backends/openai_http.py",
        "sampling": s,
        "measured_per_strategy": dict(zip(map(str, args.loads), measured)),
        "wall_s_per_load": {str(k): round(v, 1) for k, v in wall.items()},
        "wall_s_total": round(time.perf_counter() - t_start, 1),
        **fit_loads(results, label),
        "measurements": {str(k): ms for k, ms in results.items()},
    }
    md = markdown(doc)
    print(md)
    if args.out:
        from rollouts.cache import write_json_atomic

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), doc)
    if args.md:
        Path(args.md).write_text(md)
    return 0


def run_one(backend: Any, queries: list[Any], sampling: Any, scorer: Any) -> None:
    from rollouts.grading import grade
    from rollouts.strategies import PoolSpec

    PoolSpec(4).run(backend, queries, sampling, scorer, grade, 0)


if __name__ == "__main__":
    raise SystemExit(main())
