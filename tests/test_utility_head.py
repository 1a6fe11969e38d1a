"""The utility actor (``ppo.policy: utility``): λ decoded from the observation prices actions as the
reward does, the untrained actor plays the train split's best static config, the warm start learns
real signal, and save/load and ONNX export work unchanged."""

from pathlib import Path

import numpy as np
import pytest

from env.allocate_env import AllocateEnv
from env.outcomes import OutcomeTable
from env.splits import make_splits
from policies.export import export_policy
from policies.ppo import PPOPolicy, make_meta, make_model
from policies.trust import save_model
from policies.utility_head import utility_spec, warm_start_gain
from tests.fixtures import pre13_defaults as pre13

REAL_CACHE = Path(__file__).resolve().parents[1] / "data" / "default_cache"
LAMBDAS = [(0.0, 0.0), (1e-4, 0.0), (0.0, 0.05), (1e-3, 0.05), (3e-3, 0.5), (0.02, 2.0)]


@pytest.fixture(scope="module")
def table(synthetic_cache):
    return OutcomeTable(synthetic_cache)


def _utility_model(table, rank=0, ensemble=1, ppo_trains="all", **env_kw):
    from stable_baselines3.common.vec_env import DummyVecEnv

    env_kw.setdefault("reward_norm", "context")
    env_kw.setdefault("feature_pca", pre13.ENV["feature_pca"])
    e = AllocateEnv(table=table, **env_kw)
    venv = DummyVecEnv([lambda: e])
    splits = make_splits(table.query_ids, e.config.split_seed, e.config.split_fractions)
    train_rows = table.indices(splits["train"])
    spec = utility_spec(
        table,
        train_rows,
        e.encoder,
        e.config.to_dict(),
        beta=20.0,
        rank=rank,
        ensemble=ensemble,
        ppo_trains=ppo_trains,
    )
    cfg = pre13.ppo_config(policy="utility", n_steps=32, batch_size=32, utility_rank=rank)
    model = make_model(venv, cfg, 0, None, make_meta(table, e.encoder, e.config.to_dict()), utility_spec=spec)
    return model, e, splits


def _best_static_on(table, rows, lt, ls):
    """Per action: mean utility over ``rows`` with train-mean costs (what the untrained actor prices)."""
    m = table.mask[rows]
    cnt = np.maximum(m.sum(axis=0), 1)
    c = (table.correct[rows] * m).sum(axis=0) / cnt
    mt, ms = table.mean_costs(rows)
    return c - lt * np.nan_to_num(mt) - ls * np.nan_to_num(ms)


@pytest.mark.parametrize("rank", [0, 1])
def test_untrained_actor_plays_the_train_best_static(table, rank):
    model, e, splits = _utility_model(table, rank=rank)
    train_rows = table.indices(splits["train"])
    rows = np.arange(len(table.query_ids))
    pol = PPOPolicy(model)
    for lt, ls in LAMBDAS:
        want = _best_static_on(table, train_rows, lt, ls)
        got = pol.choose(table, rows, lt, ls)
        legal_best = [int(np.argmax(np.where(table.mask[r], want, -np.inf))) for r in rows]
        assert (got == np.array(legal_best)).all(), (lt, ls)


def test_penalties_decoded_from_the_observation(table):
    import torch

    model, e, _ = _utility_model(table)
    ext = model.policy.mlp_extractor
    feats, toks = table.features[:3], table.prompt_tokens[:3]
    for lt, ls in LAMBDAS:
        obs = torch.as_tensor(e.encoder.encode(feats, toks, lt, ls))
        lam = ext.penalties(obs).numpy()
        assert lam == pytest.approx(np.tile([lt, ls], (3, 1)), rel=1e-3, abs=1e-9)


def test_fixed_penalties_are_the_runs(table):
    import torch

    model, e, _ = _utility_model(table, penalty_mode="fixed", lambda_tokens=2e-3, lambda_seconds=0.1)
    obs = torch.as_tensor(e.encoder.encode(table.features[:2], table.prompt_tokens[:2]))
    assert model.policy.mlp_extractor.penalties(obs).numpy() == pytest.approx(np.array([[2e-3, 0.1]] * 2))


@pytest.mark.parametrize("rank", [0, 1])
def test_warm_start_fits_real_signal(table, rank):
    """The synthetic kinds are visible in the features: the fitted gains beat the train means on val."""
    model, e, splits = _utility_model(table, rank=rank)
    tr, va = (table.indices(splits[s]) for s in ("train", "val"))
    rep = warm_start_gain(model.policy, table, e.encoder, tr, va, seed=0)
    assert rep["val_mse"] < 0.8 * rep["val_mse_prior_only"]
    assert rep["train_mse"] < rep["val_mse_prior_only"]


@pytest.mark.parametrize("ensemble", [1, 3])
def test_save_load_and_onnx_parity(table, tmp_path, ensemble):
    model, e, splits = _utility_model(table, rank=1, ensemble=ensemble)
    warm_start_gain(
        model.policy, table, e.encoder, table.indices(splits["train"]), table.indices(splits["val"])
    )
    model.learn(64)
    path = tmp_path / "u.zip"
    save_model(model, path)  # recorded as trusted, as train.py's saves are
    loaded = PPOPolicy.load(path, table)
    rows = np.arange(len(table.query_ids))
    for lt, ls in LAMBDAS:
        assert (PPOPolicy(model).choose(table, rows, lt, ls) == loaded.choose(table, rows, lt, ls)).all()
    rep = export_policy(loaded.model, tmp_path / "export")
    assert rep["ok"] and rep["actions_equal"] == rep["n"]


@pytest.mark.skipif(not (REAL_CACHE / "meta.json").exists(), reason="bundled cache missing")
def test_warm_start_on_the_bundled_cache():
    """Difficulty is partly visible in the bundled cache's hidden-state features: the rank-1 gain
    lowers the validation MSE of per-action correctness below the train means' (0.195 -> ~0.13)."""
    table = OutcomeTable(REAL_CACHE)
    model, e, splits = _utility_model(table, rank=1, feature_pca=32)
    tr, va = (table.indices(splits[s]) for s in ("train", "val"))
    rep = warm_start_gain(model.policy, table, e.encoder, tr, va, seed=0)
    assert rep["val_mse"] < 0.85 * rep["val_mse_prior_only"]


def test_ppo_alone_learns_oracle_choice_on_easy_split(table):
    """No warm start: PPO's rewards alone teach the gain head the oracle's choice on clear-cut queries."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    from policies.baselines import OraclePolicy

    lt, ls = 1e-3, 0.05
    u = np.sort(table.utility(lt, ls), axis=1)
    easy = [q for q, c in zip(table.query_ids, (u[:, -1] - u[:, -2]) > 0.05, strict=True) if c]
    assert len(easy) >= 20
    kw = dict(split=easy, penalty_mode="fixed", lambda_tokens=lt, lambda_seconds=ls)
    envs = [AllocateEnv(**pre13.ENV, table=table, **kw) for _ in range(4)]
    rows = table.indices(easy)
    spec = utility_spec(table, rows, envs[0].encoder, envs[0].config.to_dict(), beta=20.0)
    model = make_model(
        DummyVecEnv([lambda e=e: e for e in envs]),
        pre13.ppo_config(policy="utility", learning_rate=1e-3, n_steps=64, batch_size=64),
        0,
        None,
        make_meta(table, envs[0].encoder, {}),
        utility_spec=spec,
    )
    before = PPOPolicy(model).choose(table, rows, lt, ls)
    model.learn(8192)
    oracle = OraclePolicy().choose(table, rows, lt, ls)
    got = PPOPolicy(model).choose(table, rows, lt, ls)
    assert (before == oracle).mean() < 0.8  # the train means alone do not already get there
    assert (got == oracle).mean() >= 0.8


def test_ensemble_members_fitted_apart_and_averaged(table):
    import torch

    model, e, splits = _utility_model(table, rank=1, ensemble=3)
    tr, va = (table.indices(splits[s]) for s in ("train", "val"))
    rep = warm_start_gain(model.policy, table, e.encoder, tr, va, seed=0)
    assert len(rep["epochs"]) == 3 and rep["val_mse"] < rep["val_mse_prior_only"]
    gain = model.policy.mlp_extractor.gain_net
    x = torch.as_tensor(e.encoder.encode_base(table.features[:5], table.prompt_tokens[:5]))
    with torch.no_grad():
        outs = [m(x) for m in gain.members]
        assert not torch.allclose(outs[0], outs[1])  # different starts, different fits
        assert torch.allclose(gain(x), torch.stack(outs).mean(dim=0))


def test_ppo_trains_response_keeps_the_traits(table):
    model, e, splits = _utility_model(table, rank=1, ppo_trains="response")
    tr, va = (table.indices(splits[s]) for s in ("train", "val"))
    warm_start_gain(model.policy, table, e.encoder, tr, va, seed=0)
    member = model.policy.mlp_extractor.gain_net.members[0]
    traits = [p.detach().clone() for layer in list(member)[:-1] for p in layer.parameters()]
    response = member[-1].weight.detach().clone()
    assert not any(p.requires_grad for layer in list(member)[:-1] for p in layer.parameters())
    model.learn(256)
    after = [p.detach() for layer in list(member)[:-1] for p in layer.parameters()]
    assert all((a == b).all() for a, b in zip(traits, after, strict=True))
    assert not (member[-1].weight.detach() == response).all()
