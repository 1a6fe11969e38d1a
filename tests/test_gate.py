"""The static fallback and the gate (policies/gate.py, policies/gate_fit.py): the rule, its
serialisation, the export and the ONNX loader playing the fallback where the gate is closed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import evaluate
from env.outcomes import OutcomeTable
from evaluation.options import EvalOptions
from policies.baselines import TrainBestStaticPolicy
from policies.gate import Gate, LambdaRegions, StaticFallback, decide
from policies.gate_fit import GatedPolicy, crossfit_utility, shrink_gain
from policies.onnx_policy import OnnxPolicy
from policies.ppo import PPOPolicy, load_model


def run_rows(run, table):
    splits = json.loads((run / "splits.json").read_text())
    return {s: table.indices([q for q in splits[s] if q in table.qindex]) for s in ("train", "val", "test")}


def test_decide_opens_only_on_confident_gains():
    rng = np.random.default_rng(0)
    assert decide(0.05 + 0.01 * rng.standard_normal(300))["open"]
    assert not decide(np.zeros(300))["open"]  # never deviates: nothing to gain, stays closed
    assert not decide(-0.05 + 0.01 * rng.standard_normal(300))["open"]
    # a mean gain of +0.01 buried in noise of 0.3 on 100 queries is not evidence
    noisy = 0.3 * rng.standard_normal(100)
    noisy += 0.01 - noisy.mean()
    d = decide(noisy, confidence=0.9)
    assert d["gain"] == pytest.approx(0.01) and d["lower"] < 0 and not d["open"]
    assert decide(noisy, confidence=0.5)["open"]  # ... at 50% it would open


def test_regions_nearest_centre_in_log_lambda():
    r = LambdaRegions([0.0, 1e-4, 3.16e-4, 1e-3], [0.0, 0.1])
    assert r.index(0.0, 0.0) == (0, 0)
    assert r.index(1e-4, 0.1) == (1, 1)
    assert r.index(2e-4, 0.0) == (2, 0)  # log-nearest: 2e-4 is closer to 3.16e-4 than to 1e-4
    assert r.index(1.2e-5, 0.012) == (0, 0)  # below half a step above 0: still the λ = 0 cell
    assert r.index(1.0, 5.0) == (3, 1)  # beyond the grid: the last cell


def test_fallback_is_the_train_val_best_static(synthetic_cache):
    table = OutcomeTable(synthetic_cache)
    rows = np.arange(0, len(table.query_ids), 2)
    fb = StaticFallback.fit(table, rows)
    again = StaticFallback.from_dict(json.loads(json.dumps(fb.to_dict())))
    for lt, ls in [(0.0, 0.0), (1e-3, 0.05), (5e-3, 0.6), (0.1, 3.0)]:
        want = TrainBestStaticPolicy(rows).action(table, lt, ls)
        assert fb.action(lt, ls) == again.action(lt, ls) == want
        m = table.mask[rows].copy()
        m[:3, want] = False  # masked for three queries: the first legal action there, as StaticPolicy
        got = fb.choose(m, lt, ls)
        assert (got[3:] == want).all() and m[np.arange(len(m)), got].all()


def test_gate_roundtrip_and_gated_policy(tiny_run, synthetic_cache):
    table = OutcomeTable(synthetic_cache)
    gate = Gate.from_dict(json.loads((tiny_run / "gate.json").read_text()))
    assert Gate.from_dict(json.loads(json.dumps(gate.to_dict()))).to_dict() == gate.to_dict()
    rows = run_rows(tiny_run, table)
    pol = PPOPolicy(load_model(tiny_run / "best_model.zip", table))
    closed = Gate(gate.fallback, gate.regions, np.zeros_like(gate.open), gate.confidence, gate.shrinkage)
    opened = Gate(gate.fallback, gate.regions, np.ones_like(gate.open), gate.confidence, gate.shrinkage)
    for lt, ls in gate.regions.centres[::4]:
        fb = TrainBestStaticPolicy(np.concatenate([rows["train"], rows["val"]])).choose(
            table, rows["test"], lt, ls
        )
        assert (GatedPolicy(pol, closed).choose(table, rows["test"], lt, ls) == fb).all()
        want = pol.choose(table, rows["test"], lt, ls)
        assert (GatedPolicy(pol, opened).choose(table, rows["test"], lt, ls) == want).all()


def test_crossfit_shrinkage_follows_the_signal(synthetic_cache, tmp_path):
    """On the labelled synthetic cache the features carry each query's kind: the out-of-fold gain
    predicts held-out outcomes (α well above 0). With the features shuffled across queries they
    carry nothing, and α collapses towards 0 (a near-static policy)."""
    import yaml

    from env.allocate_env import EnvConfig
    from policies.observation import ObsEncoder

    table = OutcomeTable(synthetic_cache)
    cfg = yaml.safe_load(open("configs/train_default.yaml"))
    env = EnvConfig.from_dict(cfg["env"])
    rows = np.arange(len(table.query_ids))
    env.resolve_ranges(table, rows)
    enc = ObsEncoder.fit(table, rows, env)
    signal = crossfit_utility(table, enc, rows, env.to_dict(), cfg["ppo"], k=5)
    table.features = table.features[np.random.default_rng(0).permutation(len(rows))]
    enc = ObsEncoder.fit(table, rows, env)
    noise = crossfit_utility(table, enc, rows, env.to_dict(), cfg["ppo"], k=5)
    assert signal.alpha > 0.5 and noise.alpha < 0.5 * signal.alpha, (signal.alpha, noise.alpha)


def test_export_fallback_equals_evaluate_and_onnx_plays_it(tiny_run, synthetic_cache, tmp_path):
    """The export's fallback is evaluate's train+validation-best static at three λ points, and the
    ONNX policy plays it wherever the gate is closed (and the network's choice where it is open)."""
    res = evaluate.evaluate(EvalOptions(
        run=str(tiny_run), out=str(tmp_path / "e"), lambda_tokens=[0.0, 2e-3], lambda_seconds=[0.0, 0.3],
        plots=False, n_boot=200,
    ))  # fmt: skip
    doc = json.loads((tiny_run / "export" / "policy.json").read_text())
    gate = Gate.from_dict(doc["gate"])
    assert doc["gate"]["shrinkage"] == json.loads((tiny_run / "gate.json").read_text())["shrinkage"]
    table = OutcomeTable(synthetic_cache)
    rows = run_rows(tiny_run, table)["test"]
    three = [(0.0, 0.0), (2e-3, 0.0), (2e-3, 0.3)]
    for p in res["points"]:
        if (p["lambda_tokens"], p["lambda_seconds"]) in three:
            assert (
                doc["menu"][gate.fallback.action(p["lambda_tokens"], p["lambda_seconds"])]
                == p["static_trainval_best"]
            )
    # a copy of the export with the gate closed everywhere: the ONNX policy plays the fallback only
    closed = tmp_path / "closed"
    shutil.copytree(tiny_run / "export", closed)
    doc["gate"]["open"] = [[False] * len(r) for r in doc["gate"]["open"]]
    (closed / "policy.json").write_text(json.dumps(doc))
    shut, live = OnnxPolicy(closed), OnnxPolicy(tiny_run / "export")
    gated = load_model(tiny_run / "best_model.zip", table)
    shrink_gain(gated, gate.shrinkage)
    sb3 = PPOPolicy(gated)
    f, pt, m = table.features[rows], table.prompt_tokens[rows], table.mask[rows]
    for lt, ls in three:
        got = shut.act_index(f, pt, lt, ls, m)
        assert (got == gate.fallback.choose(m, lt, ls)).all()
        want = (
            gate.fallback.choose(m, lt, ls) if not gate.is_open(lt, ls) else sb3.choose(table, rows, lt, ls)
        )
        assert (live.act_index(f, pt, lt, ls, m) == want).all()
    # and with it open everywhere, the network decides (the shrunk actor, parity-checked at export)
    doc["gate"]["open"] = [[True] * len(r) for r in doc["gate"]["open"]]
    (closed / "policy.json").write_text(json.dumps(doc))
    for lt, ls in three:
        assert (OnnxPolicy(closed).act_index(f, pt, lt, ls, m) == sb3.choose(table, rows, lt, ls)).all()


def test_evaluate_reports_the_gate(tiny_run, tmp_path):
    res = evaluate.evaluate(
        EvalOptions(run=str(tiny_run), out=str(tmp_path / "e"), grid_n=3, plots=False, n_boot=200)
    )
    s = res["summary"]
    gate = json.loads((tiny_run / "gate.json").read_text())
    assert s["gate"]["ppo"]["open_share"] == gate["open_share"]
    for p in res["points"]:
        pols, g = p["policies"], p["gate"]["ppo"]
        fb = f"static:{p['static_trainval_best']}"
        if not g["open"]:
            assert pols["ppo_gated"] == pols[fb] and g["deviation_share"] == 0.0
        vs = p["vs_static_train_best"]["ppo_gated"]
        assert vs["diff"] == pytest.approx(
            pols["ppo_gated"]["utility"] - pols["static_train_best"]["utility"]
        )
        assert vs["ci90"][0] <= vs["diff"] + 1e-12 and vs["diff"] <= vs["ci90"][1] + 1e-12
        assert 0.0 <= vs["p_ge"] <= 1.0
    assert s["ppo_gated_ge_static_train_best"] == sum(
        p["ppo_gated_ge_static_train_best"] for p in res["points"]
    )
    assert "Gated (policies/gate.py)" in (tmp_path / "e" / "results.md").read_text()


def test_train_writes_and_logs_the_gate(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    gate = json.loads((tiny_run / "gate.json").read_text())
    assert gate["method"] == "crossfit" and 0.0 <= gate["shrinkage"] <= 1.0
    assert len(gate["evidence"]) == 25 and gate["open_share"] == np.mean(gate["open"])
    for e in gate["evidence"]:  # the rule: open iff the lower confidence bound of the gain is > 0
        # and the shipped policy's own validation deviations do not lose
        assert (
            e["open"] == (e["lower"] > 1e-9 and e["check_gain"] >= -1e-9) and e["lower"] <= e["gain"] + 1e-12
        )
    summary = json.loads((tiny_run / "train_summary.json").read_text())[-1]["gate"]
    assert summary["open_share"] == gate["open_share"] and summary["shrinkage"] == gate["shrinkage"]
    ea = EventAccumulator(str(tiny_run / "tb" / "PPO_1"))
    ea.Reload()
    (ev,) = ea.Scalars("ttc/gate/open_share")
    assert ev.value == pytest.approx(gate["open_share"]) and ev.step == 3072
    assert ea.Scalars("ttc/gate/shrinkage")[0].value == pytest.approx(gate["shrinkage"])


def test_export_evaluation_plays_the_same_gated_policy(tiny_run, tmp_path):
    """evaluate.py --export (the ONNX policy, its gate and its shrunk actor from policy.json) reports
    the same gated policy as the checkpoint with gate.json."""
    kw = {"grid_n": 3, "plots": False, "n_boot": 0}
    ck = evaluate.evaluate(EvalOptions(run=str(tiny_run), out=str(tmp_path / "c"), **kw))
    ex = evaluate.evaluate(
        EvalOptions(export=str(tiny_run / "export"), run=str(tiny_run), out=str(tmp_path / "x"), **kw)
    )
    for a, b in zip(ck["points"], ex["points"], strict=True):
        assert a["gate"] == b["gate"]
        assert a["policies"]["ppo_gated"]["share"] == b["policies"]["ppo_gated"]["share"]
        assert a["policies"]["ppo_gated"]["utility"] == pytest.approx(
            b["policies"]["ppo_gated"]["utility"], abs=1e-12
        )


@pytest.mark.parametrize(
    "setting, message",
    [
        ("gate_confidence=2", "gate_confidence must be a number in [0.5, 1)"),
        ("gate_folds=2", "gate_folds must be an integer >= 3"),
        ("gate=maybe", "gate must be"),
    ],
)
def test_bad_gate_settings(synthetic_cache, tmp_path, capsys, setting, message):
    import train

    rc = train.main(["--cache", str(synthetic_cache), "--runs-dir", str(tmp_path), "--name", "x",
                     "--no-progress", "--hyperparams", setting])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "x").exists()


def test_mlp_policy_gate_uses_validation_evidence(synthetic_cache, tmp_path):
    import train

    rc = train.main(["--cache", str(synthetic_cache), "--runs-dir", str(tmp_path), "--name", "m",
                     "--total-timesteps", "512", "--no-progress", "--hyperparams", "n_envs=2", "val_grid=2",
                     "ppo.policy=mlp", "ppo.utility_warm_start=false"])  # fmt: skip
    assert rc == 0
    gate = Gate.from_dict(json.loads((tmp_path / "m" / "gate.json").read_text()))
    splits = json.loads((tmp_path / "m" / "splits.json").read_text())
    assert gate.method == "validation" and gate.shrinkage is None
    assert all(e["n"] == len(splits["val"]) for e in gate.evidence)
    doc = json.loads((tmp_path / "m" / "export" / "policy.json").read_text())
    assert Gate.from_dict(doc["gate"]).to_dict() == gate.to_dict()


def test_fit_gate_check_keeps_a_region_closed():
    from policies.gate import fit_gate

    fb = StaticFallback(["a", "b"], np.array([0.5, 0.4]), np.array([1.0, 2.0]), np.array([1.0, 1.0]))
    regions = LambdaRegions([0.0, 0.1], [0.0])
    rng = np.random.default_rng(0)

    def gains(lt, ls):
        return 0.05 + 0.01 * rng.standard_normal(200)  # confident evidence everywhere

    def check(lt, ls):  # ... but the shipped policy's own deviations lose at λ_T = 0.1
        return np.full(50, -0.01 if lt > 0 else 0.02)

    assert fit_gate(fb, regions, gains).open.tolist() == [[True], [True]]
    gate = fit_gate(fb, regions, gains, check=check)
    assert gate.open.tolist() == [[True], [False]] and gate.evidence[1]["check_gain"] == pytest.approx(-0.01)
