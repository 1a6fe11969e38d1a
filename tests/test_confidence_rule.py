"""The ``confidence`` stopping rule (DeepConf online): on a hand-made pool it stops at the hand-computed
finish (finish watch) or draw (round watch) with the hand-computed confidence-weighted answer, tokens
and seconds; the confidences come from the samples' ``mean_logprob``, not their scores; a cache without
``mean_logprob`` has no ``confidence`` family (a note says so) and nothing crashes; live routing feeds
the same :class:`env.seen.SeenState` and refuses a confidence floor without log-probs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from env.escalate_env import EscalateEnv
from env.outcomes import OutcomeTable
from env.seen import SeenState
from policies.escalate_sim import Simulator
from policies.stopping_rules import Rule, rule_grid, rule_notes, rule_policy
from rollouts.cache import CacheWriter
from rollouts.latency import LatencyModel, Round
from tests.fixtures import pre13_defaults as pre13

# every query's pool of 6 (hand-made): answers, generated tokens, confidences exp(mean_logprob), scores
KEYS = ["7", "5", None, "7", "5", "5"]
TOKENS = [40, 10, 20, 30, 35, 90]  # finish order: samples 1, 2, 3, 4, 0, 5
CONF = [0.9, 0.3, 0.5, 0.8, 0.2, 0.1]
SCORES = [0.1, 0.9, 0.5, 0.2, 0.8, 0.7]  # the scorer's: the rule must not read these
LM = LatencyModel([0.5, 0.0, 0.01, 0.001])
ENV = {**pre13.ENV, "penalty_mode": "fixed", "lambda_tokens": 0.0, "lambda_seconds": 0.0,
       "split_fractions": [1.0, 0.0, 0.0], "draw_sizes": [1, 2, 4, 6]}  # fmt: skip


def rs(width: int, steps: float) -> float:
    return LM.round_seconds(Round(10, width, steps))


def _cache(path, with_logprob: bool = True) -> OutcomeTable:
    with CacheWriter(path, meta={"model": "hand-made", "latency_model": LM.to_dict()}) as w:
        for qi in range(4):
            qid = f"q{qi}"
            w.add_query({"query_id": qid, "prompt_tokens": 10, "features": [1.0, float(qi)]})
            samples = [
                {"answer": k, "correct": k == "7", "tokens": t, "score": s, "scorer_tokens": 1, "finish_reason": "stop",
                 **({"mean_logprob": math.log(c)} if with_logprob else {})}
                for k, t, c, s in zip(KEYS, TOKENS, CONF, SCORES, strict=True)
            ]  # fmt: skip
            w.add_record({"query_id": qid, "config_id": "pool:n=6", "strategy": "sample_pool", "seed": 0,
                          "params": {"n": 6}, "samples": samples, "tokens": sum(TOKENS), "scorer_tokens": 6,
                          "seconds": None, "seconds_source": "modelled"})  # fmt: skip
    return OutcomeTable(path)


@pytest.fixture(scope="module")
def hand(tmp_path_factory):
    return _cache(tmp_path_factory.mktemp("conf") / "c")


def _sim(table: OutcomeTable, watch: str) -> Simulator:
    e = EscalateEnv(table=table, watch=watch, **ENV)
    return Simulator(table, e.menu, e.encoder, e.units, e.rows[:1], [[np.arange(6)]], np.zeros((1, 1)))


def test_the_state_sums_confidences_per_answer():
    st = SeenState(6, True)
    st.add_round(KEYS[:4], TOKENS[:4], [1] * 4, SCORES[:4], 1.0, confidences=CONF[:4])
    # "7": 0.9 + 0.8 of a total 0.9 + 0.3 + 0.5 + 0.8 (the unparsed sample counts in the total)
    assert st.confidence_share() == pytest.approx(1.7 / 2.5)
    assert st.answer("confidence") == 0 and st.answer("majority") == 0
    st.add_round(KEYS[4:], TOKENS[4:], [1] * 2, SCORES[4:], 1.0, confidences=CONF[4:])
    assert st.answer("majority") == 1  # "5" has 3 votes
    assert st.answer("confidence") == 0  # "7" has 1.7 of confidence, "5" 0.6
    assert st.stop_tokens("confidence") == 0.0  # the engine's log-probs: no scorer call
    bare = SeenState(6, False)
    bare.add_round(KEYS[:2], TOKENS[:2], [0, 0], None, 1.0)
    assert not bare.has_confidence
    with pytest.raises(ValueError, match="mean_logprob"):
        bare.confidence_share()


def test_finish_watch_stops_at_the_hand_computed_finish(hand):
    sim = _sim(hand, "finish")
    assert sim.menu.has_confidence
    # τ 0.6, m 2, the cap (6) at once; finishes: "5" .3 | None .5 (share .3/.8) | "7" .8 (.8/1.6) |
    # "5" .2 (.8/1.8) | "7" .9: 1.7/2.7 = 0.63 >= 0.6: stop at the 5th finish (decode step 40), answer "7"
    # (majority would answer "5": 2 votes each, "5" finished first)
    res = sim.run(rule_policy(Rule("confidence", 0.6, "all", "confidence", 6, min_samples=2), sim.menu), 0.0, 0.0)
    assert res.samples[0, 0] == 5 and res.correct[0, 0] == 1.0
    assert res.tokens[0, 0] == 10 + 20 + 30 + 35 + 40 + 40  # the cancelled sample generated 40 tokens
    assert res.seconds[0, 0] == pytest.approx(rs(6, 40))
    assert res.final[0][0] == "stop:confidence" and res.beam[0, 0] == 0  # played as stop:majority, the vote answers
    # τ 0.45: the third finish (share 0.5), decode step 30; three running samples generated 30 each
    res = sim.run(rule_policy(Rule("confidence", 0.45, "all", "confidence", 6, min_samples=2), sim.menu), 0.0, 0.0)
    assert (res.samples[0, 0], res.tokens[0, 0], res.correct[0, 0]) == (3, 10 + 20 + 30 + 3 * 30, 1.0)
    assert res.seconds[0, 0] == pytest.approx(rs(6, 30))
    # m 4 holds the same τ to the fourth finish (share 0.44): the fifth again
    res = sim.run(rule_policy(Rule("confidence", 0.45, "all", "confidence", 6, min_samples=4), sim.menu), 0.0, 0.0)
    assert res.samples[0, 0] == 5


def test_round_watch_draws_one_at_a_time(hand):
    sim = _sim(hand, "round")
    # ones: sample 0 ("7", .9), then sample 1 ("5", .3): share .9/1.2 = .75 >= .7 with m = 2
    res = sim.run(rule_policy(Rule("confidence", 0.7, "ones", "confidence", 6, min_samples=2), sim.menu), 0.0, 0.0)
    assert (res.samples[0, 0], res.rounds[0, 0], res.correct[0, 0]) == (2, 2, 1.0)
    assert res.tokens[0, 0] == 40 + 10 and res.seconds[0, 0] == pytest.approx(rs(1, 40) + rs(1, 10))
    # τ 0.8: 0.75, then None .5 (.9/1.7), "7" .8 (1.7/2.5 = .68), "5" .2 (1.7/2.7), "5" .1 (1.7/2.8), the cap
    res = sim.run(rule_policy(Rule("confidence", 0.8, "ones", "confidence", 6, min_samples=2), sim.menu), 0.0, 0.0)
    assert (res.samples[0, 0], res.correct[0, 0]) == (6, 1.0)  # the vote: "7" 1.7 against "5" 0.6


def test_the_grid_has_the_family_only_with_mean_logprob(hand, tmp_path, synthetic_cache):
    from policies.rule_tuning import tune_rules

    menu = _sim(hand, "finish").menu
    fam = rule_grid(menu)["confidence"]
    assert len(fam) == 5 * 2 * 2 * 2 and not rule_notes(menu)  # τ, m, ones/all, caps 4 and 6
    assert all(r.selector == "confidence" and r.min_samples in (2, 3) for r in fam)
    for table in (_cache(tmp_path / "bare", with_logprob=False), OutcomeTable(synthetic_cache)):
        e = EscalateEnv(table=table, watch="finish", **{**ENV, "draw_sizes": "auto"})
        assert not e.menu.has_confidence and "confidence" not in rule_grid(e.menu)
        (note,) = rule_notes(e.menu)
        assert "mean_logprob" in note
        tuned = tune_rules(table, e.menu, e.encoder, e.units, e.rows[:8], n_orders=1)
        assert "confidence" not in tuned.families and tuned.info["notes"] == [note]
        assert "confidence" not in json.loads(json.dumps(tuned.to_dict()))["families"]


def test_the_live_floor_decides_and_answers_as_the_simulated_rule(hand):
    from policies.sequential_gate import Floor, floor_decider
    from policies.sequential_router import confidences

    menu = _sim(hand, "round").menu
    rule = Rule("confidence", 0.7, "ones", "confidence", 6, min_samples=2)
    decide = floor_decider(Floor("rule", rule.name, 0.0, rule=rule.to_dict()), menu)
    assert decide.stop_selector == "confidence"
    live = [{"mean_logprob": math.log(c)} for c in CONF]
    assert confidences(live) == pytest.approx(CONF) and confidences([*live, {"mean_logprob": None}]) is None
    st = SeenState(6, True)
    steps = []
    while True:
        a = decide(None, None, st)
        steps.append(menu.ids[a])
        if menu.actions[a].kind == "stop":
            break
        i = st.drawn
        st.add_round([KEYS[i]], [TOKENS[i]], [1], [SCORES[i]], 1.0, confidences=confidences(live[i : i + 1]))
    assert steps == ["draw@1", "draw@1", "stop:majority"] and st.answer(decide.stop_selector) == 0


def test_a_rules_file_without_the_family_is_tuned_again(hand, tmp_path):
    """A resumed run whose rules.json predates the family (another rule grid) is tuned again, not kept."""
    from types import SimpleNamespace

    from policies.rule_tuning import RULES_FILE, load_tuned_rules, tune_rules, write_run_rules

    e = EscalateEnv(table=hand, watch="finish", **ENV)
    job = SimpleNamespace(run_dir=tmp_path, table=hand, env_cfg=e.config, train_rows=e.rows, val_rows=e.rows[:0],
                          env_kwargs={"units": e.units}, encoder=e.encoder, cfg=SimpleNamespace(rule_orders=1))  # fmt: skip
    old = tune_rules(hand, e.menu, e.encoder, e.units, e.rows, n_orders=1).to_dict()
    del old["families"]["confidence"]
    (tmp_path / RULES_FILE).write_text(json.dumps(old))
    assert load_tuned_rules(tmp_path, e.menu) is None
    assert "n_queries" in write_run_rules(job)  # tuned again
    assert "confidence" in json.loads((tmp_path / RULES_FILE).read_text())["families"]
    assert write_run_rules(job) == {"file": RULES_FILE, "kept": True}
