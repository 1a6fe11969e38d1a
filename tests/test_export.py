import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from env.outcomes import OutcomeTable
from policies.export import export_policy, parity_check
from policies.onnx_policy import OnnxPolicy, OnnxPolicyError
from policies.ppo import PPOPolicy, load_model
from tests.fixtures import pre13_defaults as pre13

ROOT = Path(__file__).resolve().parents[1]


def test_run_export_written_and_parity(tiny_run):
    doc = json.loads((tiny_run / "export" / "policy.json").read_text())
    assert doc["parity"]["ok"] and doc["parity"]["actions_equal"] == doc["parity"]["n"]
    assert (tiny_run / "export" / "policy.onnx").is_file()
    # the shipped policy is the validation-best checkpoint, the one evaluate.py reports by default
    assert doc["source"]["model"] == "best_model.zip"
    assert doc["source"]["timesteps"] == json.loads((tiny_run / "best.json").read_text())["timesteps"]
    model = load_model(tiny_run / "best_model.zip")
    from policies.gate_fit import shrink_gain

    # the export ships the actor with its gain shrunk by the gate's α (policies/gate.py)
    shrink_gain(model, json.loads((tiny_run / "gate.json").read_text())["shrinkage"])
    rep = parity_check(model, tiny_run / "export" / "policy.onnx", n_check=256, seed=5)
    assert rep["ok"] and rep["max_abs_prob_diff"] < 1e-4


def test_export_cli(tiny_run, synthetic_cache, tmp_path, capsys):
    from policies import export

    out = tmp_path / "final"
    assert export.main([str(tiny_run / "final_model.zip"), str(out)]) == 0
    doc = json.loads((out / "policy.json").read_text())
    assert doc["parity"]["ok"] and doc["source"]["model"].endswith("final_model.zip")
    table = OutcomeTable(synthetic_cache)
    rows = np.arange(len(table.query_ids))
    want = PPOPolicy(load_model(tiny_run / "final_model.zip", table)).choose(table, rows, 1e-3, 0.05)
    got = OnnxPolicy(out).act_index(table.features, table.prompt_tokens, 1e-3, 0.05, table.mask)
    assert (got == want).all()
    before = (out / "policy.onnx").read_bytes()
    assert export.main([str(tiny_run / "best_model.zip"), str(out)]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (out / "policy.onnx").read_bytes() == before  # nothing overwritten
    assert export.main([str(tmp_path / "nope.zip"), str(tmp_path / "x")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / ".x.partial").exists()


def test_onnx_loader_matches_sb3_policy(tiny_run, synthetic_cache, tmp_path):
    table = OutcomeTable(synthetic_cache)
    model = load_model(tiny_run / "final_model.zip", table)
    export_policy(model, tmp_path / "exp")
    onnx_pol = OnnxPolicy(tmp_path / "exp")
    sb3_pol = PPOPolicy(model)
    rows = np.arange(len(table.query_ids))
    for lt, ls in [(0.0, 0.0), (1e-3, 0.05), (5e-3, 0.6)]:
        want = sb3_pol.choose(table, rows, lt, ls)
        got = [
            table.action_ids.index(
                onnx_pol.act(table.features[r], table.prompt_tokens[r], lt, ls, table.mask[r])
            )
            for r in rows
        ]
        assert (np.array(got) == want).all()
    batch = onnx_pol.act_index(table.features[:5], table.prompt_tokens[:5], 1e-3, 0.05)
    assert batch.shape == (5,)
    with pytest.raises(OnnxPolicyError, match="lambda_tokens"):
        onnx_pol.act(table.features[0], 30, -1.0, 0.0)
    with pytest.raises(OnnxPolicyError, match="features have length"):
        onnx_pol.act(table.features[0][:3], 30)


def test_onnx_loader_needs_no_sb3_or_torch(tiny_run, synthetic_cache):
    code = (
        "import sys, json\n"
        "from policies.onnx_policy import OnnxPolicy\n"
        f"p = OnnxPolicy({str(tiny_run / 'export')!r})\n"
        "print(p.act([0.0] * p.feature_dim, 30, 1e-3, 0.05))\n"
        "bad = [m for m in ('torch', 'stable_baselines3', 'sb3_contrib', 'gymnasium', 'env') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() in json.loads((tiny_run / "export" / "policy.json").read_text())["menu"]


def test_onnx_loader_with_pca(synthetic_cache, tmp_path):
    from stable_baselines3.common.vec_env import DummyVecEnv

    from env.allocate_env import AllocateEnv
    from policies.ppo import make_meta, make_model

    table = OutcomeTable(synthetic_cache)
    e = AllocateEnv(reward_norm="none", table=table, feature_pca=4)
    model = make_model(
        DummyVecEnv([lambda: e]),
        pre13.ppo_config(n_steps=32, batch_size=32),
        0,
        None,
        make_meta(table, e.encoder, e.config.to_dict()),
    )
    model.learn(128)
    export_policy(model, tmp_path / "exp")
    onnx_pol = OnnxPolicy(tmp_path / "exp")
    rows = np.arange(len(table.query_ids))
    want = PPOPolicy(model).choose(table, rows, 1e-3, 0.05)
    got = onnx_pol.act_index(table.features, table.prompt_tokens, 1e-3, 0.05, table.mask)
    assert (got == want).all()


def test_onnx_observation_is_the_envs_and_ppos(tiny_run, synthetic_cache):
    """One encoder: the ONNX loader, PPOPolicy and the env build the same observation, to the bit."""
    from env.allocate_env import AllocateEnv

    table = OutcomeTable(synthetic_cache)
    model = load_model(tiny_run / "best_model.zip", table)
    onnx_pol, ppo_pol = OnnxPolicy(tiny_run / "export"), PPOPolicy(model)
    meta = model.ttc_meta
    e = AllocateEnv(table=table, config=meta["env"], split="all", encoder=meta["encoder"])
    rows = np.arange(len(table.query_ids))
    for lt, ls in [(0.0, 0.0), (1e-3, 0.05), (7e-4, 0.3)]:
        want = ppo_pol.observations(table, rows, lt, ls)
        got = onnx_pol.observation(table.features, table.prompt_tokens, lt, ls)
        assert got.dtype == want.dtype == np.float32 and got.tobytes() == want.tobytes()
        for qi in (0, 9):
            obs, _ = e.reset(options={"query_id": table.query_ids[qi], "lambda_tokens": lt, "lambda_seconds": ls})
            assert obs.tobytes() == want[qi].tobytes()
