"""train.py with env.kind: escalate, then evaluate.py on the run (synthetic fixture caches: fast)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evaluate
import train
from policies.escalate_ppo import env_kind
from policies.ppo import read_meta
from tests.fixtures import pre13_defaults as pre13

ROOT = Path(__file__).resolve().parents[1]
ESC = str(ROOT / "configs" / "train_escalate.yaml")
SMALL = [
    "n_envs=4",
    "eval_freq=1024",
    "checkpoint_freq=1024",
    "val_grid=2",
    "ppo.n_steps=128",
    "ppo.batch_size=256",
]


def train_escalate(cache, runs, name, steps=2048):
    rc = train.main(
        ["--config", ESC, "--cache", str(cache), "--runs-dir", str(runs), "--name", name,
         "--total-timesteps", str(steps), "--no-progress", "--hyperparams", *SMALL]
    )  # fmt: skip
    assert rc == 0
    return Path(runs) / name


@pytest.fixture(scope="module")
def seq_run(tmp_path_factory, synthetic_cache):
    return train_escalate(synthetic_cache, tmp_path_factory.mktemp("runs"), "seq")


def test_run_folder_meta_and_tensorboard(seq_run):
    for f in ("config.yml", "splits.json", "best_model.zip", "final_model.zip", "export/policy.onnx"):
        assert (seq_run / f).exists(), f
    meta = read_meta(seq_run / "best_model.zip")
    assert env_kind(meta) == "escalate" and meta["escalate"]["step_menu"][0] == "draw@1"
    doc = json.loads((seq_run / "export" / "policy.json").read_text())
    assert doc["kind"] == "escalate" and doc["menu"] == meta["escalate"]["step_menu"]
    assert doc["parity"]["ok"]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ev = EventAccumulator(str(next((seq_run / "tb").glob("PPO_*"))))
    ev.Reload()
    tags = set(ev.Tags()["scalars"])
    for t in ("ttc/rounds", "ttc/samples", "ttc/beam_share", "ttc/utility", "ttc/val/utility"):
        assert t in tags, t
    assert any(t.startswith("ttc/stop/") for t in tags)


def test_evaluate_sequential_against_oneshot(seq_run, tiny_run, tmp_path):
    rc = evaluate.main(
        ["--run", str(seq_run), "--compare-run", str(tiny_run), "--json", str(tmp_path / "r.json"),
         "--out", str(tmp_path), "--grid", "2", "--orders", "3", "--bootstrap", "100"]
    )  # fmt: skip
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["kind"] == "escalate" and r["n_orders"] == 3 and len(r["points"]) == 4
    p = r["points"][0]
    for k in ("sequential", "oneshot_ppo", "oracle", "rule:adaptive_consistency", "rule:esc", "rule:k_agree"):
        assert k in p["policies"], k
    assert "rule:score_threshold" in p["policies"]  # the fixture's pools are scored
    # a one-shot policy played on the orders equals the static action it picked, query by query
    share = p["policies"]["oneshot_ppo"]["share"]
    if len(share) == 1:
        (a,) = share
        assert p["policies"]["oneshot_ppo"]["utility"] == pytest.approx(
            p["policies"][f"static:{a}"]["utility"]
        )
    # the oracle is never below the best static; the bars are reported
    for p in r["points"]:
        assert (
            p["policies"]["oracle"]["utility"]
            >= p["policies"][f"static:{p['best_static']}"]["utility"] - 1e-9
        )
        lo, hi = p["sequential_vs_oneshot_ppo"]["ci90"]
        assert lo <= p["sequential_vs_oneshot_ppo"]["diff"] <= hi
    assert set(r["summary"]["bars"]) == {
        "never_below_oneshot_ppo_90",
        "above_oneshot_ppo_90_at_40pct_of_points",
        "never_below_best_rule_90",
        "grid_mean_above_best_rule_90",
    }
    assert (tmp_path / "pareto_tokens.png").stat().st_size > 0 and (tmp_path / "results.md").exists()
    # the plots: one sweep per policy over λ, the statics labelled and apart
    import matplotlib.pyplot as plt

    from evaluation import pareto
    from tests.test_output import check_pareto_figure

    for cost in ("mean_tokens", "mean_seconds"):
        fig = pareto.draw_pareto(r, cost, pareto.sequential_sweeps(r), "title", "oracle")
        texts = {t.get_text() for t in fig.axes[0].texts}
        assert {k.removeprefix("static:").split("/")[-1] for k in p["policies"] if k.startswith("static:")} <= texts
        check_pareto_figure(fig, oracle_above=False)
        plt.close(fig)


def test_rules_and_statics_use_the_same_orders(synthetic_cache):
    from env.escalate_env import EscalateEnv
    from env.outcomes import OutcomeTable
    from policies.escalate_sim import Simulator, make_orders, plan_policy

    t = OutcomeTable(synthetic_cache)
    e = EscalateEnv(**pre13.ENV, table=t, split="test")
    orders, picks = make_orders(t, e.menu, e.rows, 4, seed=0)
    again, _ = make_orders(t, e.menu, e.rows[::-1], 4, seed=0)  # independent of the other queries
    assert all(np.array_equal(a, b) for a, b in zip(orders[0], again[-1], strict=True))
    sim = Simulator(t, e.menu, e.encoder, e.units, e.rows, orders, picks)
    ai = t.action_ids.index("pool:n=8/majority@8")
    res = sim.run(plan_policy([e.menu.oneshot_plan(t.menu[ai])]), 0.0, 0.0)
    # majority over all 8 samples does not depend on the order except for ties: within the table's value
    assert res.correct.mean() == pytest.approx(t.correct[e.rows, ai].mean(), abs=0.05)
    # the env replays the simulator's episode exactly
    qid = t.query_ids[int(e.rows[0])]
    e.reset(options={"query_id": qid, "order": orders[0][1], "lambda_tokens": 0.0, "lambda_seconds": 0.0})
    for a in e.menu.oneshot_plan(t.menu[ai]):
        _, _, done, _, info = e.step(a)
    assert info["tokens"] == res.tokens[0, 1] and info["seconds"] == pytest.approx(res.seconds[0, 1])


def test_unscored_cache_trains_and_evaluates(tmp_path):
    from tests.fixtures.synthetic_cache import make_synthetic_cache

    cache = make_synthetic_cache(tmp_path / "unscored", n_queries=80, scores=False)
    run = train_escalate(cache, tmp_path / "runs", "noscore", steps=1024)
    rc = evaluate.main(
        ["--run", str(run), "--json", str(tmp_path / "r.json"), "--grid", "2", "--orders", "2",
         "--bootstrap", "50", "--no-plots"]
    )  # fmt: skip
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    pols = r["points"][0]["policies"]
    assert "rule:score_threshold" not in pols and "rule:k_agree" in pols
    assert not any("best_score" in k or "weighted" in k for k in pols)
    for p in r["points"]:
        assert not any(
            k in p["policies"]["sequential"]["stop_share"] for k in ("stop:best_score", "stop:weighted")
        )


def _cli(args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_bad_input_one_error_line(tmp_path, seq_run):
    from tests.test_escalate_env import _cache

    for name, k, msg in (("nopool", None, "nothing to escalate"), ("one", 1, "pools of one sample")):
        cache = _cache(tmp_path / name, k)
        p = _cli(["train.py", "--config", ESC, "--cache", str(cache), "--runs-dir", str(tmp_path / "runs"),
                  "--name", name, "--no-progress"])  # fmt: skip
        assert p.returncode == 2, p.stderr[-2000:]
        lines = [x for x in p.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and msg in lines[0]
        assert not (tmp_path / "runs" / name).exists()  # nothing written
    p = _cli(
        ["evaluate.py", "--run", str(seq_run), "--compare-run", str(seq_run), "--out", str(tmp_path / "e")]
    )
    assert p.returncode == 2 and "one-shot" in p.stderr and not (tmp_path / "e").exists()


def test_warm_start_from_oneshot_run(tmp_path, synthetic_cache, tiny_run):
    rc = train.main(
        ["--config", ESC, "--cache", str(synthetic_cache), "--runs-dir", str(tmp_path), "--name", "ws",
         "--total-timesteps", "512", "--no-progress", "--hyperparams", *SMALL, f"warm_start_from={tiny_run}",
         "clone_floor=false"]
    )  # fmt: skip
    assert rc == 0
    clone = json.loads((tmp_path / "ws" / "train_summary.json").read_text())[-1]["clone_of_oneshot"]
    assert clone["samples"] > 0 and clone["agreement"] > 0.6
    # only a one-shot run can be cloned, and only into an escalate run
    assert train.main(["--cache", str(synthetic_cache), "--runs-dir", str(tmp_path), "--name", "bad",
                       "--hyperparams", f"warm_start_from={tiny_run}"]) == 2  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_compare_run_refuses_a_planted_zip(tmp_path, seq_run, tiny_run, capsys):
    """--compare-run unpickles a one-shot zip: one this user's train.py did not write is refused first."""
    from tests.fixtures.planted_checkpoint import plant

    marker = tmp_path / "PWNED"
    gift = plant(tiny_run / "best_model.zip", tmp_path / "gift.zip", marker)
    rc = evaluate.main(["--run", str(seq_run), "--compare-run", str(gift), "--out", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and str(gift) in err[0]
    assert "--trust-checkpoint" in err[0] and not marker.exists() and not (tmp_path / "e").exists()
