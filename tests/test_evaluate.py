import csv
import json
from dataclasses import fields

import numpy as np
import pytest

import evaluate
from evaluation import bootstrap
from evaluation.options import EvalOptions
from tests.fixtures.synthetic_cache import make_synthetic_cache


@pytest.fixture(scope="module")
def evaluated(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    rc = evaluate.main(
        ["--run", str(tiny_run), "--out", str(out), "--json", str(out / "r.json"), "--grid", "3"]
    )
    assert rc == 0
    return out


def test_outputs_and_json_keys(evaluated):
    for name in ("results.csv", "results.md", "pareto_tokens.png", "pareto_seconds.png", "r.json"):
        assert (evaluated / name).stat().st_size > 0, name
    res = json.loads((evaluated / "r.json").read_text())
    for k in ("run", "model", "cache", "split", "n_queries", "menu", "grid", "points", "summary"):
        assert k in res
    assert res["split"] == "test" and len(res["points"]) == 9
    p = res["points"][0]
    assert (p["lambda_tokens"], p["lambda_seconds"]) == (0.0, 0.0)
    for k in (
        "policies",
        "best_static",
        "oracle_gap",
        "ppo_gap_share",
        "probe_router_gap_share",
        "ppo_ge_best_static",
        "ppo_ge_probe_router",
        "static_train_best",
        "ppo_ge_static_train_best",
        "ppo_vs_best_static",
    ):
        assert k in p
    vs = p["ppo_vs_best_static"]
    assert vs["ci90"][0] <= vs["ci90"][1] and 0.0 <= vs["p_ge"] <= 1.0
    assert vs["diff"] == pytest.approx(
        p["policies"]["ppo"]["utility"] - p["policies"][f"static:{p['best_static']}"]["utility"]
    )
    assert p["static_train_best"] in res["menu"]
    assert p["policies"]["static_train_best"] == p["policies"][f"static:{p['static_train_best']}"]
    for k in ("ppo_ge_static_train_best", "ppo_below_best_static_ci", "n_boot"):
        assert k in res["summary"]
    joint = res["summary"]["all_points_ge_best_static_p"]
    assert set(joint) == {"ppo", "ppo_gated", "probe_router", "probe_router_gated", "static_train_best"}
    # clearing every point in a resample implies clearing each one: never above any point's p_ge
    assert joint["ppo"] <= min(q["ppo_vs_best_static"]["p_ge"] for q in res["points"]) + 1e-12
    # the no-routing reference: the train-picked static is never above the hindsight best static
    for q in res["points"]:
        hindsight = q["policies"][f"static:{q['best_static']}"]["utility"]
        assert q["static_train_best_ge_best_static"] == (
            q["policies"]["static_train_best"]["utility"] >= hindsight - 1e-12
        )
        assert q["policies"]["static_train_best"]["utility"] <= hindsight + 1e-12
    assert res["summary"]["static_train_best_ge_best_static"] == sum(
        q["static_train_best_ge_best_static"] for q in res["points"]
    )
    for pol in ["ppo", "probe_router", "oracle", "random", "static_train_best"] + [
        f"static:{a}" for a in res["menu"]
    ]:
        m = p["policies"][pol]
        assert set(m) >= {"accuracy", "mean_tokens", "mean_seconds", "utility", "share"}
    for q in res["points"]:
        pols = q["policies"]
        assert pols["oracle"]["utility"] >= max(v["utility"] for v in pols.values()) - 1e-12
    rows = list(csv.DictReader(open(evaluated / "results.csv")))
    # ppo, probe_router, oracle, random, static_train_best, ppo_gated, probe_router_gated,
    # static_trainval_best and every static
    assert len(rows) == 9 * (8 + len(res["menu"]))
    assert sum(r["is_best_static"] == "True" for r in rows) == 9


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lambda-tokens", "-1"], "--lambda-tokens must be a finite number >= 0"),
        (["--lambda-seconds", "nan"], "--lambda-seconds must be a finite number >= 0"),
        (["--checkpoint", "/nonexistent.zip"], "checkpoint not found"),
    ],
)
def test_bad_input(tiny_run, capsys, extra, message):
    before = {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")}
    rc = evaluate.main(["--run", str(tiny_run), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0]
    assert {p: p.stat().st_mtime_ns for p in tiny_run.rglob("*")} == before


def test_checkpoint_on_other_menu(tiny_run, tmp_path, capsys):
    other = make_synthetic_cache(tmp_path / "k4", n_queries=40, k=4)
    ck = tiny_run / "checkpoints" / "ppo_2048_steps.zip"
    rc = evaluate.main(["--checkpoint", str(ck), "--cache", str(other), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "another action menu" in err and "pool:n=4/majority@4" in err
    assert not (tmp_path / "o").exists()


def test_checkpoint_evaluation(tiny_run, tmp_path):
    ck = tiny_run / "checkpoints" / "ppo_2048_steps.zip"
    res = evaluate.evaluate(EvalOptions(checkpoint=str(ck), out=str(tmp_path / "o"), grid_n=2, plots=False))
    assert res["model"] == str(ck) and res["summary"]["n_points"] == 4


def test_no_bootstrap(tiny_run, tmp_path):
    res = evaluate.evaluate(
        EvalOptions(run=str(tiny_run), out=str(tmp_path / "o"), grid_n=2, plots=False, n_boot=0)
    )
    assert res["summary"]["all_points_ge_best_static_p"] is None
    for p in res["points"]:
        vs = p["ppo_vs_best_static"]
        assert vs["ci90"] == [vs["diff"], vs["diff"]] and vs["p_ge"] == float(p["ppo_ge_best_static"])
    assert "every point" not in (tmp_path / "o" / "results.md").read_text()


def test_incomplete_queries_are_left_out(tmp_path):
    from rollouts.cache import CacheWriter, load_cache

    src = load_cache(make_synthetic_cache(tmp_path / "src", n_queries=60))
    meta = {k: v for k, v in src.meta.items() if k not in ("schema", "schema_version")}
    drop = set(src.query_ids[::5])  # these queries lack one beam config
    with CacheWriter(tmp_path / "c", meta=meta) as w:
        for q in src.queries.values():
            w.add_query(q)
        for r in src.records:
            if not (r["query_id"] in drop and r["config_id"] == "beam:N=4,M=2"):
                w.add_record(r)
    import train

    runs = tmp_path / "runs"
    args = [
        "--cache",
        str(tmp_path / "c"),
        "--runs-dir",
        str(runs),
        "--name",
        "m",
        "--total-timesteps",
        "512",
        "--no-progress",
    ]
    assert train.main([*args, "--hyperparams", "n_envs=2", "val_grid=2", "export=false"]) == 0
    res = evaluate.evaluate(EvalOptions(run=str(runs / "m"), which_model="final", grid_n=2, plots=False))
    test_ids = json.loads((runs / "m" / "splits.json").read_text())["test"]
    assert res["n_dropped_incomplete"] == len(drop & set(test_ids))
    assert res["n_queries"] == len(set(test_ids) - drop)


def test_bootstrap_vs_best_static():
    rng = np.random.default_rng(0)
    u = rng.random((200, 5))
    u[:, 2] += 0.3  # action 2 is the best static by far
    per_query_best = u.argmax(axis=1)
    hi = bootstrap.bootstrap_vs_best_static(u, per_query_best, n_boot=500, seed=1)
    assert hi["diff"] > 0 and hi["ci90"][0] > 0 and hi["p_ge"] == 1.0
    lo = bootstrap.bootstrap_vs_best_static(u, np.zeros(200, dtype=int), n_boot=500, seed=1)
    assert lo["diff"] < 0 and lo["ci90"][1] < 0 and lo["p_ge"] == 0.0
    # the share of resamples clearing every point: dominated choices never do, the best one always
    w = bootstrap.resample_weights(200, 500, seed=1)
    assert (bootstrap.resampled_diff_to_best_static(u, per_query_best, w) >= 0).all()
    assert (bootstrap.resampled_diff_to_best_static(u, np.zeros(200, dtype=int), w) < 0).all()
    again = bootstrap.bootstrap_vs_best_static(u, np.zeros(200, dtype=int), weights=w)
    assert again == lo  # passing the resamples equals drawing them from the same seed
    same = bootstrap.bootstrap_vs_best_static(u, np.full(200, 2), n_boot=500, seed=1)
    assert same["diff"] == 0.0 and same["ci90"][0] <= 0.0 <= same["ci90"][1] + 1e-12


def test_options_are_the_cli_flags():
    """evaluate(EvalOptions(...)) from Python is evaluate.py with the same flags: the defaults agree
    (progress aside: off from Python) and every flag reaches its field (without --no-progress, progress
    differs from its default too)."""
    parser = evaluate.make_parser()
    assert evaluate.options_from_args(parser.parse_args([])) == EvalOptions(progress=True)
    flags = ["--run", "r", "--checkpoint", "c.zip", "--model", "final", "--export", "x", "--trust-checkpoint",
             "--cache", "k", "--split", "val", "--grid", "3", "--lambda-tokens", "0", "1e-3", "--lambda-seconds",
             "0.5", "--seed", "7", "--bootstrap", "10", "--target-tokens", "60", "--target-seconds", "2",
             "--budget-split", "val", "--latency-load", "4", "--compare-run", "o", "--orders", "3", "--out", "d",
             "--json", "j.json", "--no-plots"]  # fmt: skip
    opts = evaluate.options_from_args(parser.parse_args(flags))
    default = EvalOptions()
    assert [f.name for f in fields(EvalOptions) if getattr(opts, f.name) == getattr(default, f.name)] == []
    assert (opts.which_model, opts.grid_n, opts.n_boot, opts.n_orders) == ("final", 3, 10, 3)


@pytest.mark.parametrize("cost", ["mean_tokens", "mean_seconds"])
def test_pareto_plot_is_readable(evaluated, cost):
    """The Pareto figure of a real evaluation: the shipped (gated) policy drawn, labels apart, every
    marker in the legend, the y-axis on the policies and statics (tests/test_output.py's checks)."""
    import matplotlib.pyplot as plt

    from evaluation import pareto
    from tests.test_output import check_pareto_figure

    res = json.loads((evaluated / "r.json").read_text())
    fig = pareto.draw_pareto(res, cost, list(pareto.ONESHOT), "title", "oracle")
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("gated" in lab for lab in labels)
    oracle_top = max(p["policies"]["oracle"]["accuracy"] for p in res["points"])
    check_pareto_figure(fig, oracle_above=oracle_top > fig.axes[0].get_ylim()[1])
    plt.close(fig)
