import math
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import env as _env  # noqa: F401  (registers ttc/Allocate-v0)
from env.allocate_env import AllocateEnv
from env.outcomes import OutcomeTable
from env.splits import make_splits, split_of
from rollouts.errors import ConfigError
from tests.fixtures import pre13_defaults as pre13


@pytest.fixture(scope="module")
def table(synthetic_cache):
    return OutcomeTable(synthetic_cache)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"penalty_mode": "fixed", "lambda_tokens": 1e-3, "lambda_seconds": 0.1},
        {"outcome": "sampled"},
    ],
)
def test_env_checkers(table, kwargs):
    e = AllocateEnv(**pre13.ENV, table=table, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no checker warning either
        gym_check_env(e, skip_render_check=True)
    sb3_check_env(AllocateEnv(**pre13.ENV, table=table, **kwargs), warn=True)


def test_registered_make(synthetic_cache):
    e = gym.make("ttc/Allocate-v0", cache=str(synthetic_cache), split="val", **pre13.ENV)
    obs, info = e.reset(seed=0)
    assert obs.dtype == np.float32 and obs.shape == e.observation_space.shape
    obs, r, term, trunc, info = e.step(0)
    assert term and not trunc
    for k in ("is_success", "tokens", "seconds", "action_id", "correct", "utility"):
        assert k in info


def test_reward_and_options(table):
    e = AllocateEnv(**pre13.ENV, table=table, split="all")
    qid = table.query_ids[5]
    obs, info = e.reset(seed=1, options={"query_id": qid, "lambda_tokens": 1e-3, "lambda_seconds": 0.5})
    assert info["query_id"] == qid
    ai = table.action_ids.index("pool:n=8/majority@4")
    _, r, term, trunc, info = e.step(ai)
    qi = table.qindex[qid]
    want = table.correct[qi, ai] - 1e-3 * table.tokens[qi, ai] - 0.5 * table.seconds[qi, ai]
    assert r == pytest.approx(want) and term and not trunc
    assert info["action_id"] == "pool:n=8/majority@4" and info["is_success"] == (table.correct[qi, ai] >= 0.5)
    with pytest.raises(ConfigError):
        e.step(ai)  # finished episode


def test_penalty_encoding(table):
    e = AllocateEnv(**pre13.ENV, table=table)
    hi = e.config.lambda_tokens_range[1]
    obs, _ = e.reset(options={"lambda_tokens": 0.0, "lambda_seconds": e.config.lambda_seconds_range[1]})
    assert obs[-2] == pytest.approx(-1.0, abs=1e-5) and obs[-1] == pytest.approx(1.0, abs=1e-5)
    obs, _ = e.reset(options={"lambda_tokens": hi, "lambda_seconds": 0.0})
    assert obs[-2] == pytest.approx(1.0, abs=1e-5) and obs[-1] == pytest.approx(-1.0, abs=1e-5)
    fixed = AllocateEnv(**pre13.ENV, table=table, penalty_mode="fixed")
    assert fixed.observation_space.shape[0] == e.observation_space.shape[0] - 2


def test_sampled_penalties_cover_zero_and_range(table):
    e = AllocateEnv(**pre13.ENV, table=table)
    e.reset(seed=0)
    lams = []
    for _ in range(2000):
        e.reset()
        lams.append(e._lam)
    lt = np.array(lams)[:, 0]
    assert 0.15 < (lt == 0).mean() < 0.35
    lo, hi = e.config.lambda_tokens_range
    assert lt[lt > 0].min() >= lo and lt.max() <= hi


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), "x"])
def test_bad_lambda(table, bad):
    with pytest.raises(ConfigError, match="lambda_tokens"):
        AllocateEnv(**pre13.ENV, table=table, penalty_mode="fixed", lambda_tokens=bad)
    e = AllocateEnv(**pre13.ENV, table=table)
    with pytest.raises(ConfigError, match="lambda_seconds"):
        e.reset(options={"lambda_seconds": bad})


def test_unknown_key(table):
    with pytest.raises(ConfigError, match="unknown config key env.lamda_tokens"):
        AllocateEnv(**pre13.ENV, table=table, lamda_tokens=0.1)


def test_masks(tmp_path):
    from tests.test_outcomes import test_missing_config_is_masked

    test_missing_config_is_masked(tmp_path)
    t = OutcomeTable(tmp_path / "c")
    e = AllocateEnv(**pre13.ENV, table=t, split="all")
    e.reset(options={"query_id": "q0002"})
    m = e.action_masks()
    ai = t.action_ids.index("beam:N=4,M=2")
    assert m.dtype == bool and not m[ai] and m.sum() == t.n_actions - 1
    with pytest.raises(ConfigError, match="not available"):
        e.step(ai)


def test_splits_deterministic_disjoint_no_leakage(table):
    ids = table.query_ids
    s1 = make_splits(ids, seed=0)
    s2 = make_splits(list(reversed(ids)), seed=0)
    for k in ("train", "val", "test"):
        assert sorted(s1[k]) == sorted(s2[k])
    assert set(s1["train"]).isdisjoint(s1["val"]) and set(s1["train"]).isdisjoint(s1["test"])
    assert set(s1["val"]).isdisjoint(s1["test"])
    assert sorted(s1["train"] + s1["val"] + s1["test"]) == sorted(ids)
    assert split_of(ids[0], 0, (0.7, 0.15, 0.15)) in ("train", "val", "test")
    assert make_splits(ids, seed=1)["train"] != s1["train"]
    # features are standardised with train statistics only
    e = AllocateEnv(**pre13.ENV, table=table, split="test", splits=s1)
    rows = table.indices(s1["train"])
    assert np.allclose(e.encoder.mean[:-1], table.features[rows].mean(axis=0))
    # an env only ever shows its own split's queries
    seen = set()
    for _ in range(300):
        seen.add(e.reset()[1]["query_id"])
    assert seen <= set(s1["test"])
    with pytest.raises(ConfigError):
        make_splits(ids, fractions=(0.5, 0.5, 0.5))


def test_cycle_env_visits_every_pair(table):
    grid = [(0.0, 0.0), (1e-3, 0.1)]
    e = AllocateEnv(**pre13.ENV, table=table, split="val", cycle=True, eval_lambdas=grid)
    pairs = set()
    for _ in range(e.n_episodes_per_cycle):
        _, info = e.reset()
        pairs.add((info["query_id"], e._lam))
    assert len(pairs) == e.n_episodes_per_cycle == len(e.rows) * 2


def test_sampled_outcome_is_seeded(table):
    def run(seed):
        e = AllocateEnv(**pre13.ENV, table=table, outcome="sampled")
        e.reset(seed=seed)
        out = []
        for _ in range(50):
            e.reset()
            out.append(e.step(7)[1])
        return out

    assert run(3) == run(3)
    assert not math.isclose(sum(run(3)), sum(run(4)))


def test_feature_pca_encoder(table):
    e = AllocateEnv(reward_norm="none", table=table, feature_pca=3)
    assert e.observation_space.shape == (3 + 1 + 2,)
    assert e.encoder.pca.shape == (3, table.feature_dim)
    rows = e.rows
    z = e.encoder.encode_base(table.features[rows], table.prompt_tokens[rows])
    assert np.allclose(z[:, :3].std(axis=0), 1.0, atol=1e-3)  # unit variance on train
    gym_check_env(e, skip_render_check=True)
    with pytest.raises(ConfigError, match="feature_pca"):
        AllocateEnv(reward_norm="none", table=table, feature_pca=0)


def test_split_rows_keeps_the_split_order_and_leaves_out_unknown_ids(table):
    from env.splits import split_rows

    ids = list(table.query_ids)
    splits = {"train": [ids[5], "not-in-this-cache", ids[2]], "val": [], "test": ids[:3]}
    assert split_rows(table, splits, "train").tolist() == [5, 2]
    assert split_rows(table, splits, "val").tolist() == []
    assert split_rows(table, splits, "test").tolist() == [0, 1, 2]
    e = AllocateEnv(table=table, split="val")
    assert e.rows.tolist() == split_rows(table, e.splits, "val").tolist()


def test_public_episode_state(table):
    from env.splits import split_rows

    e = AllocateEnv(table=table)
    e.reset(seed=3)
    for _ in range(20):
        _, info = e.reset()
        assert table.query_ids[e.query_row] == info["query_id"]
        assert (e.action_masks() == table.mask[e.query_row]).all()
    assert e.cost_scale == table.cost_scale(split_rows(table, e.splits, "train"))
    # draw_lambdas is reset's draw: from the same generator state after the query pick, the same λ
    for seed in range(5):
        e.reset(seed=seed)
        want = e._lam
        gym.Env.reset(e, seed=seed)
        e.np_random.integers(len(e.rows))
        assert e.draw_lambdas() == want
    fixed = AllocateEnv(table=table, penalty_mode="fixed", lambda_tokens=1e-3, lambda_seconds=0.2)
    assert fixed.draw_lambdas() == (1e-3, 0.2)


def test_observation_is_the_shared_encoders(table):
    """The env's observation is ObsEncoder.encode of the query's raw features and λ, to the bit."""
    e = AllocateEnv(table=table, feature_pca=3)
    for qi, lt, ls in [(0, 0.0, 0.0), (7, 1e-3, 0.05), (11, 3e-4, 0.0)]:
        obs, _ = e.reset(options={"query_id": table.query_ids[qi], "lambda_tokens": lt, "lambda_seconds": ls})
        want = e.encoder.encode(table.features[qi], table.prompt_tokens[qi], lt, ls)[0]
        assert obs.dtype == want.dtype == np.float32 and obs.tobytes() == want.tobytes()
    lts, lss = np.array([0.0, 1e-3, 2e-2]), np.array([0.5, 0.0, 1e-4])
    batch = e.encoder.encode(table.features[:3], table.prompt_tokens[:3], lts, lss)
    assert batch[:, -2:].tolist() == [list(np.float32(e.encoder.penalty_pair(a, b))) for a, b in zip(lts, lss)]


def test_reward_divisor(table):
    from env.penalties import reward_divisor

    e = AllocateEnv(table=table, reward_norm="context", reward_norm_floor=0.5)
    c_t, c_l = e.cost_scale
    assert reward_divisor(e.config, (2.0, 3.0), e.cost_scale) == 0.5 + 2.0 * c_t + 3.0 * c_l
    assert reward_divisor(AllocateEnv(table=table, reward_norm="none").config, (2.0, 3.0), e.cost_scale) == 1.0
