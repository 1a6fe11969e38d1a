from pathlib import Path

import numpy as np
import pytest

from env.allocate_env import AllocateEnv
from env.outcomes import OutcomeTable
from env.splits import make_splits
from policies.base import lambda_grid, score_choices
from policies.baselines import OraclePolicy, RandomPolicy, StaticPolicy, static_policies
from policies.ppo import (
    MenuMismatchError,
    PPOPolicy,
    check_menu,
    load_model,
    make_meta,
    make_model,
    read_meta,
)
from policies.probe_router import ProbeRouter
from policies.trust import save_model
from tests.fixtures import pre13_defaults as pre13

_DATA = Path(__file__).resolve().parents[1] / "data"
REAL_CACHE = next(
    (d for d in (_DATA / "default_cache", _DATA / "default_cache_partial") if (d / "meta.json").exists()),
    _DATA / "default_cache",
)
LAMBDAS = [(0.0, 0.0), (1e-3, 0.05), (3e-3, 0.5)]


@pytest.fixture(scope="module")
def table(synthetic_cache):
    return OutcomeTable(synthetic_cache)


def test_oracle_upper_bounds_statics_and_random(table):
    rows = np.arange(len(table.query_ids))
    for lt, ls in LAMBDAS:
        u_or = score_choices(table, rows, OraclePolicy().choose(table, rows, lt, ls), lt, ls)["utility"]
        for sp in static_policies(table):
            assert (
                score_choices(table, rows, sp.choose(table, rows, lt, ls), lt, ls)["utility"] <= u_or + 1e-12
            )
        a = RandomPolicy(0).choose(table, rows, lt, ls)
        assert table.mask[rows, a].all()
        assert score_choices(table, rows, a, lt, ls)["utility"] <= u_or


def test_static_falls_back_on_masked_query(tmp_path):
    from tests.test_outcomes import test_missing_config_is_masked

    test_missing_config_is_masked(tmp_path)
    t = OutcomeTable(tmp_path / "c")
    ai = t.action_ids.index("beam:N=4,M=2")
    a = StaticPolicy(ai, "beam").choose(t, np.arange(len(t.query_ids)), 0, 0)
    assert t.mask[np.arange(len(a)), a].all() and (a == ai).sum() == len(a) - 1
    assert StaticPolicy(ai, "beam").choose_one(t, "q0002") == t.action_ids[0]


def test_lambda_grid(table):
    g = lambda_grid(table, np.arange(len(table.query_ids)), 5)
    assert len(g["points"]) == 25 and g["points"][0] == (0.0, 0.0)
    tok, sec = table.cost_scale()
    assert g["lambda_tokens"][-1] * tok == pytest.approx(1.0, rel=1e-4)
    assert g["lambda_seconds"][-1] * sec == pytest.approx(1.0, rel=1e-4)


def test_probe_router(table):
    splits = make_splits(table.query_ids, 0)
    tr, va, te = (table.indices(splits[s]) for s in ("train", "val", "test"))
    router = ProbeRouter().fit(table, tr, va)
    p = router.predict_success(table, te)
    assert p.shape == (len(te), table.n_actions) and (p >= 0).all() and (p <= 1).all()
    # calibrated-ish: mean predicted success tracks mean realised success per action
    assert np.abs(p.mean(axis=0) - table.correct[te].mean(axis=0)).mean() < 0.12
    mt, _ = table.mean_costs(tr)
    assert router.mean_tokens == pytest.approx(mt)
    for lt, ls in LAMBDAS:
        a = router.choose(table, te, lt, ls)
        u = score_choices(table, te, a, lt, ls)["utility"]
        best_static = max(
            score_choices(table, te, sp.choose(table, te, lt, ls), lt, ls)["utility"]
            for sp in static_policies(table)
        )
        assert u >= best_static - 0.05  # the synthetic kinds are visible in the features


def _small_model(table, **env_kw):
    from stable_baselines3.common.vec_env import DummyVecEnv

    e = AllocateEnv(**pre13.ENV, table=table, **env_kw)
    venv = DummyVecEnv([lambda: e])
    return make_model(
        venv, pre13.ppo_config(n_steps=32, batch_size=32), 0, None, make_meta(table, e.encoder, e.config.to_dict())
    ), e


def test_save_load_predict_round_trip(table, tmp_path):
    model, e = _small_model(table)
    model.learn(256)
    path = tmp_path / "m.zip"
    save_model(model, path)  # what train.py does: the zip is recorded as trusted (policies/trust.py)
    assert read_meta(path)["menu"] == table.action_ids
    loaded = PPOPolicy.load(path, table)
    rows = np.arange(len(table.query_ids))
    for lt, ls in LAMBDAS:
        assert (PPOPolicy(model).choose(table, rows, lt, ls) == loaded.choose(table, rows, lt, ls)).all()
    assert loaded.choose_one(table, table.query_ids[0]) in table.action_ids


def test_menu_mismatch_is_refused(table, tmp_path):
    from tests.fixtures.synthetic_cache import make_synthetic_cache

    model, _ = _small_model(table)
    path = tmp_path / "m.zip"
    save_model(model, path)
    other = OutcomeTable(make_synthetic_cache(tmp_path / "k4", n_queries=8, k=4))
    with pytest.raises(
        MenuMismatchError, match="only in the model: .*pool:n=8.*only in the cache: .*pool:n=4"
    ):
        load_model(path, other)
    with pytest.raises(MenuMismatchError):
        check_menu(read_meta(path), other, "m.zip")


def _learn_and_match(table, rows_ids, lt, ls, steps, margin=0.05, lr=1e-3):
    """Train PPO with fixed penalties on these queries; share of clear-cut queries where it picks the oracle's action."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    envs = [
        AllocateEnv(**pre13.ENV, table=table, split=rows_ids, penalty_mode="fixed", lambda_tokens=lt, lambda_seconds=ls)
        for _ in range(4)
    ]
    venv = DummyVecEnv([lambda e=e: e for e in envs])
    model = make_model(
        venv,
        pre13.ppo_config(learning_rate=lr, n_steps=64, batch_size=64),
        0,
        None,
        make_meta(table, envs[0].encoder, {}),
    )
    model.learn(steps)
    rows = table.indices(rows_ids)
    oracle = OraclePolicy().choose(table, rows, lt, ls)
    got = PPOPolicy(model).choose(table, rows, lt, ls)
    return float((got == oracle).mean())


def _easy_ids(table, lt, ls, margin):
    u = np.sort(table.utility(lt, ls), axis=1)
    clear = (u[:, -1] - u[:, -2]) > margin
    return [q for q, c in zip(table.query_ids, clear, strict=True) if c]


def test_ppo_learns_oracle_choice_on_easy_split(table):
    lt, ls = 1e-3, 0.05
    easy = _easy_ids(table, lt, ls, 0.05)
    assert len(easy) >= 20
    assert _learn_and_match(table, easy, lt, ls, steps=8192) >= 0.8


@pytest.mark.slow
@pytest.mark.skipif(
    not (REAL_CACHE / "meta.json").exists(), reason="data/default_cache[_partial] not collected yet"
)
def test_ppo_learns_oracle_choice_on_real_cache():
    """On the real cache: the λ grid point with the most clear-cut queries (the oracle's best action
    beats the runner-up by >= 0.05 utility), at most 80 of them; PPO trained on them picks the oracle's action.

    On the menu of budgets and beams (``races=[]``): with the nine default races the chosen point is the
    same, λ = (2.2e-3, 0.25), but its clear-cut queries split over more near-equivalent actions (races
    of 4 and short pools) and the same PPO matched 0.61 of them in 24 576 steps, 0.71 in 49 152
    (measured); 0.85 on this menu. What this test checks is PPO's wiring on real features, not the menu."""
    table = OutcomeTable(REAL_CACHE, races=[])
    g = lambda_grid(table, np.arange(len(table.query_ids)), 5)
    lt, ls = max(g["points"], key=lambda p: len(_easy_ids(table, p[0], p[1], 0.05)))
    easy = _easy_ids(table, lt, ls, 0.05)[:80]
    assert len(easy) >= 10, "the real cache has too few clear-cut queries"
    assert _learn_and_match(table, easy, lt, ls, steps=24576) >= 0.8
