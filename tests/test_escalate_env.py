import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import env as _env  # noqa: F401  (registers ttc/Escalate-v0)
from env.allocate_env import AllocateEnv
from env.escalate_env import EscalateEnv
from env.escalate_menu import EscalateMenu
from env.outcomes import OutcomeTable
from env.seen import SEEN_FEATURES, SeenState
from rollouts.cache import CacheError, CacheWriter
from rollouts.errors import ConfigError
from rollouts.latency import Round
from rollouts.strategies.selectors import select
from tests.fixtures import pre13_defaults as pre13


@pytest.fixture(scope="module")
def table(synthetic_cache):
    return OutcomeTable(synthetic_cache)


@pytest.fixture(scope="module")
def unscored(tmp_path_factory):
    from tests.fixtures.synthetic_cache import make_synthetic_cache

    return OutcomeTable(
        make_synthetic_cache(tmp_path_factory.mktemp("c") / "unscored", n_queries=40, scores=False)
    )


@pytest.mark.parametrize(
    "kwargs", [{}, {"penalty_mode": "fixed", "lambda_tokens": 1e-3, "lambda_seconds": 0.1}]
)
def test_env_checkers(table, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(EscalateEnv(**pre13.ENV, table=table, **kwargs), skip_render_check=True)
    sb3_check_env(EscalateEnv(**pre13.ENV, table=table, **kwargs), warn=True)


def test_registered_make_and_same_encoding_as_allocate(synthetic_cache, table):
    e = gym.make("ttc/Escalate-v0", cache=str(synthetic_cache), split="val", **pre13.ENV)
    obs, info = e.reset(seed=3)
    assert obs.shape == e.observation_space.shape and obs.dtype == np.float32
    one = AllocateEnv(**pre13.ENV, table=table, split="val")
    obs1, info1 = one.reset(seed=3)
    # same query, same λ and the same encoding; the seen part starts empty
    assert info1["query_id"] == info["query_id"]
    np.testing.assert_array_equal(obs[: len(obs1)], obs1)
    assert np.all(obs[len(obs1) :] == 0) and len(obs) == len(obs1) + len(SEEN_FEATURES)


def run_episode(e, seed, policy):
    obs, info = e.reset(seed=seed)
    out = {"order": info["order"], "rewards": [], "obs": [obs]}
    done = False
    while not done:
        a = policy(e)
        obs, r, done, trunc, info = e.step(a)
        out["rewards"].append(r)
        out["obs"].append(obs)
    out["info"] = info
    return out


def greedy_policy(e):
    """Draw 1, 1, 2, ... until the pool is exhausted, then answer by majority."""
    m = e.action_masks()
    for k in (1, 2):
        i = e.menu.draw_index[k]
        if m[i]:
            return i
    return e.menu.stop_index["majority"]


def test_replay_same_seed_same_order_costs_reward(table):
    e1, e2 = EscalateEnv(**pre13.ENV, table=table), EscalateEnv(**pre13.ENV, table=table)
    a = run_episode(e1, 11, greedy_policy)
    b = run_episode(e2, 11, greedy_policy)
    assert a["order"] == b["order"] and a["rewards"] == b["rewards"]
    for k in ("tokens", "seconds", "utility", "widths", "query_id", "correct"):
        assert a["info"][k] == b["info"][k]
    assert all(np.array_equal(x, y) for x, y in zip(a["obs"], b["obs"], strict=True))
    c = run_episode(e1, 12, greedy_policy)
    assert (c["order"], c["info"]["query_id"]) != (a["order"], a["info"]["query_id"])


def test_costs_are_the_sum_of_rounds(table):
    e = EscalateEnv(**pre13.ENV, table=table, split="all", penalty_mode="fixed", lambda_tokens=1e-3, lambda_seconds=0.2)
    qid = table.query_ids[4]
    qi = table.qindex[qid]
    order = [3, 1, 7, 0, 2, 6, 5, 4]
    e.reset(seed=0, options={"query_id": qid, "order": order})
    steps = [
        e.menu.draw_index[1],
        e.menu.draw_index[2],
        e.menu.draw_index[4],
        e.menu.stop_index["best_score"],
    ]
    rewards = []
    for a in steps:
        _, r, done, _, info = e.step(a)
        rewards.append(r)
    assert done
    (pool,) = table.pool_records(qi, "pool:n=8")
    want_tok, want_sec, pos = 0.0, 0.0, 0
    for k in (1, 2, 4):
        idx = order[pos : pos + k]
        pos += k
        want_tok += float(pool.gen_tokens[idx].sum())
        want_sec += table.latency.round_seconds(
            Round(int(table.prompt_tokens[qi]), k, int(pool.gen_tokens[idx].max()))
        )
    want_tok += float(pool.scorer_tokens[order[:7]].sum())  # best_score reads the scorer
    assert info["tokens"] == pytest.approx(want_tok) and info["seconds"] == pytest.approx(want_sec)
    assert info["widths"] == [1, 2, 4] and info["rounds"] == 3 and info["samples"] == 7
    pick = order[select("best_score", [pool.keys[i] for i in order[:7]], [pool.scores[i] for i in order[:7]])]
    assert info["correct"] == pool.correct[pick]
    want_u = pool.correct[pick] - 1e-3 * want_tok - 0.2 * want_sec
    assert info["utility"] == pytest.approx(want_u) and sum(rewards) == pytest.approx(want_u)
    assert rewards[0] < 0 and rewards[1] < 0  # cost charged as incurred


def test_beam_after_samples_pays_both(table):
    e = EscalateEnv(**pre13.ENV, table=table, split="all", penalty_mode="fixed")
    qid = table.query_ids[7]
    qi = table.qindex[qid]
    e.reset(options={"query_id": qid, "order": list(range(8))})
    _, _, _, _, i1 = e.step(e.menu.draw_index[2])
    _, _, done, _, info = e.step(e.menu.beam_index["beam:N=4,M=2"])
    ((ok, tok, sec),) = table.search_outcomes(qi, "beam:N=4,M=2")
    (pool,) = table.pool_records(qi, "pool:n=8")
    assert done and info["beam"] and info["correct"] == ok
    assert info["tokens"] == pytest.approx(pool.gen_tokens[:2].sum() + tok)
    lat = table.latency.round_seconds(Round(int(table.prompt_tokens[qi]), 2, int(pool.gen_tokens[:2].max())))
    assert info["seconds"] == pytest.approx(lat + sec)


def test_masks(table, unscored):
    e = EscalateEnv(**pre13.ENV, table=table)
    e.reset(seed=0)
    m = e.action_masks()
    assert not any(m[i] for i in e.menu.stop_index.values())  # no answer before the first sample
    assert all(m[i] for i in e.menu.draw_index.values())
    e.step(e.menu.draw_index[4])
    m = e.action_masks()
    assert m[e.menu.draw_index[4]] and not m[e.menu.draw_index[8]]  # 4 left of 8
    assert all(m[i] for i in e.menu.stop_index.values())
    e.step(e.menu.draw_index[4])
    m = e.action_masks()
    assert not any(m[i] for i in e.menu.draw_index.values())  # exhausted: only stops and beams
    # no scores: the score selectors are never legal
    u = EscalateEnv(**pre13.ENV, table=unscored)
    u.reset(seed=0)
    u.step(u.menu.draw_index[1])
    m = u.action_masks()
    assert m[u.menu.stop_index["majority"]]
    assert not m[u.menu.stop_index["best_score"]] and not m[u.menu.stop_index["weighted"]]
    # an illegal action forfeits (no exception for unmasked samplers), never charged or rewarded
    u.reset(seed=1)
    _, r, done, _, info = u.step(u.menu.stop_index["majority"])
    assert done and info["illegal"] and r == 0.0 and info["correct"] == 0.0


def _cache(path, pool_k: int | None, beam: bool = True, latency: bool = True):
    meta = {"model": "synthetic", "note": "test fixture"}
    if latency:
        meta["latency_model"] = {"coef": [0.05, 1e-4, 0.01, 0.002]}
    with CacheWriter(path, meta=meta) as w:
        for i in range(30):
            w.add_query({"query_id": f"q{i}", "prompt_tokens": 20, "features": [float(i), 1.0]})
            if pool_k:
                samples = [{"answer": "1", "correct": True, "tokens": 5, "score": 0.5} for _ in range(pool_k)]
                w.add_record({
                    "query_id": f"q{i}", "config_id": f"pool:n={pool_k}", "strategy": "sample_pool",
                    "params": {}, "seed": 0, "tokens": 5 * pool_k, "scorer_tokens": 0, "seconds": None,
                    "seconds_source": "modelled", "samples": samples,
                })  # fmt: skip
            if beam:
                w.add_record({
                    "query_id": f"q{i}", "config_id": "beam:N=2,M=2", "strategy": "beam_search", "params": {},
                    "seed": 0, "tokens": 50, "scorer_tokens": 0, "seconds": 1.0 if latency else None,
                    "seconds_source": "modelled" if latency else "missing",
                    "iterations": [{"width": 2, "tokens": 50}],
                    "result": {"answer": "1", "correct": True},
                })  # fmt: skip
    return path


def test_bad_caches(tmp_path):
    with pytest.raises(CacheError, match="no sample_pool records"):
        EscalateEnv(**pre13.ENV, table=OutcomeTable(_cache(tmp_path / "nopool", None)))
    with pytest.raises(CacheError, match="pools of one sample"):
        EscalateEnv(**pre13.ENV, table=OutcomeTable(_cache(tmp_path / "one", 1)))
    with pytest.raises(ConfigError, match="draw_sizes"):
        EscalateEnv(**pre13.ENV, table=OutcomeTable(_cache(tmp_path / "two", 2)), draw_sizes=[1, 4])


def test_oneshot_actions_reachable_as_first_move(table):
    menu = EscalateMenu(table, EscalateEnv(**pre13.ENV, table=table).config)
    for a in table.menu:
        plan = menu.oneshot_plan(a)
        if a.race is not None:  # a race stops mid-round: no whole-round plan plays it
            assert plan is None, a.id
            continue
        assert plan is not None, a.id
    e = EscalateEnv(**pre13.ENV, table=table, split="all", penalty_mode="fixed")
    # draw@8 then stop:best_score is best_score@8 on that order
    qid = table.query_ids[2]
    e.reset(options={"query_id": qid})
    e.step(menu.draw_index[8])
    _, _, done, _, info = e.step(menu.stop_index["best_score"])
    (pool,) = table.pool_records(table.qindex[qid], "pool:n=8")
    assert done and info["correct"] == pool.correct[select("best_score", pool.keys, list(pool.scores))]


def test_seen_state_features():
    s = SeenState(8, True)
    s.add_round(["1", "2"], [10, 20], [0, 0], [0.9, 0.2], 1.0)
    s.add_round(["1", None], [30, 40], [0, 0], [0.5, 0.1], 2.0)
    out = np.zeros(len(SEEN_FEATURES), dtype=np.float32)
    from env.seen import SeenUnits

    s.features(SeenUnits(25.0, 100.0, 3.0, 8.0), out)
    want = [4 / 8, 2 / 4, 1 / 4, 2 / 8, 1 / 4, 0.7, 0.9, 1.0, 1.0, 1.0, 2 / 8]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert s.answer("majority") == 0 and s.answer("best_score") == 0


def test_cache_without_any_seconds_prices_tokens_only(tmp_path):
    t = OutcomeTable(_cache(tmp_path / "nolat", 4, latency=False))
    assert not t.latency_available
    with pytest.warns(UserWarning, match="λ_L is fixed at 0"):
        e = EscalateEnv(**pre13.ENV, table=t, split="all")
    e.reset(seed=0)
    e.step(e.menu.draw_index[2])
    _, _, done, _, info = e.step(e.menu.beam_index["beam:N=2,M=2"])
    assert done and info["seconds"] == 0.0 and info["lambda_seconds"] == 0.0 and info["tokens"] == 60.0
