"""Races on hand-made pools: answer, tokens and seconds against hand-computed values; the vectorised
outcome table against the one stop logic (run_race); the menu's race actions and their refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from env.allocate_env import EnvConfig
from env.menu import parse_race_action
from env.outcomes import OutcomeTable
from env.pool_outcomes import race_many
from rollouts.backends.base import SamplingSpec
from rollouts.cache import CacheWriter
from rollouts.errors import ConfigError
from rollouts.latency import LatencyModel, Round
from rollouts.strategies import RaceRule, RaceWatch, run_race
from rollouts.strategies.race import finish_order
from rollouts.strategies.selectors import answer_key, tied_winners

# one query's pool of 6: answers, generated tokens, scores (hand-made)
KEYS = ["7", "5", None, "7", "5", "7"]
TOKENS = [40, 10, 20, 30, 30, 90]
SCORES = [0.9, 0.2, 0.5, 0.4, 0.8, 0.1]
SCORER = [1.0] * 6


def test_finish_order_ties_go_to_sample_order():
    assert finish_order([40, 10, 20, 30, 30, 90]) == [1, 2, 3, 4, 0, 5]
    assert finish_order([5, 5, 5]) == [0, 1, 2]


def test_agree_race_hand_computed():
    # finish order: 1 ("5", 10), 2 (None, 20), 3 ("7", 30), 4 ("5", 30), 0 ("7", 40), 5 ("7", 90)
    # agree2: "5" reaches 2 votes at sample 4 (L_stop 30); sample 3 ties it at 30 but finished first
    out = run_race(RaceRule(6, 2), KEYS, TOKENS, SCORES, SCORER, "majority")
    assert out.finished == [1, 2, 3, 4]
    assert out.stop_tokens == 30
    assert out.generated == 30 + 10 + 20 + 30 + 30 + 30  # a cancelled sample pays min(tokens, L_stop)
    assert out.tokens == out.generated  # majority reads no scores: no scorer tokens
    assert out.pick == 1  # "5" (2 votes) beats "7" (1); the earliest "5" finisher
    # best_score over the finished: sample 4 (0.8); charged its scorer tokens for the 4 finished
    best = run_race(RaceRule(6, 2), KEYS, TOKENS, SCORES, SCORER, "best_score")
    assert best.pick == 4 and best.tokens == out.generated + 4.0


def test_unparsed_answers_never_agree_and_all_finish():
    keys = [None, None, None, "1"]
    out = run_race(RaceRule(4, 2), keys, [1, 2, 3, 4], None, [0.0] * 4, "majority")
    assert out.finished == [0, 1, 2, 3]  # never two agreeing parsed answers: every sample finishes
    assert out.stop_tokens == 4 and out.generated == 10
    assert out.pick == 3  # None never wins unless all are None


def test_first_rule_is_short_m_at_k():
    out = run_race(RaceRule(6, 3, "first"), KEYS, TOKENS, SCORES, SCORER, "majority")
    assert out.finished == [1, 2, 3] and out.stop_tokens == 30
    assert out.generated == 10 + 20 + 30 + 30 + 30 + 30


def test_watch_stops_at_n_and_rules_refuse_bad_input():
    w = RaceWatch(RaceRule(3, 3))
    assert [w.finish(k) for k in ("a", "b", "c")] == [False, False, True]
    with pytest.raises(ConfigError, match="k=5 > n=4"):
        RaceRule(4, 5)
    with pytest.raises(ConfigError):
        RaceRule(4, 2, "sometimes")
    with pytest.raises(ConfigError, match="not <selector>"):
        parse_race_action("best@8:agree3")
    with pytest.raises(ConfigError, match="agreeK or N:firstK"):
        parse_race_action("majority@8:agree")
    with pytest.raises(ConfigError, match="k=9 > n=8"):
        EnvConfig.from_dict({"races": ["majority@8:agree9"]})


def test_replay_with_the_same_seed_is_identical():
    keys = ["1", "2", "1", "2", "3"]
    runs = [run_race(RaceRule(5, 3), keys, [3, 3, 3, 3, 3], [0.5] * 5, [0.0] * 5, "majority",
                     rng=np.random.default_rng(7)) for _ in range(2)]
    assert runs[0] == runs[1]


def _expected(rule, keys, toks, scores, scorer, correct, selector):
    """run_race's expected correctness over its random tie-break (tied_winners over the finished)."""
    out = run_race(rule, keys, toks, scores, scorer, selector)
    fin = out.finished
    tied = tied_winners(selector, [keys[i] for i in fin], None if scores is None else [scores[i] for i in fin])
    return float(np.mean([correct[fin[t]] for t in tied])), out.tokens, out.stop_tokens


@pytest.mark.parametrize("selector", ["majority", "best_score", "weighted"])
@pytest.mark.parametrize("rule", [RaceRule(6, 2), RaceRule(6, 3), RaceRule(6, 2, "first"), RaceRule(6, 6)])
def test_vectorised_races_equal_run_race(rule, selector):
    rng = np.random.default_rng(0)
    r = 300
    answers = rng.integers(-1, 3, size=(r, 6))  # few answers: ties and agreement are common
    toks = rng.integers(1, 6, size=(r, 6)).astype(float)  # few lengths: ties in finish order are common
    scores = rng.integers(0, 3, size=(r, 6)) / 2.0
    scorer = rng.integers(0, 4, size=(r, 6)).astype(float)
    correct = (answers == 0).astype(float)
    got = race_many(rule, selector, answers, toks, scores, scorer, correct)
    for i in range(r):
        keys = [None if a < 0 else str(a) for a in answers[i]]
        want = _expected(rule, keys, toks[i], scores[i], scorer[i], correct[i], selector)
        assert (got[0][i], got[1][i], got[2][i]) == pytest.approx(want), (i, keys, toks[i])


def _write_cache(path, pools, tokens=True):
    """A one-config cache of pools [(keys, tokens, scores)] priced by the race tests' latency model."""
    meta = {"model": "hand-made", "latency_model": LatencyModel([0.5, 0.0, 0.01, 0.001]).to_dict()}
    with CacheWriter(path, meta=meta) as w:
        for qi, (keys, toks, scores) in enumerate(pools):
            qid = f"q{qi}"
            w.add_query({"query_id": qid, "prompt_tokens": 10, "features": [1.0, float(qi)]})
            samples = [{"answer": k, "correct": k == "7", "tokens": t if tokens else None, "score": s,
                        "scorer_tokens": 1, "finish_reason": "stop"} for k, t, s in zip(keys, toks, scores)]
            w.add_record({"query_id": qid, "config_id": "pool:n=6", "strategy": "sample_pool", "seed": 0,
                          "params": {"n": 6}, "samples": samples, "tokens": sum(toks), "scorer_tokens": 6,
                          "seconds": None, "seconds_source": "modelled"})
    return path


def test_outcome_table_prices_a_race_by_hand(tmp_path):
    cache = _write_cache(tmp_path / "c", [(KEYS, TOKENS, SCORES)])
    table = OutcomeTable(cache, races=["majority@6:agree2", "best_score@6:agree2", "majority@8:agree2"])
    ids = table.action_ids
    assert "pool:n=6/majority@6:agree2" in ids
    assert not any("@8:" in a for a in ids)  # a race launching more samples than the pool: not offered
    ai = ids.index("pool:n=6/majority@6:agree2")
    assert table.correct[0, ai] == 0.0  # "5" wins; the reference answer is 7
    assert table.tokens[0, ai] == 150
    lm = LatencyModel([0.5, 0.0, 0.01, 0.001])
    assert table.seconds[0, ai] == pytest.approx(lm.predict([Round(10, 6, 30)]))  # width 6, L_stop 30
    bi = ids.index("pool:n=6/best_score@6:agree2")
    assert table.correct[0, bi] == 0.0 and table.tokens[0, bi] == 154


def test_ragged_pool_masks_a_race_above_its_size(tmp_path):
    pools = [(KEYS, TOKENS, SCORES), (KEYS[:4], TOKENS[:4], SCORES[:4])]
    table = OutcomeTable(_write_cache(tmp_path / "c", pools), races=["majority@6:agree2", "majority@4:agree2"])
    six, four = (table.action_ids.index(f"pool:n=6/majority@{n}:agree2") for n in (6, 4))
    assert table.mask[0, six] and not table.mask[1, six] and table.mask[1, four]


def test_samples_without_tokens_mask_races_with_one_warning(tmp_path, capsys):
    cache = _write_cache(tmp_path / "c", [(KEYS, TOKENS, SCORES)], tokens=False)
    table = OutcomeTable.for_env(cache, EnvConfig.from_dict({"races": ["majority@6:agree2"]}))
    assert not any(a.race for a in table.menu)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: races are not offered on 'pool:n=6'")


def test_sampled_mode_replays_the_same_race(tmp_path):
    table = OutcomeTable(_write_cache(tmp_path / "c", [(KEYS, TOKENS, SCORES)]), races=["majority@6:agree2"])
    ai = table.action_ids.index("pool:n=6/majority@6:agree2")
    draws = [table.sample(0, ai, np.random.default_rng(3)) for _ in range(2)]
    assert draws[0] == draws[1] == (0.0, 150.0, pytest.approx(table.seconds[0, ai]))


def test_bundled_cache_race_costs_match_their_definition():
    """On the real cache: a race never costs more than launching its N samples and waiting for all (N = K:
    one subset, so no Monte-Carlo noise between the two)."""
    table = OutcomeTable("data/default_cache", races=["best_score@16:agree4"])
    race = table.action_ids.index("pool:n=16/best_score@16:agree4")
    full = table.action_ids.index("pool:n=16/best_score@16")
    m = table.mask[:, race]
    assert (table.tokens[m, race] <= table.tokens[m, full] + 1e-9).all()
    assert (table.seconds[m, race] <= table.seconds[m, full] + 1e-9).all()
    assert json.dumps(table.menu[race].to_dict())  # policy.json / meta form
    assert answer_key(" 7. ") == "7"


def test_a_backend_that_cannot_cancel_runs_the_whole_round(capsys):
    """The offline engine's fallback: every sample runs to its end, finishes are replayed shortest first,
    the race's answer is its cached replay's, and every generated token is reported (nothing saved)."""
    from rollouts.backends.base import Backend, Completion
    from rollouts.grading import Grade
    from rollouts.scorers import make_scorer
    from rollouts.strategies import PromptedQuery, RaceSpec

    class Fixed(Backend):  # an engine whose samples are KEYS/TOKENS, without cancellation
        def generate(self, prompts, specs):
            return [[Completion(str(k), list(range(t)), "stop", [-0.1] * t) for k, t in zip(KEYS, TOKENS)]
                    for _ in prompts]

        @property
        def tokenizer(self):
            return None

    q = PromptedQuery("q0", "?", "7", [1, 2, 3])
    (line,) = RaceSpec(6, 2).answer(Fixed("m", {"backend": "fixed"}), [q], SamplingSpec(), make_scorer("logprob"),
                                    lambda ref, text: Grade(None if text == "None" else text, text == ref), seed=0)
    assert line["answer"] == "5" and line["samples_finished"] == 4 and line["samples_cancelled"] == 0
    assert line["generated_tokens"] == sum(TOKENS)  # nothing was cancelled, so nothing is saved
    assert capsys.readouterr().err.startswith("warning: the fixed backend cannot cancel samples")
