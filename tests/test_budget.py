"""Budgets (policies/budget.py, evaluate.py --target-*) and pricing at a load (env.latency_load)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import evaluate
import train
from env.allocate_env import EnvConfig
from env.outcomes import OutcomeTable
from evaluation.options import EvalOptions
from policies.budget import BudgetError, solve_lambda
from rollouts.errors import ConfigError
from rollouts.latency import Round

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "data" / "default_cache"


def _staircase(lt: float, ls: float) -> float:
    # a policy's mean cost over 200 queries: query i drops from 400 to 20 tokens once λ_T > i * 1e-5
    return float(np.mean([20.0 if lt > (i + 1) * 1e-5 else 400.0 for i in range(200)]))


def test_solve_lambda_meets_the_target_from_below():
    sol = solve_lambda(_staircase, "tokens", 150.0, scale=1e-3)
    assert sol.binding and sol.lambda_seconds == 0.0
    assert 150.0 - 1.9 <= sol.achieved <= 150.0  # one query switching moves the mean by 1.9 tokens
    assert _staircase(sol.lambda_tokens * 0.999, 0) > 150.0  # and it is the smallest such price
    free = solve_lambda(_staircase, "tokens", 500.0)
    assert (free.lambda_tokens, free.binding) == (0.0, False)
    sec = solve_lambda(lambda lt, ls: _staircase(ls, lt), "seconds", 150.0, other_lambda=3e-4, scale=1.0)
    assert sec.lambda_tokens == 3e-4 and sec.achieved <= 150.0


@pytest.mark.parametrize("target", [0.0, -1.0, float("inf"), True, "300"])
def test_bad_targets(target):
    with pytest.raises(BudgetError, match="target_tokens"):
        solve_lambda(_staircase, "tokens", target)


def test_target_below_what_the_policy_spends():
    with pytest.raises(BudgetError, match="below what the policy ever spends"):
        solve_lambda(_staircase, "tokens", 5.0)


def test_evaluate_target_tokens(tiny_run, tmp_path):
    res = evaluate.evaluate(EvalOptions(run=str(tiny_run), out=str(tmp_path), grid_n=2, n_boot=0, plots=False,
                                        target_tokens=[60.0, 120.0], target_seconds=[1.0]))  # fmt: skip
    b = res["budgets"]
    assert [(r["cost"], r["target"]) for r in b] == [("tokens", 60.0), ("tokens", 120.0), ("seconds", 1.0)]
    for r in b:
        assert r["solved_on_mean"] <= r["target"] + 1e-9  # met on the validation split
        assert r["eval_rel_error"] == pytest.approx((r["eval_mean"] - r["target"]) / r["target"])
        assert r["static_closest_cost"]["action"] in res["menu"]
    assert b[0]["lambda_tokens"] > b[1]["lambda_tokens"]  # a tighter budget needs a higher price


def test_evaluate_bad_target(tiny_run, tmp_path, capsys):
    rc = evaluate.main(["--run", str(tiny_run), "--out", str(tmp_path), "--target-tokens", "-5", "--no-plots",
                        "--bootstrap", "0", "--grid", "2"])  # fmt: skip
    assert rc == 2 and "target_tokens must be a finite number > 0" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing partial


def _load_file(tmp_path: Path) -> Path:
    # LABELLED synthetic per-load models: a constant cost per engine round, 1 s alone and 5 s at k = 16
    doc = {"format": "ttc-alloc/latency-by-load",
           "loads": {"1": {"coef": [1.0, 0, 0, 0]}, "16": {"coef": [5.0, 0, 0, 0]}}}  # fmt: skip
    p = tmp_path / "by_load.json"
    p.write_text(json.dumps(doc))
    return p


@pytest.mark.skipif(not (CACHE / "meta.json").exists(), reason="bundled cache missing")
def test_latency_load_reprices_every_record_from_its_rounds(tmp_path):
    from rollouts.cache import load_cache

    f = _load_file(tmp_path)
    t16 = OutcomeTable(CACHE, latency_load=16, latency_load_models=str(f))
    cache = load_cache(CACHE)
    qi = 0
    for ai, a in enumerate(t16.menu):
        if a.strategy == "beam_search":
            rec = cache.records_for(t16.query_ids[qi], a.config_id)[0]
            assert t16.seconds[qi, ai] == pytest.approx(5.0 * len(rec["rounds"]))  # one term per round
        else:
            assert t16.seconds[qi, ai] == pytest.approx(5.0)  # a pool is one round
    with pytest.raises(ConfigError, match=r"latency_load 4 was not measured .*\[1, 16\]"):
        OutcomeTable(CACHE, latency_load=4, latency_load_models=str(f))


def test_latency_load_config_errors(synthetic_cache, tmp_path, capsys):
    with pytest.raises(ConfigError, match="env.latency_load must be null or an integer >= 1"):
        EnvConfig.from_dict({"latency_load": 0})
    # the synthetic beams carry no engine rounds: they cannot be re-priced, and that is an error
    with pytest.raises(Exception, match="cannot be re-priced at env.latency_load 16"):
        OutcomeTable(synthetic_cache, latency_load=16, latency_load_models=str(_load_file(tmp_path)))
    rc = train.main(["--cache", str(synthetic_cache), "--runs-dir", str(tmp_path / "runs"), "--name", "x",
                     "--no-progress", "--hyperparams", "env.latency_load=-1"])  # fmt: skip
    assert rc == 2 and "env.latency_load" in capsys.readouterr().err


def test_shipped_latency_by_load_file():
    from rollouts.latency_load import DEFAULT_PATH, load_models

    models = load_models(DEFAULT_PATH)  # shipped with the repo: its absence is a failure, not a skip
    assert {1, 4, 16} <= set(models)  # the loads docs/evaluation.md's "Latency under load" reports
    beam = [Round(50, 8, 20)] * 4  # four rounds of eight beams
    pool = [Round(50, 8, 60)]
    for m in models.values():
        assert m.predict(beam) > 0 and m.predict(pool) > 0
