"""Imports as users bring them: API rollouts without timings, with ragged pools, end to end
(`collect.py import` → `train.py` → `evaluate.py`), and a user-supplied API latency model.

The rollouts are written by this test (our own arithmetic questions, made-up samples: a fixture,
not a measurement).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from env.allocate_env import AllocateEnv
from env.outcomes import OutcomeTable
from policies.base import lambda_grid
from rollouts.cache import load_cache
from rollouts.importers import Importer, load_featurizer
from rollouts.importers.generic import GenericReader
from rollouts.latency import FORM_API, LatencyModel, Round
from tests.fixtures import pre13_defaults as pre13

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
SHORT = {3: 3, 7: 4, 11: 5, 20: 3}  # query index -> pool size (the others have 6)


def write_input(path: Path, n_queries: int = 36, seed: int = 0, seconds: bool = False) -> Path:
    """Pools of 6 samples (a few shorter), answers and tokens given, no seconds; one search result each."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_queries):
        a, b = int(rng.integers(2, 60)), int(rng.integers(2, 60))
        q = {"query_id": f"api-{i}", "question": f"What is {a} + {b}?", "reference": str(a + b)}
        p_right = (0.9, 0.5, 0.1)[i % 3]
        samples = []
        for _ in range(SHORT.get(i, 6)):
            ok = rng.random() < p_right
            samples.append({"answer": str(a + b) if ok else str(a + b + int(rng.integers(1, 4))),
                            "tokens": int(rng.integers(5, 40))})
        lines.append({**q, "strategy": "self_consistency", "params": {"temperature": 0.7}, "samples": samples})
        res = {"answer": str(a + b) if i % 3 != 2 else "0", "tokens": int(rng.integers(60, 120))}
        lines.append({**q, "strategy": "search_result", "params": {"best_of": 8}, "width": 8, "result": res})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{args[0]} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


def test_ragged_pools_one_config_masked_and_reported(tmp_path):
    out = tmp_path / "c"
    s = Importer(out, featurizer=load_featurizer(), latency_model=None, progress=False).run(
        GenericReader(write_input(tmp_path / "in.jsonl", n_queries=24)))
    assert not s.errors
    cache = load_cache(out)
    cfg = "pool:n=6,temperature=0.7"
    assert [c for c in cache.config_ids if c.startswith("pool")] == [cfg]  # one pool config whatever K
    assert s.cache["short_pools"][cfg] == {"K": 6, "records_by_k": {"3": 2, "4": 1, "5": 1}}
    t = OutcomeTable(cache)
    assert [a.id for a in t.menu if a.is_budget][-1] == f"{cfg}/majority@6"  # stable: budgets from the largest K
    for i, k in SHORT.items():
        qi = t.qindex[f"api-{i}"]
        for ai, a in enumerate(t.menu):
            if a.is_budget:
                assert t.mask[qi, ai] == (a.n <= k), (i, a.id)
    assert {p["query_id"] for p in t.short_pools} == {f"api-{i}" for i in SHORT}
    assert t.mask[[t.qindex[f"api-{i}"] for i in range(24) if i not in SHORT]].all()
    # no seconds anywhere and no model: λ_L is off, and the env refuses a λ_L > 0
    assert not t.latency_available and "λ_L is fixed at 0" in t.latency_note
    assert lambda_grid(t, np.arange(len(t.query_ids)), 3)["lambda_seconds"] == [0.0]
    with pytest.warns(UserWarning, match="λ_L is fixed at 0"):
        env = AllocateEnv(**pre13.ENV, table=t, split="all")
    for _ in range(30):
        _, info = env.reset()
        assert info["query_id"]
        assert env._lam[1] == 0.0
    with pytest.raises(Exception, match="lambda_seconds"):
        env.reset(options={"lambda_seconds": 0.1})


def test_user_api_latency_model_gives_seconds_and_width_is_one_round(tmp_path):
    out = tmp_path / "c"
    api = LatencyModel.parse_api("api:a=0.4,b=0.001,c=0.02")
    Importer(out, featurizer=load_featurizer(), latency_model=api, progress=False).run(
        GenericReader(write_input(tmp_path / "in.jsonl", n_queries=6)))
    cache = load_cache(out)
    assert cache.meta["latency_model"]["form"] == FORM_API
    q0 = cache.queries["api-0"]
    p = q0["prompt_tokens"]
    (pool,) = cache.records_for("api-0", "pool:n=6,temperature=0.7")
    longest = max(s["tokens"] for s in pool["samples"])
    # parallel samples are one round: a + b·prompt + c·longest, whatever the pool size
    assert pool["seconds"] == pytest.approx(0.4 + 0.001 * p + 0.02 * longest, abs=1e-4)
    assert pool["provenance"]["seconds"] == "modelled:user:api(a=0.4,b=0.001,c=0.02)"
    (sr,) = cache.records_for("api-0", "search_result:best_of=8")
    # a search result of width 8: one round of 8 parallel sequences of tokens/8, not one of all tokens
    one_round = 0.4 + 0.001 * p + 0.02 * math.ceil(sr["tokens"] / 8)
    assert sr["seconds"] == pytest.approx(one_round, abs=1e-4)
    assert sr["seconds"] < 0.4 + 0.001 * p + 0.02 * sr["tokens"]
    assert sr["provenance"]["seconds"].endswith(":one round of width 8 (declared)")
    t = OutcomeTable(cache)
    assert t.latency_available
    ai = t.action_ids.index("pool:n=6,temperature=0.7/majority@2")
    toks = [x["tokens"] for x in pool["samples"]]
    mean_max = float(np.mean([max(a, b) for j, a in enumerate(toks) for b in toks[j + 1:]]))  # all 15 pairs
    assert t.seconds[t.qindex["api-0"], ai] == pytest.approx(api.predict([Round(p, 2, 0)]) + 0.02 * mean_max)
    env = AllocateEnv(**pre13.ENV, table=t, split="all", penalty_mode="fixed", lambda_seconds=0.1)
    env.reset(options={"query_id": "api-0"})
    *_, info = env.step(ai)
    assert info["seconds"] == pytest.approx(t.seconds[t.qindex["api-0"], ai])


def test_meta_records_each_import(tmp_path):
    src = write_input(tmp_path / "in.jsonl", n_queries=3)
    out = tmp_path / "c"
    from rollouts.importers.cli import main

    args = ["generic", str(src), "--out", str(out), "--no-progress", "--feature-store", str(tmp_path / "fs")]
    assert main(args) == 0
    assert main(args) == 0  # a re-run of the same import: counts added, no new entry
    second = tmp_path / "in2.jsonl"
    second.write_text(src.read_text().replace('"api-', '"more-'))
    assert main(["generic", str(second), "--out", str(out), "--no-progress", "--feature-store", str(tmp_path / "fs"),
                 "--model", "some-api-model"]) == 0
    imports = load_cache(out).meta["imports"]
    assert len(imports) == 2
    first, other = imports
    assert first["path"] == str(src.resolve()) and len(first["files"][0]["sha256"]) == 64
    assert first["counts"]["imported"] == 6 and first["counts"]["runs"] == 2 and first["counts"]["already_present"] == 6
    assert first["options"]["latency"] == "none" and first["options"]["tokenizer"] == "smollm2-135m-instruct"
    assert other["options"]["model"] == "some-api-model" and other["counts"]["queries_new"] == 3
    # the same questions under other ids: features reused from the store, none recomputed
    assert other["counts"]["features_reused"] == 3


@pytest.mark.slow
def test_api_import_without_timings_ragged_trains_and_evaluates(tmp_path):
    src = write_input(tmp_path / "rollouts.jsonl")
    cache = tmp_path / "cache"
    p = _run([str(ROOT / "collect.py"), "import", "generic", str(src), "--out", str(cache), "--no-progress",
              "--feature-store", "none", "--model", "some-api-model"], ROOT)
    assert "λ_L fixed at 0" in p.stderr and "short pools" in p.stdout
    runs = tmp_path / "runs"
    p = _run([str(ROOT / "train.py"), "--cache", str(cache), "--runs-dir", str(runs), "--name", "api",
              "--total-timesteps", "2048", "--no-progress",
              "--hyperparams", "n_envs=4", "eval_freq=1024", "checkpoint_freq=1024", "val_grid=2"], ROOT)
    assert "λ_L is fixed at 0" in p.stderr
    out = tmp_path / "eval"
    _run([str(ROOT / "evaluate.py"), "--run", str(runs / "api"), "--out", str(out), "--json", str(out / "r.json"),
          "--grid", "2"], ROOT)
    report = json.loads((out / "r.json").read_text())
    assert report["grid"]["lambda_seconds"] == [0.0] and len(report["points"]) == 2
    assert "λ_L is fixed at 0" in report["latency"] and "Latency:" in (out / "results.md").read_text()
    assert report["n_queries"] > 0 and (out / "pareto_tokens.png").exists()
    assert "pool:n=6,temperature=0.7/majority@6" in report["menu"]
    splits = json.loads((runs / "api" / "splits.json").read_text())
    ragged_test = sum(f"api-{i}" in splits["test"] for i in SHORT)
    assert report["n_dropped_incomplete"] == ragged_test
    p = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), "--run", str(runs / "api"), "--out", str(out),
                        "--lambda-seconds", "0.1"], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("error: --lambda-seconds > 0")


class _CrashAfter:
    """The real featurizer, with a crash injected after ``n`` batches (fault injection, not a stand-in)."""

    def __init__(self, real, n: int):
        self.real, self.n = real, n
        self.tokenizer = real.tokenizer

    def __getattr__(self, name):
        return getattr(self.real, name)

    def iter_features(self, prompts, bar=None):
        for i, item in enumerate(self.real.iter_features(prompts, bar)):
            if i == self.n:
                raise KeyboardInterrupt("injected crash")
            yield item


def test_featurization_writes_batch_by_batch_and_resumes(tmp_path):
    from rollouts.feature_store import FeatureStore

    src = write_input(tmp_path / "in.jsonl", n_queries=10)
    out, store = tmp_path / "c", tmp_path / "fs"
    real = load_featurizer()
    old = real.batch_size
    real.batch_size = 3  # several batches for 10 questions
    try:
        with pytest.raises(KeyboardInterrupt):
            Importer(out, featurizer=_CrashAfter(real, 2), progress=False,
                     feature_store=FeatureStore(store)).run(GenericReader(src))
        done = load_cache(out)
        assert len(done.query_ids) == 6 and len(done.records) == 12  # two batches of 3, with their records
        s = Importer(out, featurizer=real, progress=False, feature_store=FeatureStore(store)).run(GenericReader(src))
    finally:
        real.batch_size = old
    assert (s.already_present, s.imported, s.queries_new, s.features_reused) == (12, 8, 4, 0)
    cache = load_cache(out)
    assert len(cache.query_ids) == 10 and len(cache.records) == 20
    # the resumed cache's features equal one uninterrupted import's (other batches: padding differs)
    again = Importer(tmp_path / "fresh", featurizer=real, progress=False).run(GenericReader(src))
    assert again.queries_new == 10
    fresh = load_cache(tmp_path / "fresh")
    for qid in cache.query_ids:
        assert np.allclose(cache.queries[qid]["features"], fresh.queries[qid]["features"], atol=1e-4), qid
