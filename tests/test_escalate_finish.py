"""ttc/Escalate-v0 watched finish by finish (``env.watch: finish``): the env checkers, costs after each
finish on a hand-made pool against hand-computed values, ties, replay, a round watched to its end
against the whole-round watch, races and k-agree rules at finish against the race's own outcome."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from env.escalate_env import EscalateConfig, EscalateEnv
from env.outcomes import OutcomeTable
from env.seen import FINISH_FEATURES, SEEN_FEATURES
from policies.escalate_sim import Simulator, plan_policy, race_policy
from policies.stopping_rules import Rule, rule_policy
from rollouts.cache import CacheWriter
from rollouts.errors import ConfigError
from rollouts.latency import LatencyModel, Round
from rollouts.strategies import RaceRule, run_race
from tests.fixtures import pre13_defaults as pre13

# every query's pool of 6 (hand-made): answers, generated tokens, scores; each sample 1 scorer token
KEYS = ["7", "5", None, "7", "5", "7"]
TOKENS = [40, 10, 20, 30, 30, 90]
SCORES = [0.9, 0.2, 0.5, 0.4, 0.8, 0.1]
LM = LatencyModel([0.5, 0.0, 0.01, 0.001])
LT, LS = 1e-3, 0.1
FIXED = {**pre13.ENV, "penalty_mode": "fixed", "lambda_tokens": LT, "lambda_seconds": LS,
         "split_fractions": [1.0, 0.0, 0.0]}  # fmt: skip


def rs(width: int, steps: float) -> float:
    """The latency model's seconds of one round of ``width`` samples after ``steps`` decode steps."""
    return LM.round_seconds(Round(10, width, steps))


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    path = tmp_path_factory.mktemp("hand") / "c"
    with CacheWriter(path, meta={"model": "hand-made", "latency_model": LM.to_dict()}) as w:
        for qi in range(8):
            qid = f"q{qi}"
            w.add_query({"query_id": qid, "prompt_tokens": 10, "features": [1.0, float(qi)]})
            samples = [{"answer": k, "correct": k == "7", "tokens": t, "score": s, "scorer_tokens": 1,
                        "finish_reason": "stop"} for k, t, s in zip(KEYS, TOKENS, SCORES, strict=True)]
            w.add_record({"query_id": qid, "config_id": "pool:n=6", "strategy": "sample_pool", "seed": 0,
                          "params": {"n": 6}, "samples": samples, "tokens": sum(TOKENS), "scorer_tokens": 6,
                          "seconds": None, "seconds_source": "modelled"})  # fmt: skip
    return OutcomeTable(path, races=["majority@6:agree2"])


@pytest.fixture(scope="module")
def table(synthetic_cache):
    return OutcomeTable(synthetic_cache)


def hand_env(hand, watch="finish"):
    return EscalateEnv(table=hand, watch=watch, draw_sizes=[2, 4, 6], **FIXED)


def test_env_checkers_in_finish_mode(table):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gym_check_env(EscalateEnv(**pre13.ENV, table=table, watch="finish"), skip_render_check=True)
    sb3_check_env(EscalateEnv(**pre13.ENV, table=table, watch="finish"), warn=True)


def test_costs_after_each_finish_are_hand_computed(hand):
    e = hand_env(hand)
    obs, _ = e.reset(seed=0, options={"order": list(range(6))})
    assert e.menu.ids[:4] == ["draw@2", "draw@4", "draw@6", "wait"]
    assert obs.shape == (e.encoder.dim + len(SEEN_FEATURES) + len(FINISH_FEATURES),)
    ids = e.menu.ids
    # draw@4 launches samples 0..3 (40, 10, 20, 30 tokens): they finish as 1, 2, 3, 0
    want = [  # (action, tokens so far, seconds so far, finished, running)
        ("draw@4", 4 * 10, rs(4, 10), 1, 3),
        ("wait", 10 + 3 * 20, rs(4, 20), 2, 2),
        ("wait", 10 + 20 + 2 * 30, rs(4, 30), 3, 1),
        ("wait", 100, rs(4, 40), 4, 0),  # the round is over: what the whole-round watch charges
        ("draw@2", 100 + 2 * 30, rs(4, 40) + rs(2, 30), 5, 1),  # samples 4 (30) and 5 (90): 4 finishes
    ]
    tok = sec = 0.0
    for a, t, s, fin, run in want:
        m = e.action_masks()
        assert m[ids.index(a)]
        assert m[e.menu.wait_index] == (a == "wait")  # draws only once a round is over, waits only within
        obs, r, done, _, _ = e.step(ids.index(a))
        st = e._ep.state
        assert not done and st.tokens == pytest.approx(t) and st.seconds == pytest.approx(s)
        assert (st.drawn, st.running) == (fin, run)
        assert r == pytest.approx(-(LT * (t - tok) + LS * (s - sec)))
        tok, sec = t, s
    seen = obs[e.encoder.dim :]
    assert seen[11:] == pytest.approx([1 / 2, 1 / 6, 30 / e.units.tokens_per_sample, rs(2, 30) / e.units.cost_seconds])
    assert not e.action_masks()[ids.index("draw@2")]  # sample 5 still runs
    # best_score over the 5 finished samples: sample 0 (0.9, "7"); sample 5 is cancelled at 30 tokens
    _, r, done, _, info = e.step(ids.index("stop:best_score"))
    assert done and info["correct"] == 1.0 and info["tokens"] == 160 + 5 and info["seconds"] == pytest.approx(sec)
    assert (info["launched"], info["cancelled"], info["samples"], info["widths"]) == (6, 1, 5, [4, 2])
    assert r == pytest.approx(1.0 - LT * 5)


def test_ties_finish_one_by_one_at_no_cost(hand):
    e = hand_env(hand)
    e.reset(seed=0, options={"order": list(range(6))})
    e.step(e.menu.draw_index[6])  # finish order 1, 2, 3, 4 (a tie at 30: sample order), 0, 5
    e.step(e.menu.wait_index)
    _, _, _, _, _ = e.step(e.menu.wait_index)
    st = e._ep.state
    assert st.tokens == 10 + 20 + 4 * 30 and st.keys == ["5", None, "7"]
    _, r, _, _, _ = e.step(e.menu.wait_index)  # sample 4 finishes at the same decode step
    assert r == 0.0 and st.tokens == 150 and st.keys[-1] == "5" and st.seconds == pytest.approx(rs(6, 30))
    assert e._ep.finished == [1, 2, 3, 4]


def test_beam_cancels_the_round(table):
    e = EscalateEnv(**pre13.ENV, table=table, watch="finish")
    e.reset(seed=4)
    beam = e.menu.beam_index[e.menu.beam_configs[0]]
    e.step(e.menu.draw_index[4])
    paid = e._ep.state.tokens
    if e.action_masks()[beam]:
        _, _, done, _, info = e.step(beam)
        assert done and info["beam"] and info["cancelled"] == 4 - info["samples"] and info["tokens"] > paid


def _play(e, seed, policy_seed):
    rng = np.random.default_rng(policy_seed)
    obs, info = e.reset(seed=seed)
    trace = [obs]
    done = False
    while not done:
        legal = np.flatnonzero(e.action_masks())
        obs, r, done, _, info = e.step(int(rng.choice(legal)))
        trace += [obs, r]
    return trace, info


def test_replay_with_the_same_seed_is_identical(table):
    e = EscalateEnv(**pre13.ENV, table=table, watch="finish")
    for seed in range(5):
        (t1, i1), (t2, i2) = _play(e, seed, seed), _play(e, seed, seed)
        assert i1 == i2 and len(t1) == len(t2)
        assert all(np.array_equal(a, b) for a, b in zip(t1, t2, strict=True))


def test_a_round_watched_to_its_end_costs_the_whole_round(table):
    rnd, fin = (EscalateEnv(**pre13.ENV, table=table, watch=w) for w in ("round", "finish"))
    for seed in range(6):
        rnd.reset(seed=seed)
        fin.reset(seed=seed)
        tot = [0.0, 0.0]
        for a in ("draw@2", "draw@4", "stop:majority"):
            _, r, done, _, ri = rnd.step(rnd.menu.ids.index(a))
            tot[0] += r
            while fin.action_masks()[fin.menu.wait_index]:
                _, r, _, _, _ = fin.step(fin.menu.wait_index)
                tot[1] += r
            _, r, done, _, fi = fin.step(fin.menu.ids.index(a))
            tot[1] += r
        for k in ("correct", "tokens", "seconds", "widths", "samples", "query_id", "order"):
            assert fi.get(k) == pytest.approx(ri.get(k)), k
        assert tot[1] == pytest.approx(tot[0])


def _sim(hand, watch="finish"):
    e = hand_env(hand, watch)
    return Simulator(hand, e.menu, e.encoder, e.units, e.rows[:1], [[np.arange(6)]], np.zeros((1, 1)))


def test_race_on_the_finish_watch_is_the_cached_race(hand):
    sim = _sim(hand)
    ai = hand.action_ids.index("pool:n=6/majority@6:agree2")
    res = sim.run(race_policy(RaceRule(6, 2), "majority", sim.menu), LT, LS)
    qi = int(sim.rows[0])
    assert res.tokens[0, 0] == hand.tokens[qi, ai] == 150
    assert res.seconds[0, 0] == pytest.approx(hand.seconds[qi, ai])
    assert res.correct[0, 0] == hand.correct[qi, ai] == 0.0  # "5" agreed twice first


@pytest.mark.parametrize("selector", ["majority", "best_score"])
def test_k_agree_at_finish_is_a_race(hand, selector):
    sim = _sim(hand)
    res = sim.run(rule_policy(Rule("k_agree", 2, "fours", selector, 4), sim.menu), 0.0, 0.0)
    want = run_race(RaceRule(4, 2), KEYS[:4], TOKENS[:4], SCORES[:4], [1.0] * 4, selector)
    assert res.tokens[0, 0] == want.tokens and res.seconds[0, 0] == pytest.approx(rs(4, want.stop_tokens))
    assert res.correct[0, 0] == float(KEYS[want.pick] == "7") and res.samples[0, 0] == len(want.finished)


def test_static_plans_wait_out_their_round(hand):
    rnd, fin = _sim(hand, "round"), _sim(hand)
    a, b = ([s.menu.draw_index[6], s.menu.stop_index["majority"]] for s in (rnd, fin))
    a, b = rnd.run(plan_policy([a]), LT, LS), fin.run(plan_policy([b]), LT, LS)
    assert (a.tokens, a.correct, a.samples) == (b.tokens, b.correct, b.samples)
    assert b.seconds == pytest.approx(a.seconds)


def test_bad_watch_is_refused_and_finish_runs_export():
    with pytest.raises(ConfigError, match="env.watch must be one of round, finish"):
        EscalateConfig.from_dict({"kind": "escalate", "watch": "token"})
    from types import SimpleNamespace

    from policies.ppo import PPOConfig
    from policies.training import _check_combination

    env_cfg = EscalateConfig.from_dict({"kind": "escalate", "watch": "finish"})
    for export in (True, False):  # route.py --mode sequential plays a finish-watch export live
        _check_combination(SimpleNamespace(export=export, warm_start_from=None), env_cfg, PPOConfig(policy="mlp"), False, False)


def test_train_and_evaluate_a_finish_run(synthetic_cache, tmp_path, tiny_run):
    """configs/train_escalate_finish.yaml trains and exports (cloned from a one-shot run whose races are
    played finish by finish) and the sequential evaluation plays the rules, the statics, the menu's races
    and the one-shot run's choices finish by finish on the same orders."""
    import json
    from pathlib import Path

    import evaluate
    import train

    config = str(Path(__file__).resolve().parents[1] / "configs" / "train_escalate_finish.yaml")
    small = ["n_envs=2", "eval_freq=512", "checkpoint_freq=512", "val_grid=2", "ppo.n_steps=128",
             "ppo.batch_size=128"]  # fmt: skip
    rc = train.main(["--config", config, "--cache", str(synthetic_cache), "--runs-dir", str(tmp_path), "--name",
                     "fin", "--total-timesteps", "512", "--no-progress", "--hyperparams", *small,
                     f"warm_start_from={tiny_run}", "clone_floor=false"])  # fmt: skip
    run = tmp_path / "fin"
    assert rc == 0 and (run / "best_model.zip").exists()
    assert json.loads((run / "export" / "policy.json").read_text())["escalate"]["watch"] == "finish"
    clone = json.loads((run / "train_summary.json").read_text())[-1]["clone_of_oneshot"]
    assert clone["samples"] > 0 and clone["lambdas"] == 32
    rc = evaluate.main(["--run", str(run), "--compare-run", str(tiny_run), "--json", str(tmp_path / "r.json"), "--out", str(tmp_path / "ev"),
                        "--grid", "2", "--orders", "2", "--bootstrap", "0", "--no-plots", "--no-progress"])  # fmt: skip
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert "wait" in r["step_menu"]
    races = [a for a in r["oneshot_menu"] if ":agree" in a or ":first" in a]
    pols = r["points"][0]["policies"]
    assert races and all(f"static:{a}" in pols for a in races)
    assert {"sequential", "oracle", "oracle_no_races", "oneshot_ppo", "rule:k_agree"} <= set(pols)
    for p in r["points"]:  # the hindsight bound over the menu without races is never above the full one
        assert p["policies"]["oracle_no_races"]["utility"] <= p["policies"]["oracle"]["utility"] + 1e-12
    # the synthetic samples have no mean_logprob: no confidence rules, and a note says so
    assert "rule:confidence" not in pols and "confidence" not in r["rule_grid_sizes"]
    assert len(r["rule_notes"]) == 1 and "mean_logprob" in r["rule_notes"][0]
    assert "Note: no confidence rules" in (tmp_path / "ev" / "results.md").read_text()
