"""Collector throughput vs raw ``LLM.generate`` on the same prompts and token budget, in one run.

Both sides share one vLLM engine (so engine start-up is excluded from both) and alternate
(raw, collector, raw, collector) to spread machine noise. The collector side is the real thing:
``Collector.collect`` with its batching, scoring, math-verify grading, featurisation and fsynced
cache writes. The figure is generated tokens per second, collector / raw, reported twice: for the
collection pass (generation, scoring, grading, writes) and for building the Collector plus the whole
``collect()`` call, which also runs the one-off featurisation forward pass over the queries
(hidden states for the policy).

    python -m bench.collect_throughput [--queries 64] [--n 16] [--max-tokens 96] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--batch-queries", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()

    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    from rollouts.backends.vllm_offline import VLLMBackend
    from rollouts.collector import Collector
    from rollouts.config import CollectConfig
    from rollouts.datasets import load_queries
    from rollouts.models import resolve_model
    from rollouts.prompts import build_messages, prompt_token_ids

    model = resolve_model("smollm2-135m-instruct")
    backend = VLLMBackend(model)
    tok = backend.tokenizer
    queries = load_queries("arith:0", limit=args.queries)
    prompts = [prompt_token_ids(tok, build_messages(q.question)) for q in queries]
    sp = SamplingParams(n=args.n, temperature=0.3, max_tokens=args.max_tokens)
    backend.llm.generate([TokensPrompt(prompt_token_ids=prompts[0])], sp, use_tqdm=False)  # warm-up

    raw, col, col_total = [], [], []
    for r in range(args.rounds):
        t0 = time.perf_counter()
        outs = backend.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], sp, use_tqdm=False)
        dt = time.perf_counter() - t0
        raw.append(sum(len(c.token_ids) for o in outs for c in o.outputs) / dt)

        with tempfile.TemporaryDirectory() as d:
            cfg = CollectConfig(
                dataset="arith:0",
                limit=args.queries,
                max_tokens=args.max_tokens,
                menu=[{"strategy": "sample_pool", "n": args.n}],
                budgets=[1],
                calibration_queries=0,
                batch_queries=args.batch_queries,
                output=f"{d}/c",
                seed=r,
            )
            t_col = time.perf_counter()
            c = Collector(cfg, backend=backend, progress=False)
            run = c.collect()
            c.writer.close()
            total_s = time.perf_counter() - t_col
        col.append(run["generated_tokens"] / run["wall_s"])
        col_total.append(run["generated_tokens"] / total_s)
        print(
            f"round {r}: raw {raw[-1]:.1f} tok/s, collector {col[-1]:.1f} tok/s (ratio {col[-1] / raw[-1]:.3f}), "
            f"with featurisation {col_total[-1]:.1f} tok/s (ratio {col_total[-1] / raw[-1]:.3f})"
        )
    ratio = sum(col) / sum(raw)
    res = {
        "queries": args.queries,
        "n": args.n,
        "max_tokens": args.max_tokens,
        "raw_tok_s": raw,
        "collector_tok_s": col,
        "ratio": ratio,
        "collector_with_features_tok_s": col_total,
        "ratio_with_features": sum(col_total) / sum(raw),
    }
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
