"""End to end: `collect.py import` a small generic file, then `train.py` and `evaluate.py` on it, unchanged.

The rollouts are written by this test (our own arithmetic questions, made-up samples: a fixture,
not a measurement). Missing seconds are modelled with the shipped CPU latency model when present,
else with a SYNTHETIC one (labelled).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rollouts.cache import load_cache
from rollouts.latency_fit import DEFAULT_MODEL_PATH

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def write_input(path: Path, n_queries: int = 36, k: int = 4, seed: int = 0) -> Path:
    """Pools of k samples (answers only: graded on import) and one beam result per query."""
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_queries):
        a, b = int(rng.integers(2, 60)), int(rng.integers(2, 60))
        q = {"query_id": f"e2e-{i}", "question": f"What is {a} + {b}?", "reference": str(a + b)}
        p_right = (0.9, 0.5, 0.1)[i % 3]
        samples = []
        for _ in range(k):
            ok = rng.random() < p_right
            ans = str(a + b) if ok else str(a + b + int(rng.integers(1, 4)))
            samples.append({"answer": ans, "tokens": int(rng.integers(5, 40)),
                            "score": round(float(np.clip(rng.normal(0.7 if ok else 0.4, 0.1), 0, 1)), 3)})
        lines.append({**q, "strategy": "best_of_n", "samples": samples})
        lines.append({**q, "strategy": "beam_search", "params": {"n": 4, "m": 2},
                      "result": {"answer": str(a + b) if i % 3 != 2 else "0", "tokens": int(rng.integers(60, 120)),
                                 "seconds": round(float(rng.uniform(1, 3)), 3)}})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{args[0]} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow
def test_import_then_train_and_evaluate(tmp_path):
    src = write_input(tmp_path / "rollouts.jsonl")
    cache = tmp_path / "cache"
    if DEFAULT_MODEL_PATH.exists():
        lat = DEFAULT_MODEL_PATH
    else:
        lat = tmp_path / "synthetic_latency.json"
        lat.write_text(json.dumps({"coef": [0.05, 1e-4, 0.01, 0.002], "fit": {"label": "synthetic-test"}}))
    p = _run([str(ROOT / "collect.py"), "import", "generic", str(src), "--out", str(cache),
              "--latency-model", str(lat), "--no-progress"], ROOT)
    assert "graded by math-verify" in p.stdout
    c = load_cache(cache)
    assert len(c.query_ids) == 36 and len(c.records) == 72

    runs = tmp_path / "runs"
    _run([str(ROOT / "train.py"), "--cache", str(cache), "--runs-dir", str(runs), "--name", "imported",
          "--total-timesteps", "2048", "--no-progress",
          "--hyperparams", "n_envs=4", "eval_freq=1024", "checkpoint_freq=1024", "val_grid=2"], ROOT)
    run = runs / "imported"
    assert (run / "best_model.zip").exists()
    # rollouts from another pipeline cannot be reproduced live: the export has no serving spec
    assert json.loads((run / "export" / "policy.json").read_text())["serving"] is None

    out = tmp_path / "eval"
    _run([str(ROOT / "evaluate.py"), "--run", str(run), "--out", str(out), "--json", str(out / "r.json"),
          "--grid", "2", "--no-plots"], ROOT)
    report = json.loads((out / "r.json").read_text())
    assert report["cache"] == str(cache) and report["n_queries"] > 0 and report["points"]
    assert "beam_search:m=2,n=4" in report["menu"] and "pool:n=4/majority@4" in report["menu"]
    assert "ppo" in report["points"][0]["policies"]
