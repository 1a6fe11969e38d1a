"""Integration: a real vLLM engine on CPU collects a few queries through both backends.

Slow (engine and server starts take about a minute each on 2 cores). The HTTP backend talks to a
real ``vllm.entrypoints.openai.api_server`` on 127.0.0.1; the kill -9 test runs the collector as a
subprocess against that server and kills it at several points.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from rollouts.cache import load_cache, record_key

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VLLM_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
SMALL_MENU = "menu=[{strategy: sample_pool, n: 4}, {strategy: beam_search, n: 2, m: 2, max_iterations: 3}]"
SMALL = ["dataset=arith:7", "budgets=[1, 2, 4]", SMALL_MENU, "max_tokens=48", "batch_queries=4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_path() -> str:
    from rollouts.models import resolve_model

    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def vllm_server(model_path, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--host", "127.0.0.1",
           "--port", str(port), "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
           "--served-model-name", "smollm2"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, **VLLM_ENV},
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 600
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"vLLM server exited early:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/models", timeout=2).ok:
                break
        except requests.RequestException:
            pass
        time.sleep(2)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("vLLM server did not come up in 600 s")
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def collect(*overrides: str, timeout: int = 900, wait: bool = True):
    cmd = [sys.executable, str(ROOT / "collect.py"), "--no-progress", *overrides]
    env = {**os.environ, **VLLM_ENV}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _check_cache(path: Path, n_queries: int) -> None:
    cache = load_cache(path)
    assert len(cache.query_ids) == n_queries
    assert set(cache.config_ids) == {"pool:n=4", "beam:N=2,M=2,K=3"}
    assert len(cache.records) == 2 * n_queries
    assert len(cache.queries[cache.query_ids[0]]["features"]) == 576  # SmolLM2 hidden size
    for r in cache.records:
        assert r["tokens"] > 0
        if r["strategy"] == "sample_pool":
            assert len(r["samples"]) == 4
            assert r["tokens"] == sum(s["tokens"] for s in r["samples"])
            assert all(0.0 <= s["score"] <= 1.0 and isinstance(s["correct"], bool) for s in r["samples"])
        else:
            # every generated token is counted, pruned beams included: the total is the iterations' sum
            assert r["tokens"] == sum(it["tokens"] for it in r["iterations"]) > 0
            assert r["iterations"][0]["candidates"] == 2
            assert all(it["candidates"] == 2 for it in r["iterations"])


def test_offline_engine_collects(tmp_path):
    out = tmp_path / "cache"
    proc = collect(*SMALL, "limit=3", "calibration_queries=2", f"output={out}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_cache(out, 3)
    meta = load_cache(out).meta
    assert meta["backend"]["backend"] == "vllm" and meta["featurizer"]["dim"] == 576
    assert len(meta["latency_calibration"]) == 2 * (3 + 1)  # 2 queries x (3 pool budgets + 1 beam config)
    assert meta["latency_model"]["fit"]["holdout"]["n"] > 0
    assert all(r["seconds_source"] == "modelled" and r["seconds"] > 0 for r in load_cache(out).records)


def test_http_backend_collects(vllm_server, tmp_path):
    out = tmp_path / "cache"
    proc = collect(*SMALL, "limit=3", "calibration_queries=0", "backend=openai",
                   f"backend_options={{base_url: '{vllm_server}'}}", f"output={out}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_cache(out, 3)
    assert load_cache(out).meta["backend"]["served_model_name"] == "smollm2"


def _records_lines(path: Path) -> int:
    p = path / "records.jsonl"
    return p.read_bytes().count(b"\n") if p.exists() else 0


def test_kill9_resume_matches_uninterrupted_run(vllm_server, tmp_path):
    args = [*SMALL, "limit=6", "batch_queries=2", "calibration_queries=0", "backend=openai",
            f"backend_options={{base_url: '{vllm_server}'}}"]
    ref = tmp_path / "uninterrupted"
    assert collect(*args, f"output={ref}").returncode == 0
    out = tmp_path / "killed"
    # Kill at several points: before any record, and after 1, 3 and 6 records.
    for threshold in (0, 1, 3, 6):
        proc = collect(*args, f"output={out}", wait=False)
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            if (out / "queries.jsonl").exists() and _records_lines(out) >= threshold:
                break
            time.sleep(0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    final = collect(*args, f"output={out}")
    assert final.returncode == 0, final.stderr[-4000:]
    a, b = load_cache(ref), load_cache(out)
    keys_a = sorted(record_key(r) for r in a.records)
    keys_b = [record_key(r) for r in b.records]
    assert len(keys_b) == len(set(keys_b)), "duplicate records after resume"
    assert sorted(keys_b) == keys_a
    assert list(a.queries) == list(b.queries)
    for line in (out / "records.jsonl").read_text().splitlines():
        json.loads(line)  # every line whole
