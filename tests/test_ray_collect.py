"""Collection on a local Ray cluster (``executor=ray``) and RLlib PPO on the masked env.

Slow: one ``ray.init(num_cpus=2)`` for the module; vLLM engines start inside replica actors (about a
minute each on 2 cores). The single-process reference runs ``collect.py`` as the other engine tests do.
Greedy decoding, so the Ray cache must hold exactly the reference's records, answers and token counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from rollouts.cache import load_cache, record_key

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
VLLM_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"}
# 4 queries x 2 configs, one query per batch: 8 work units, so a kill lands mid-collection. Greedy
# decoding needs n = 1 per request in vLLM, so the pool has one sample and the beam search one beam
# (it still runs its step-by-step engine calls).
WORK = ["dataset=arith:7", "limit=4", "budgets=[1]", "max_tokens=24", "temperature=0", "batch_queries=1",
        "calibration_queries=0", "backend_options={}",  # backend_options: the pre-#13 default
        "menu=[{strategy: sample_pool, n: 1}, {strategy: beam_search, n: 1, m: 1, max_iterations: 3}]"]
N_RECORDS = 8


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    os.environ.update(VLLM_ENV)
    os.environ["RAY_worker_niceness"] = "0"  # Ray's default nice 15 starves the engines on a shared machine
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def collect(*overrides: str, wait: bool = True, timeout: int = 900):
    cmd = [sys.executable, str(ROOT / "collect.py"), "--no-progress", *overrides]
    env = {**os.environ, **VLLM_ENV, "PYTHONPATH": str(ROOT)}
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The same work collected single-process (executor=local)."""
    out = tmp_path_factory.mktemp("ref") / "cache"
    proc = collect(*WORK, f"output={out}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def _lines(path: Path) -> int:
    p = path / "records.jsonl"
    return p.read_bytes().count(b"\n") if p.exists() else 0


def _outcomes(path: Path) -> dict:
    """Per record key: tokens, and the answers and token counts of every sample / the beam result."""
    out = {}
    for r in load_cache(path).records:
        if r["strategy"] == "sample_pool":
            detail = [(s["answer"], s["tokens"], s["correct"]) for s in r["samples"]]
        else:
            detail = [(r["result"]["answer"], r["result"]["correct"])] + [it["tokens"] for it in r["iterations"]]
        out[record_key(r)] = (r["tokens"], detail)
    return out


def _assert_same_as_reference(out: Path, reference: Path) -> None:
    keys = [record_key(r) for r in load_cache(out).records]
    assert len(keys) == len(set(keys)) == N_RECORDS, "records lost or duplicated"
    assert list(load_cache(out).queries) == list(load_cache(reference).queries)
    assert _outcomes(out) == _outcomes(reference)
    for line in (out / "records.jsonl").read_text().splitlines():
        json.loads(line)  # every line whole


def test_two_replicas_match_single_process_and_survive_a_killed_replica(ray_cluster, reference, tmp_path):
    from rollouts.config import load_config
    from rollouts.executors import make_collector
    from rollouts.ray_executor import RayCollector

    out = tmp_path / "cache"
    col = make_collector(load_config(None, [*WORK, "executor=ray", "replicas=2", f"output={out}"]), progress=False)
    assert isinstance(col, RayCollector)
    result: dict = {}
    worker = threading.Thread(target=lambda: result.update(col.collect()), daemon=True)
    worker.start()
    deadline = time.time() + 600
    while time.time() < deadline and worker.is_alive() and _lines(out) < 1:
        time.sleep(0.05)
    assert worker.is_alive() and _lines(out) < N_RECORDS, "the run ended before the kill"
    victim = col.replica_info[1]["pid"]
    os.kill(victim, signal.SIGKILL)  # the replica's actor process, mid-collection
    worker.join(900)
    try:
        assert not worker.is_alive() and result, "collection did not complete after the kill"
        import ray

        restarted = ray.get(col.actors[1].info.remote())["pid"]
    finally:
        col.close()
    assert restarted != victim  # Ray restarted the replica (and retried its batches on it)
    assert result["records"] == N_RECORDS
    _assert_same_as_reference(out, reference)
    meta = load_cache(out).meta
    assert meta["backend"]["executor"] == "ray" and meta["backend"]["backend"] == "vllm"
    assert {r["batch"]["replica"] for r in load_cache(out).records} == {0, 1}


def test_killed_driver_rerun_resumes_to_the_same_records(ray_cluster, reference, tmp_path):
    out = tmp_path / "cache"
    args = [*WORK, "executor=ray", "replicas=1", f"ray_address={ray_cluster}", f"output={out}"]
    proc = collect(*args, wait=False)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None and _lines(out) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the driver finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = _lines(out)
    assert 2 <= written < N_RECORDS
    final = collect(*args)
    assert final.returncode == 0, final.stderr[-4000:]
    _assert_same_as_reference(out, reference)


def test_rllib_ppo_trains_on_the_masked_env_and_is_evaluated_as_a_policy(ray_cluster, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("rllib_ppo", ROOT / "examples" / "rllib_ppo.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "rllib.json"
    assert example.main(["--iterations", "1", "--batch", "256", "--grid", "2", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n_queries"] > 100 and len(res["points"]) == 4
    assert res["training"][0]["env_steps"] >= 256  # one PPO iteration sampled a full train batch
    for p in res["points"]:
        pol = p["policies"]["rllib_ppo"]
        assert 0.0 <= pol["accuracy"] <= 1.0 and sum(pol["share"].values()) == pytest.approx(1.0)
        assert pol["utility"] <= p["policies"]["oracle"]["utility"] + 1e-9
