"""A bounded load test of a running ``serve.py`` on loopback: N chat requests, k in flight, a time limit,
and the same work sent straight to the upstream for comparison.

Every request is sent once with the official ``openai`` client (its own retries off) and ends as an
answer (200) or a refusal/error with its HTTP status; the summary counts them, checks that no reply
was duplicated (reply ids and request tags are unique) and gives latency percentiles of the answered
ones and throughput (answered requests per second of wall time).

With ``--upstream`` and ``--export``, the same questions then go straight to the upstream vLLM server
at the same concurrency: each as the prompt serve.py built (the export's chat template and suffix),
with the export's sampling and the ``n`` of the pool action serve.py chose for it, so the engine does
the same generation work. Both summaries are printed with serve.py's throughput and p50 as a ratio
of the upstream's.

    python -m bench.serve_load --url http://127.0.0.1:8080/v1 --requests 64 --in-flight 16 \\
        --lambda-tokens 2e-3 --lambda-seconds 0.25 [--api-key KEY] [--json out.json] \\
        [--upstream http://127.0.0.1:8000/v1 --export runs/<name>/export]
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
                row.update(status=200, id=r.id, action=extra["ttc"]["action"], tokens=r.usage.completion_tokens if r.usage else 0,
                           n=extra["ttc"]["n"], strategy=extra["ttc"]["strategy"],
                           finish_reason=r.choices[0].finish_reason)
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


async def run_direct(
    upstream: str, export: str, questions: list[str], actions: list[str], in_flight: int,
    api_key: str | None = None, time_limit_s: float = 600.0,
) -> dict[str, Any]:
    """The baseline: each question straight to the upstream's ``/v1/completions`` as serve.py prompts
    it (the export's serving spec), with the ``n`` of the action serve.py chose for it, at most
    ``in_flight`` at once. A ``first`` race (stop at the M-th finisher) streams and is closed at its M-th
    finished sample, as the race stops (closing the stream is how vLLM aborts the rest); its tokens are
    the streamed ids. Other races and beams go as plain n-sample requests (a warning says how many)."""
    import httpx
    import numpy as np
    from transformers import AutoTokenizer

    from policies.onnx_policy import OnnxPolicy
    from rollouts.models import resolve_model
    from rollouts.prompts import build_messages, prompt_token_ids

    spec = OnnxPolicy(export).doc["serving"]
    s = spec["sampling"]
    runs = [spec["actions"][a] for a in actions]
    ns = [int(r["n"]) for r in runs]
    firsts = [int(r["k"]) if r["strategy"] == "race" and r.get("rule") == "first" else None for r in runs]
    unequal = sum(r["strategy"] != "sample_pool" and f is None for r, f in zip(runs, firsts))
    if unequal:
        print(f"warning: {unequal} answers used beam search or an agree race; the baseline sends them as "
              "n-sample pools", file=sys.stderr)  # fmt: skip
    tok = AutoTokenizer.from_pretrained(resolve_model(spec["model"]))
    prompts = [prompt_token_ids(tok, build_messages(q, s["prompt_suffix"], s.get("system_prompt"))) for q in questions]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = upstream.rstrip("/")
    async with httpx.AsyncClient(timeout=time_limit_s, limits=httpx.Limits(max_connections=None)) as client:
        model = (await client.get(f"{base}/models", headers=headers)).json()["data"][0]["id"]
        gate = asyncio.Semaphore(in_flight)
        results: list[dict[str, Any]] = []

        async def streamed(payload: dict[str, Any], first: int) -> tuple[int, int]:
            """(status, streamed token ids) of a stream closed at its ``first``-th finished sample."""
            tokens = finished = 0
            async with client.stream("POST", f"{base}/completions", json={**payload, "stream": True},
                                     headers=headers) as r:  # fmt: skip
                if r.status_code != 200:
                    return r.status_code, 0
                async for line in r.aiter_lines():
                    body = line[5:].strip() if line.startswith("data:") else ""
                    if not body or body == "[DONE]":
                        continue
                    for ch in json.loads(body).get("choices") or []:
                        tokens += len(ch.get("token_ids") or [])
                        finished += ch.get("finish_reason") is not None
                    if finished >= first:
                        break  # leaving the block closes the connection: the upstream aborts the rest
            return 200, tokens

        async def one(i: int, prompt: list[int], n: int, first: int | None) -> None:
            async with gate:
                t0 = time.perf_counter()
                payload = {"model": model, "prompt": prompt, "n": n, "temperature": s["temperature"], "top_p": s["top_p"],
                           "max_tokens": s["max_tokens"], "include_stop_str_in_output": True, "return_token_ids": True,
                           "logprobs": 0}  # fmt: skip
                if first is None:
                    r = await client.post(f"{base}/completions", json=payload, headers=headers)
                    status = r.status_code
                    tokens = r.json()["usage"]["completion_tokens"] if status == 200 else 0
                else:
                    status, tokens = await streamed(payload, first)
                results.append({"request": i, "status": status, "tokens": tokens,
                                "seconds": time.perf_counter() - t0})  # fmt: skip

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one(i, p, n, f) for i, (p, n, f) in enumerate(zip(prompts, ns, firsts)))),
                               time_limit_s)  # fmt: skip
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["status"] == 200]
    lat = np.array([r["seconds"] for r in ok]) if ok else np.array([np.nan])
    return {"requests": len(questions), "answered": len(ok), "in_flight": in_flight,
            "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)), "wall_s": wall,
            "throughput_rps": len(ok) / wall, "generated_tokens": int(sum(r["tokens"] for r in ok))}  # fmt: skip


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process and its live descendants (the
    vLLM server's engine core, serve.py's grader processes), and by the whole machine."""
    import psutil

    out: dict[str, float] = {}
    for name, pid in pids.items():
        proc = psutil.Process(pid)
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            try:
                t = p.cpu_times()
            except psutil.Error:  # exited meanwhile
                continue
            total += t.user + t.system
        out[name] = total
    m = psutil.cpu_times()
    out["machine"] = m.user + m.system + m.nice + getattr(m, "irq", 0.0) + getattr(m, "softirq", 0.0)
    return out


class CpuMeter:
    """What one phase of the bench cost in CPU: seconds per named process (and the machine) between
    :meth:`start` and :meth:`stop`, per answered request, and the load average at its end."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._t0: dict[str, float] = {}

    def start(self) -> None:
        self._t0 = cpu_seconds(self.pids) if self.pids else {}

    def stop(self, answered: int, wall_s: float) -> dict[str, Any]:
        if not self.pids:
            return {}
        t1 = cpu_seconds(self.pids)
        used = {k: t1[k] - self._t0[k] for k in t1}
        import os

        return {"cpu_s": {k: round(v, 1) for k, v in used.items()},
                "cpu_s_per_request": {k: round(v / max(answered, 1), 2) for k, v in used.items()},
                "cores_busy": round(used["machine"] / max(wall_s, 1e-9), 2),
                "load_average": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip


def compare(served: dict[str, Any], direct: dict[str, Any]) -> dict[str, Any]:
    """serve.py's throughput and p50 as a ratio of the upstream's at the same work."""
    return {"throughput_ratio": served["throughput_rps"] / max(direct["throughput_rps"], 1e-12),
            "p50_ratio": served["p50_s"] / max(direct["p50_s"], 1e-12)}  # fmt: skip


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
    ap.add_argument("--upstream", help="also send the same work straight to this upstream /v1 URL (needs --export)")
    ap.add_argument("--upstream-api-key", help="key for --upstream, if it requires one")
    ap.add_argument("--export", help="the export serve.py serves (its prompt and sampling, for --upstream)")
    ap.add_argument("--cpu", action="append", default=[], metavar="NAME=PID",
                    help="also report the CPU seconds of this process and its children per phase (repeatable: "
                         "serve=PID, upstream=PID), with the machine's")  # fmt: skip
    args = ap.parse_args(argv)
    if args.requests < 1 or args.in_flight < 1:
        print("error: --requests and --in-flight must be >= 1", file=sys.stderr)
        return 2
    if bool(args.upstream) != bool(args.export):
        print("error: --upstream and --export go together (the baseline prompts as the export does)", file=sys.stderr)
        return 2
    try:
        pids = {name: int(pid) for name, pid in (item.split("=", 1) for item in args.cpu)}
    except ValueError:
        print(f"error: --cpu takes NAME=PID, got {args.cpu}", file=sys.stderr)
        return 2
    meter = CpuMeter(pids)
    from rollouts.datasets import load_queries

    qs = [q.question for q in load_queries(args.dataset, limit=args.requests, offset=args.offset)]
    ttc = {k: v for k, v in (("lambda_tokens", args.lambda_tokens), ("lambda_seconds", args.lambda_seconds),
                             ("target_tokens", args.target_tokens)) if v is not None}  # fmt: skip
    meter.start()
    res = asyncio.run(run_load(args.url, qs, args.in_flight, ttc, args.api_key, args.time_limit_s))
    summary: dict[str, Any] = {k: v for k, v in res.items() if k != "results"}
    summary.update(meter.stop(res["statuses"].get("200", 0), res["wall_s"]))
    if args.upstream:
        ok = [r for r in res["results"] if r["status"] == 200]
        meter.start()
        direct = asyncio.run(run_direct(args.upstream, args.export, [qs[r["request"]] for r in ok],
                                        [r["action"] for r in ok], args.in_flight, args.upstream_api_key,
                                        args.time_limit_s))  # fmt: skip
        direct.update(meter.stop(direct["answered"], direct["wall_s"]))
        summary = {"serve": summary, "upstream_direct": direct, **compare(summary, direct)}
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
