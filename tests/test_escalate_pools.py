"""ttc/Escalate-v0 on a cache with several pools per query (two 8-sample sources made from the bundled
cache's 16-sample pools, tests/fixtures/two_pool_cache.py): the step menu draws from each, an episode
sees each pool's answers, the cross-pool stopping rule, and one-pool menus unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from env.escalate_env import EscalateEnv
from env.escalate_menu import EscalateMenu, pool_labels
from env.outcomes import OutcomeTable
from env.seen import SEEN_FEATURES, SeenState, SeenUnits, pool_features
from rollouts.errors import ConfigError
from tests.fixtures import pre13_defaults as pre13

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "data" / "default_cache"
A, B = "pool:n=8,source=a", "pool:n=8,source=b"
pytestmark = pytest.mark.skipif(not (BUNDLED / "meta.json").exists(), reason="bundled cache missing")


@pytest.fixture(scope="module")
def two_pool_table(tmp_path_factory):
    from tests.fixtures.two_pool_cache import make_two_pool_cache

    cache = make_two_pool_cache(BUNDLED, tmp_path_factory.mktemp("pools") / "cache", n_queries=24)
    return OutcomeTable(cache)


def test_the_step_menu_draws_from_both_pools(two_pool_table):
    t = two_pool_table
    e = EscalateEnv(**pre13.ENV, table=t, split="all")
    menu = e.menu
    assert menu.pool_configs == [A, B] and [p.label for p in menu.pools] == ["a", "b"]
    draws = [a for a in menu.ids if a.startswith("draw@")]
    assert draws == [f"draw@{k}:{s}" for s in "ab" for k in (1, 2, 4, 8)]
    assert menu.draw_index == menu.pool_draw_index[0] and menu.total_size == 16
    for a in t.menu:  # every pool's one-shot actions are first moves
        plan = menu.oneshot_plan(a)
        if a.race is not None:
            assert plan is None
            continue
        assert plan is not None, a.id
        if a.is_pool:
            first = menu.actions[plan[0]]
            assert first.kind == "draw" and first.k == a.n and menu.pool_configs[first.pool] == a.config_id
    n_seen = len(SEEN_FEATURES) + len(pool_features(2))
    assert e.observation_space.shape == (e.encoder.dim + n_seen,) and len(pool_features(2)) == 5
    back = EscalateMenu.from_dict(menu.to_dict())  # as stored in a checkpoint / an export
    assert back.ids == menu.ids and back.pool_configs == menu.pool_configs and back.pool_draw_index == menu.pool_draw_index


def test_an_episode_drawing_from_both_pools_sees_both(two_pool_table):
    t = two_pool_table
    e = EscalateEnv(**pre13.ENV, table=t, split="all", penalty_mode="fixed")
    m = e.menu
    qid = t.query_ids[3]
    orders = [[7, 6, 5, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5, 6, 7]]
    obs, info = e.reset(options={"query_id": qid, "order": orders})
    assert info["order"] == orders
    e.step(m.ids.index("draw@2:a"))
    obs, _, done, _, _ = e.step(m.ids.index("draw@4:b"))
    st = e._ep.state
    (ra,), (rb,) = t.pool_records(t.qindex[qid], A), t.pool_records(t.qindex[qid], B)
    assert not done and st.pool_drawn == [2, 4] and st.pool_launched == [2, 4] and st.drawn == 6
    assert st.keys == [ra.keys[7], ra.keys[6]] + rb.keys[:4]
    seen = obs[e.encoder.dim :]
    n_base = len(SEEN_FEATURES)
    assert seen[0] == pytest.approx(6 / 16)  # drawn share of all the pools' samples
    assert seen[n_base] == pytest.approx(2 / 8) and seen[n_base + 2] == pytest.approx(4 / 8)
    leaders = st.pool_leaders()
    agree = leaders[0][0] is not None and leaders[0][0] == leaders[1][0]
    assert seen[n_base + 4] == float(agree) == float(st.pools_agree())
    mask = e.action_masks()
    assert not mask[m.ids.index("draw@8:a")] and mask[m.ids.index("draw@4:a")]  # 6 of pool a left
    assert not mask[m.ids.index("draw@8:b")] and mask[m.ids.index("draw@4:b")]
    _, _, done, _, info = e.step(m.stop_index["majority"])
    from rollouts.strategies.selectors import select

    pick = select("majority", st.keys, None)
    want = ra.correct[[7, 6][pick]] if pick < 2 else rb.correct[pick - 2]
    assert done and info["correct"] == float(want) and info["samples"] == 6


def test_the_cross_pool_rule_stops_when_the_pools_agree():
    from policies.stopping_rules import Rule, next_draw, should_stop

    class Menu:  # the parts of a two-pool step menu a rule reads
        pools = [object(), object()]
        pool_draw_index = [{1: 0, 2: 1}, {1: 2, 2: 3}]
        draw_index = pool_draw_index[0]

    rule = Rule("cross_pool", 1, "ones", "majority", 8)
    st = SeenState([4, 4], False)
    assert not should_stop(rule, st) and next_draw(rule, Menu, st) == 0  # pool 0 first
    st.add_round(["7"], [10], [0], None, 0.0, pool=0)
    assert not should_stop(rule, st) and next_draw(rule, Menu, st) == 2  # then pool 1
    st.add_round(["8"], [10], [0], None, 0.0, pool=1)
    assert not should_stop(rule, st) and next_draw(rule, Menu, st) == 0  # disagree: alternate on
    st.add_round(["8"], [10], [0], None, 0.0, pool=0)  # pool 0: 7, 8 (leader 7, the first counted)
    assert not should_stop(rule, st)
    st.add_round(["7"], [10], [0], None, 0.0, pool=1)  # pool 1: 8, 7 (leader 8)
    assert not should_stop(rule, st)
    st.add_round(["8"], [10], [0], None, 0.0, pool=0)  # pool 0 now leads with 8: both pools say 8
    assert st.pools_agree() and should_stop(rule, st)
    assert not st.pools_agree(2) and not should_stop(Rule("cross_pool", 2, "ones", "majority", 8), st)
    assert should_stop(Rule("cross_pool", 3, "ones", "majority", 5), st)  # the cap
    wide = Rule("cross_pool", 1, "twos", "majority", 8)
    fresh = SeenState([4, 4], False)
    assert next_draw(wide, Menu, fresh) == 1  # draw@2 of pool 0
    single = SeenState(4, False)  # one pool: never "agree"
    single.add_round(["7", "7"], [1, 1], [0, 0], None, 0.0)
    assert not single.pools_agree()


def test_one_pool_menus_are_unchanged(two_pool_table, synthetic_cache):
    """A one-pool cache (or env.pools: primary on a two-pool one): ids draw@k, the observation of
    before, the stored menu as before (no pools, no pool per action), and a menu stored before pools
    existed loads."""
    t = OutcomeTable(synthetic_cache)
    e = EscalateEnv(**pre13.ENV, table=t)
    assert all(a.id == f"draw@{a.k}" for a in e.menu.actions if a.kind == "draw")
    assert e.observation_space.shape == (e.encoder.dim + len(SEEN_FEATURES),)
    d = e.menu.to_dict()
    assert "pools" not in d and all("pool" not in a for a in d["actions"])
    old = {"pool_config": "pool:n=8", "pool_size": 8, "has_scores": True, "actions": [
        {"id": "draw@1", "kind": "draw", "k": 1, "selector": None, "config_id": None},
        {"id": "draw@8", "kind": "draw", "k": 8, "selector": None, "config_id": None},
        {"id": "stop:majority", "kind": "stop", "k": 0, "selector": "majority", "config_id": None},
    ]}  # fmt: skip
    menu = EscalateMenu.from_dict(old)
    assert menu.to_dict() == old and menu.draw_index == {1: 0, 8: 1} and menu.pool_configs == ["pool:n=8"]
    primary = EscalateEnv(**pre13.ENV, table=two_pool_table, pools="primary")
    assert primary.menu.pool_configs == [A] and "draw@8" in primary.menu.ids
    assert primary.observation_space.shape == (primary.encoder.dim + len(SEEN_FEATURES),)
    pinned = EscalateEnv(**pre13.ENV, table=two_pool_table, pool_config=B)
    assert pinned.menu.pool_configs == [B]
    from env.allocate_env import stored_env_dict

    # a run stored before pools existed drew from the largest pool: read back as pools: primary
    assert stored_env_dict({"kind": "escalate"})["pools"] == "primary"
    assert stored_env_dict({"kind": "escalate", "pools": "all"})["pools"] == "all"
    listed = EscalateEnv(**pre13.ENV, table=two_pool_table, pools=[B, A])
    assert listed.menu.pool_configs == [B, A] and listed.menu.ids[0] == "draw@1:b"


def test_pool_settings_are_checked(two_pool_table):
    with pytest.raises(ConfigError, match="env.pools entry 'pool:n=8,source=c'"):
        EscalateEnv(**pre13.ENV, table=two_pool_table, pools=[A, "pool:n=8,source=c"])
    with pytest.raises(ConfigError, match="env.pools must be"):
        EscalateEnv(**pre13.ENV, table=two_pool_table, pools="some")
    with pytest.raises(ConfigError, match="pins one pool"):
        EscalateEnv(**pre13.ENV, table=two_pool_table, pools=[A, B], pool_config=A)
    assert pool_labels(["pool:n=8,source=a", "pool:n=8,source=b"]) == ["a", "b"]
    assert pool_labels(["pool:n=8,t=0.7", "pool:n=16,t=1.0"]) == ["8,0.7", "16,1.0"]
    assert pool_labels(["pool:x=a b", "pool:x=c d"]) == ["p0", "p1"]


def test_each_pool_has_its_own_seeded_order(two_pool_table):
    """Common random numbers: the first pool's orders are those of a one-pool menu of that pool, the
    second pool's come from their own generator, and a query's orders do not depend on the others."""
    from policies.escalate_sim import Simulator, make_orders
    from policies.stopping_rules import rule_grid, simulate_rules

    t = two_pool_table
    both = EscalateEnv(**pre13.ENV, table=t, split="all")
    one = EscalateEnv(**pre13.ENV, table=t, split="all", pools="primary")
    rows = both.rows[:6]
    orders, picks = make_orders(t, both.menu, rows, 3, seed=1)
    single, picks1 = make_orders(t, one.menu, rows, 3, seed=1)
    assert np.array_equal(picks, picks1)
    for i in range(len(rows)):
        for r in range(3):
            assert np.array_equal(orders[i][r][0], single[i][r])
            assert sorted(orders[i][r][1]) == list(range(8))
    assert any(not np.array_equal(orders[i][r][0], orders[i][r][1]) for i in range(len(rows)) for r in range(3))
    again, _ = make_orders(t, both.menu, rows[::-1], 3, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip(again[-1][0], orders[0][0], strict=True))
    sim = Simulator(t, both.menu, both.encoder, both.units, rows, orders, picks)
    grid = rule_grid(both.menu)
    assert "cross_pool" in grid and "cross_pool" not in rule_grid(one.menu)
    res = simulate_rules(sim, grid["cross_pool"][:2])[0]
    use = res.summary(0.0, 0.0)
    assert set(use["pool_samples"]) == {"a", "b"} and use["pool_episode_share"] == {"a": 1.0, "b": 1.0}
    (k_agree,) = simulate_rules(sim, grid["k_agree"][:1])  # the single-pool families: the primary pool only
    assert k_agree.pool_samples is not None and k_agree.pool_samples[..., 1].sum() == 0


def test_seen_units_cover_every_pool(two_pool_table):
    from env.seen import fit_units

    e = EscalateEnv(**pre13.ENV, table=two_pool_table)
    assert isinstance(e.units, SeenUnits) and e.units.max_rounds == 16.0
    one = EscalateEnv(**pre13.ENV, table=two_pool_table, pools="primary")
    assert fit_units(two_pool_table, one.menu, e.rows).max_rounds == 8.0


def test_races_run_per_pool_on_the_finish_watch(two_pool_table):
    from policies.escalate_sim import Simulator, make_orders, oneshot_policy

    t = two_pool_table
    e = EscalateEnv(**pre13.ENV, table=t, split="all", watch="finish")
    rows = e.rows[:8]
    orders, picks = make_orders(t, e.menu, rows, 2, seed=0)
    sim = Simulator(t, e.menu, e.encoder, e.units, rows, orders, picks)
    for cfg, p in ((A, 0), (B, 1)):
        race = next(a for a in t.menu if a.race is not None and a.config_id == cfg)
        res = sim.run(oneshot_policy(e.menu, race), 0.0, 0.0)
        assert res.pool_samples is not None
        assert res.pool_samples[..., 1 - p].sum() == 0 and res.pool_samples[..., p].min() >= race.race.k
