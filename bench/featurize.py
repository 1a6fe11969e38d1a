"""Featurisation speed and memory: questions/s and peak RSS of the import's featurizer, and resume.

    python -m bench.featurize [--n 120] [--long 8] [--max-tokens 1000] [--threads 1] [--json out.json]

Two measurements, each in a fresh child process (so its peak RSS, ``ru_maxrss`` from ``wait4``, is
its own):

1. ``import``: ``collect.py import generic`` of the first ``--n`` GSM8K test questions
   (``../shared/data/gsm8k/test.jsonl``, read in place; one made-up pool line per question, its
   correctness given so nothing is graded) into a temporary cache with its own feature store. It
   is SIGKILLed once ``--kill-at`` of the queries are written and run again: the second run must
   finish the cache with every query once (resume), reusing what the first had featurized.
   Reported: questions/s end to end (both runs, process starts and model loads included) and while
   featurizing (queries written between the first one and the kill), the first run's last progress
   line (count, rate, ETA), and the peak RSS of either run.
2. ``long``: ``--long`` prompts of ``--max-tokens`` tokens (GSM8K questions joined until the chat
   prompt is that long) through ``Featurizer.features``: the peak memory of the longest batches.
   Peak memory does not grow with the number of questions (batches are bounded by
   ``max_batch_tokens`` and written as they finish), so a few long prompts measure the bound.

Prints one JSON object: {"import": {...}, "long": {...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def gsm8k_questions(n: int) -> list[tuple[str, str]]:
    out = []
    with open(GSM8K, encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            out.append((row["question"], row["answer"].split("####")[-1].strip()))
            if len(out) == n:
                break
    return out


def _wait(proc: subprocess.Popen) -> tuple[int, float]:
    """Exit status and the child's peak RSS in MB."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss / 1024.0


def bench_import(n: int, threads: int, kill_at: float, work: Path) -> dict:
    src = work / "gsm8k_pools.jsonl"
    with open(src, "w", encoding="utf-8") as fh:
        for i, (q, a) in enumerate(gsm8k_questions(n)):
            fh.write(json.dumps({"query_id": f"gsm8k-{i}", "question": q, "reference": a, "strategy": "best_of_n",
                                 "samples": [{"answer": a, "correct": True, "tokens": 50}]}) + "\n")
    out, store = work / "cache", work / "features"
    cmd = [sys.executable, str(ROOT / "collect.py"), "import", "generic", str(src), "--out", str(out),
           "--feature-store", str(store), "--threads", str(threads), "--no-latency-model"]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}  # collect.py run by path imports its checkout
    qfile = out / "queries.jsonl"

    def written() -> int:
        return sum(1 for _ in open(qfile, encoding="utf-8")) if qfile.exists() else 0

    log1, log2 = work / "first.stderr", work / "second.stderr"
    t0 = time.perf_counter()
    with open(log1, "w") as err1:
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err1, text=True)
        t_first = q_first = None
        while first.poll() is None:
            k = written()
            if k and t_first is None:
                t_first, q_first = time.perf_counter(), k
            if k >= kill_at * n:
                first.send_signal(signal.SIGKILL)
                break
            time.sleep(0.2)
        t_kill = time.perf_counter()
        _, rss1 = _wait(first)
    killed_at = written()
    stored_at_kill = sum(1 for _ in open(next(store.glob("*.jsonl")), encoding="utf-8")) if store.exists() else 0
    t1 = time.perf_counter()
    with open(log2, "w") as err2:
        second = subprocess.Popen(cmd + ["--json"], env=env, stdout=subprocess.PIPE, stderr=err2, text=True)
        out_json = second.stdout.read() if second.stdout else ""
        rc2, rss2 = _wait(second)
    t2 = time.perf_counter()
    summary = json.loads(out_json) if rc2 == 0 else {"stderr": log2.read_text()[-2000:]}
    ids = [json.loads(line)["query_id"] for line in open(qfile, encoding="utf-8")]
    bar = log1.read_text().replace("\r", "\n").splitlines()
    bar = [b for b in bar if b.startswith("features")]
    steady = ((killed_at - q_first) / (t_kill - t_first)) if t_first and t_kill > t_first else None
    return {
        "questions": n,
        "threads": threads,
        "first_run_progress_last_line": bar[-1].strip() if bar else None,
        "killed_after_queries_written": killed_at,
        "stored_features_at_kill": stored_at_kill,
        "first_run_wall_s": round(t1 - t0, 1),
        "second_run_wall_s": round(t2 - t1, 1),
        "second_run_rc": rc2,
        "second_run_queries_new": summary.get("queries_new"),
        "second_run_features_reused": summary.get("features_reused"),
        "queries_in_cache": len(ids),
        "duplicate_query_ids": len(ids) - len(set(ids)),
        "questions_per_s_end_to_end": round(n / (t2 - t0), 3),
        "questions_per_s_featurizing": None if steady is None else round(steady, 3),
        "mean_prompt_tokens": round(sum(json.loads(line)["prompt_tokens"] for line in open(qfile)) / len(ids), 1),
        "peak_rss_mb": round(max(rss1, rss2), 1),
    }


def measure_long(n: int, max_tokens: int, threads: int) -> dict:
    """Child mode: featurize n prompts of ~max_tokens tokens; peak RSS is the caller's wait4."""
    import torch

    torch.set_num_threads(threads)
    from rollouts.importers import load_featurizer
    from rollouts.prompts import build_messages

    fz = load_featurizer()
    qs = [q for q, _ in gsm8k_questions(400)]
    prompts, j = [], 0
    for _ in range(n):
        text = ""
        while True:
            cand = (text + " " + qs[j % len(qs)]).strip()
            if len(fz.prompt_ids(build_messages(cand, "", None))) > max_tokens:
                break
            text, j = cand, j + 1
        prompts.append(fz.prompt_ids(build_messages(text, "", None)))
    t0 = time.perf_counter()
    fz.features(prompts, progress=False)
    dt = time.perf_counter() - t0
    return {"prompts": n, "tokens_each": [min(len(p) for p in prompts), max(len(p) for p in prompts)],
            "featurize_s": round(dt, 1), "prompts_per_s": round(n / dt, 3),
            "max_batch_tokens": fz.max_batch_tokens}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=120, help="GSM8K questions imported (default: %(default)s)")
    ap.add_argument("--kill-at", type=float, default=0.4, help="SIGKILL the first run at this share of queries")
    ap.add_argument("--long", type=int, default=8, help="long prompts for the memory bound (default: %(default)s)")
    ap.add_argument("--max-tokens", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--child-long", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child_long:
        print(json.dumps(measure_long(args.long, args.max_tokens, args.threads)))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        res = {"import": bench_import(args.n, args.threads, args.kill_at, Path(tmp))}
    child = subprocess.Popen([sys.executable, "-m", "bench.featurize", "--child-long", "--long", str(args.long),
                              "--max-tokens", str(args.max_tokens), "--threads", str(args.threads)],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT)
    out = child.stdout.read() if child.stdout else ""
    rc, rss = _wait(child)
    res["long"] = {**(json.loads(out) if rc == 0 else {"rc": rc}), "peak_rss_mb": round(rss, 1)}
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
