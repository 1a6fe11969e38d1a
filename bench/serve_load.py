"""A bounded load test of a running ``serve.py`` on loopback: N chat requests, k in flight, a time limit.

Every request is sent once with the official ``openai`` client (its own retries off) and ends as an
answer (200) or a refusal/error with its HTTP status; the summary counts them, checks that no reply
was duplicated (reply ids and request tags are unique) and gives latency percentiles of the answered
ones and throughput (answered requests per second of wall time).

    python -m bench.serve_load --url http://127.0.0.1:8080/v1 --requests 64 --in-flight 16 \\
        --lambda-tokens 2e-3 --lambda-seconds 0.25 [--api-key KEY] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any


async def run_load(
    url: str,
    questions: list[str],
    in_flight: int,
    ttc: dict[str, float] | None = None,
    api_key: str = "none",
    time_limit_s: float = 600.0,
) -> dict[str, Any]:
    """Send one request per question, at most ``in_flight`` at once; per-request results and a summary."""
    import numpy as np
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key=api_key, max_retries=0, timeout=time_limit_s)
    gate = asyncio.Semaphore(in_flight)
    results: list[dict[str, Any]] = []

    async def one(i: int, q: str) -> None:
        async with gate:
            t0 = time.perf_counter()
            row: dict[str, Any] = {"request": i}
            try:
                r = await client.chat.completions.create(
                    model="ttc-alloc", messages=[{"role": "user", "content": q}], user=f"load-{i}",
                    extra_body={"ttc": ttc or {}},
                )  # fmt: skip
                extra = r.model_extra or {}
                row.update(status=200, id=r.id, action=extra["ttc"]["action"], tokens=r.usage.completion_tokens)
            except openai.APIStatusError as exc:
                row.update(status=exc.status_code, error=(exc.body or {}).get("type") if isinstance(exc.body, dict) else None)
            except openai.APIConnectionError as exc:  # timeouts included: lost, as far as the client knows
                row.update(status=None, error=type(exc).__name__)
            row["seconds"] = time.perf_counter() - t0
            results.append(row)

    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(asyncio.gather(*(one(i, q) for i, q in enumerate(questions))), time_limit_s)
    finally:
        await client.close()
    wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200]
    lat = np.array([r["seconds"] for r in ok]) if ok else np.array([np.nan])
    statuses: dict[str, int] = {}
    for r in results:
        statuses[str(r["status"])] = statuses.get(str(r["status"]), 0) + 1
    return {
        "requests": len(questions),
        "finished": len(results),
        "in_flight": in_flight,
        "statuses": statuses,
        "unique_reply_ids": len({r["id"] for r in ok}),
        "unique_requests": len({r["request"] for r in results}),
        "p50_s": float(np.percentile(lat, 50)),
        "p95_s": float(np.percentile(lat, 95)),
        "wall_s": wall,
        "throughput_rps": len(ok) / wall,
        "generated_tokens": int(sum(r["tokens"] for r in ok)),
        "actions": {a: sum(1 for r in ok if r["action"] == a) for a in sorted({r["action"] for r in ok})},
        "results": sorted(results, key=lambda r: r["request"]),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080/v1")
    ap.add_argument("--api-key", default="none")
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--in-flight", type=int, default=16)
    ap.add_argument("--dataset", default="arith:0", help="questions, as collect.py names datasets")
    ap.add_argument("--offset", type=int, default=5000, help="skip this many dataset questions")
    ap.add_argument("--lambda-tokens", type=float)
    ap.add_argument("--lambda-seconds", type=float)
    ap.add_argument("--target-tokens", type=float)
    ap.add_argument("--time-limit-s", type=float, default=600.0)
    ap.add_argument("--json", help="write the summary and per-request rows here")
    args = ap.parse_args(argv)
    if args.requests < 1 or args.in_flight < 1:
        print("error: --requests and --in-flight must be >= 1", file=sys.stderr)
        return 2
    from rollouts.datasets import load_queries

    qs = [q.question for q in load_queries(args.dataset, limit=args.requests, offset=args.offset)]
    ttc = {k: v for k, v in (("lambda_tokens", args.lambda_tokens), ("lambda_seconds", args.lambda_seconds),
                             ("target_tokens", args.target_tokens)) if v is not None}  # fmt: skip
    res = asyncio.run(run_load(args.url, qs, args.in_flight, ttc, args.api_key, args.time_limit_s))
    summary = {k: v for k, v in res.items() if k != "results"}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
