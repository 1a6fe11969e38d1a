"""The stopping rules tuned at training time (rules.json) and reused by the sequential evaluation; and
train.py + ``evaluate.py --compare-run`` / ``scripts/escalate_headroom.py`` on a cache with two pools
per query (built from the bundled cache): the step menu draws from both, the one-shot policy may pick
any pool's action (one the step menu cannot play, a race on the round watch, is scored from the
table)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import evaluate
import train
from tests.fixtures import pre13_defaults as pre13

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "default_cache"
ESC = str(ROOT / "configs" / "train_escalate.yaml")
SMALL = ["n_envs=4", "eval_freq=512", "checkpoint_freq=1024", "val_grid=2", "ppo.n_steps=128", "ppo.batch_size=256"]


def test_tuned_rules_pick_what_tuning_on_the_same_episodes_picks(synthetic_cache):
    """rules.json's means give the same per-point picks as tuning the simulated results directly, at any
    λ (also points the training never saw), and a file made for another step menu is not used."""
    from env.escalate_env import EscalateEnv
    from env.outcomes import OutcomeTable
    from policies.escalate_sim import Simulator, make_orders
    from policies.rule_tuning import TunedRules, tune_rules
    from policies.stopping_rules import rule_grid, simulate_rules, tune

    t = OutcomeTable(synthetic_cache)
    e = EscalateEnv(**pre13.ENV, table=t, split="val")
    tuned = tune_rules(t, e.menu, e.encoder, e.units, e.rows, n_orders=2, split="val")
    back = TunedRules.from_dict(json.loads(json.dumps(tuned.to_dict())), e.menu)
    assert back is not None and back.info["n_queries"] == len(e.rows) and back.info["n_orders"] == 2
    lambdas = [(0.0, 0.0), (1e-3, 0.0), (3e-3, 0.05), (0.02, 0.5)]
    orders, picks = make_orders(t, e.menu, e.rows, 2, seed=0)
    sim = Simulator(t, e.menu, e.encoder, e.units, e.rows, orders, picks)
    direct = {f: tune(simulate_rules(sim, rules), lambdas) for f, rules in rule_grid(e.menu).items()}
    assert back.picks(lambdas) == direct
    assert len({i for idx in direct.values() for i in idx}) > 1  # the λ points do pick different rules
    stale = {**tuned.to_dict(), "step_menu": ["draw@1", "stop:majority"]}
    assert TunedRules.from_dict(stale, e.menu) is None


@pytest.fixture(scope="module")
def two_pool_runs(tmp_path_factory):
    """A 96-query two-pool cache from the bundled one, a one-shot run and a sequential run on it."""
    from tests.fixtures.two_pool_cache import make_two_pool_cache

    base = tmp_path_factory.mktemp("twopool")
    cache = make_two_pool_cache(BUNDLED, base / "cache", n_queries=96)
    runs = base / "runs"
    rc = train.main(
        ["--cache", str(cache), "--runs-dir", str(runs), "--name", "oneshot", "--total-timesteps", "1024",
         "--no-progress", "--hyperparams", "n_envs=4", "eval_freq=512", "checkpoint_freq=1024", "val_grid=2"]
    )  # fmt: skip
    assert rc == 0
    rc = train.main(
        ["--config", ESC, "--cache", str(cache), "--runs-dir", str(runs), "--name", "seq", "--total-timesteps",
         "2048", "--no-progress", "--hyperparams", *SMALL, "rule_orders=1"]
    )  # fmt: skip
    assert rc == 0
    return cache, runs / "oneshot", runs / "seq"


@pytest.mark.skipif(not (BUNDLED / "meta.json").exists(), reason="bundled cache missing")
def test_two_pool_cache_compare_run_and_headroom(two_pool_runs, tmp_path):
    from env.outcomes import OutcomeTable

    cache, oneshot, seq = two_pool_runs
    t = OutcomeTable(cache)
    assert {a.config_id for a in t.menu if a.is_pool} == {"pool:n=8,source=a", "pool:n=8,source=b"}
    rules = json.loads((seq / "rules.json").read_text())
    summary = json.loads((seq / "train_summary.json").read_text())[-1]
    assert [p["label"] for p in summary["pools"]] == ["a", "b"]  # the run records the pools it draws from
    step_menu = rules["step_menu"]
    assert {"draw@8:a", "draw@8:b"} <= set(step_menu) and {"cross_pool", "confidence"} <= set(rules["families"])
    assert "notes" not in rules  # the bundled samples carry mean_logprob: no family is left out
    assert rules["split"] == "train+val" and rules["n_orders"] == 1 and summary["rules"]["n_queries"] > 0
    rc = evaluate.main(
        ["--run", str(seq), "--compare-run", str(oneshot), "--json", str(tmp_path / "r.json"), "--out",
         str(tmp_path / "e"), "--grid", "2", "--orders", "2", "--bootstrap", "50", "--no-plots", "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["rule_tuning"]["from"] == "rules.json" and r["rule_tuning"]["split"] == "train+val"
    assert [p["config"] for p in r["pools"]] == ["pool:n=8,source=a", "pool:n=8,source=b"]
    assert "pool:n=8,source=b/majority@4" in r["oneshot_menu"] and "rule:cross_pool" in r["points"][0]["policies"]
    assert "rule:confidence" in r["points"][0]["policies"] and r["rule_grid_sizes"]["confidence"] == 40
    assert set(r["points"][0]["policies"]["sequential_ungated"]["pool_samples"]) == {"a", "b"}
    s = r["summary"]
    for p in r["points"]:
        assert {"oneshot_ppo", "oneshot_ppo_ungated"} <= set(p["policies"])
        assert isinstance(p["oneshot_ppo_gate_open"], bool)
    num = sum(
        p["policies"]["sequential"]["utility"] - p["policies"]["static:" + p["best_static"]]["utility"]
        for p in r["points"]
    )
    den = sum(p["oracle_gap"] for p in r["points"])
    assert s["sequential_gap_share_summed"] == (None if den < 1e-9 else pytest.approx(num / den))
    assert set(s["bars"]) == {
        "never_below_oneshot_ppo_90", "above_oneshot_ppo_90_at_40pct_of_points", "never_below_best_rule_90",
        "grid_mean_above_best_rule_90",
    }  # fmt: skip
    from scripts.escalate_headroom import main as headroom

    assert headroom(["--run", str(seq), "--compare-run", str(oneshot), "--orders", "2",
                     "--json", str(tmp_path / "h.json")]) == 0  # fmt: skip
    h = json.loads((tmp_path / "h.json").read_text())
    assert len(h["points"]) == 25 and h["n_queries"] == r["n_queries"] and len(h["pools"]) == 2
    assert h["watch"] == "round" and h["rule_families"]["confidence"] == 40 and h["rule_notes"] == []
    assert all(p["cross_pool"]["rule"].startswith("cross_pool(") for p in h["points"])


@pytest.mark.skipif(not (BUNDLED / "meta.json").exists(), reason="bundled cache missing")
def test_a_choice_of_the_other_pool_is_scored_from_the_table(two_pool_runs):
    """The one-shot side may pick an action the step menu cannot play (the other pool): its outcome is
    the table's, for every order; and without rules.json the evaluation tunes the rules on val."""
    from evaluation.options import EvalOptions
    from evaluation.sequential import SequentialEvaluation
    from evaluation.sequential_setup import load_setup
    from evaluation.source import load_source
    from policies.baselines import StaticPolicy

    cache, oneshot, seq = two_pool_runs
    opts = EvalOptions(run=str(seq), compare_run=str(oneshot), n_orders=2, grid_n=2, n_boot=0, progress=False)
    setup = load_setup(opts, load_source(opts))
    ev = SequentialEvaluation(opts, setup)
    t, rows = setup.table, setup.rows
    assert setup.menu.pool_configs == ["pool:n=8,source=a", "pool:n=8,source=b"]
    budget = next(a for a in t.menu if a.is_budget and a.config_id != setup.menu.pool_config and a.n == 4)
    assert budget.id in ev.oneshot_ids  # the step menu draws from the other pool too: played on the orders
    # a race of the other pool: the round watch cannot play it
    other = next(a for a in t.menu if a.is_pool and a.config_id != setup.menu.pool_config and a.race is not None)
    assert other.id not in ev.oneshot_ids
    ai = t.action_ids.index(other.id)
    ids, util = ev.oneshot_choice(StaticPolicy(ai, other.id), 1e-3, 0.0)
    assert set(ids) == {other.id} and util.shape == (len(rows), 2)
    expected = t.correct[rows, ai] - 1e-3 * t.tokens[rows, ai]
    assert np.allclose(util, expected[:, None])
    (seq / "rules.json").rename(seq / "rules.json.bak")
    try:
        ev.run()
        assert ev.rule_tuning["from"] == "tuned now" and ev.rule_tuning["split"] == "val"
    finally:
        (seq / "rules.json.bak").rename(seq / "rules.json")


@pytest.mark.skipif(not (BUNDLED / "meta.json").exists(), reason="bundled cache missing")
def test_headroom_on_the_finish_watch_with_two_pools(two_pool_runs, tmp_path, capsys):
    """scripts/escalate_headroom.py on a finish-watch run over the two-pool cache: every family (the
    confidence threshold included) is checked at each finish, and evaluate.py lists the families."""
    from scripts.escalate_headroom import main as headroom

    cache, oneshot, _ = two_pool_runs
    rc = train.main(
        ["--config", str(ROOT / "configs" / "train_escalate_finish.yaml"), "--cache", str(cache), "--runs-dir",
         str(tmp_path), "--name", "fin", "--total-timesteps", "512", "--no-progress", "--hyperparams", *SMALL,
         "clone_floor=false", "gate=false"]
    )  # fmt: skip
    assert rc == 0
    capsys.readouterr()
    assert headroom(["--run", str(tmp_path / "fin"), "--compare-run", str(oneshot), "--orders", "1",
                     "--json", str(tmp_path / "h.json")]) == 0  # fmt: skip
    h = json.loads((tmp_path / "h.json").read_text())
    assert h["watch"] == "finish" and len(h["pools"]) == 2 and len(h["points"]) == 25
    assert set(h["rule_families"]) == {"adaptive_consistency", "esc", "k_agree", "score_threshold", "confidence",
                                       "cross_pool"}  # fmt: skip
    assert "rules watched at each finish: " in capsys.readouterr().out
    rc = evaluate.main(["--run", str(tmp_path / "fin"), "--out", str(tmp_path / "e"), "--grid", "2", "--orders", "1",
                        "--bootstrap", "0", "--no-plots", "--no-progress"])  # fmt: skip
    assert rc == 0
    listed = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("Rule families"))
    assert "confidence " in listed and "cross_pool " in listed


def test_rule_tuning_cli_refuses_a_folder_that_is_no_sequential_run(tmp_path, tiny_run, capsys):
    from policies.rule_tuning import main

    assert main(["--run", str(tmp_path)]) == 2
    assert main(["--run", str(tiny_run)]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 2 and all(x.startswith("error:") for x in err)
    assert "not a run folder" in err[0] and "one-shot run" in err[1]
    assert not (tiny_run / "rules.json").exists()
