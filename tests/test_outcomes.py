import math

import numpy as np
import pytest

from env.menu import build_menu, pool_budgets
from env.outcomes import OutcomeTable
from env.pool_outcomes import select_many, subsets_for
from rollouts.cache import CacheError, CacheWriter, load_cache
from rollouts.strategies.selectors import select
from tests.fixtures.synthetic_cache import make_synthetic_cache


def _ids(answers):
    ids = {}
    return np.array([-1 if a is None else ids.setdefault(a, len(ids)) for a in answers])


@pytest.mark.parametrize("selector", ["majority", "best_score", "weighted"])
def test_vectorised_select_matches_select(selector):
    rng = np.random.default_rng(0)
    for trial in range(3000):
        n = int(rng.integers(1, 9))
        vocab = ["1", "2", "3", None] if trial % 3 else ["1", None]
        answers = [vocab[int(rng.integers(len(vocab)))] for _ in range(n)]
        if trial % 2:  # dyadic scores: exact ties whatever the summation order
            scores = [float(rng.integers(0, 5)) / 4 for _ in range(n)]
        else:
            scores = [float(x) for x in rng.random(n)]
        want = select(selector, answers, scores)
        got = select_many(selector, _ids(answers)[None, :], np.array(scores)[None, :])[0]
        assert got == want, (selector, answers, scores)


def test_pool_budgets():
    assert pool_budgets(16) == [1, 2, 4, 8, 16]
    assert pool_budgets(8) == [1, 2, 4, 8]
    assert pool_budgets(6) == [1, 2, 4, 6]
    assert pool_budgets(1) == [1]


def test_subsets_exact_and_mc():
    s, exact = subsets_for(8, 2, 128, 0)
    assert exact and s.shape == (28, 2)
    s, exact = subsets_for(16, 4, 128, 0)
    assert not exact and s.shape == (128, 4)
    assert (np.diff(s, axis=1) > 0).all()  # ascending, no repeats
    s2, _ = subsets_for(16, 4, 128, 0)
    assert (s == s2).all()


def test_menu_from_cache(synthetic_cache):
    cache = load_cache(synthetic_cache)
    ids = [a.id for a in build_menu(cache)]
    assert ids[0] == "pool:n=8/sample@1"
    assert "pool:n=8/majority@8" in ids and "pool:n=8/weighted@4" in ids
    assert ids[-2:] == ["beam:N=2,M=2", "beam:N=4,M=2"]
    assert len(ids) == len(set(ids)) == 1 + 3 * 3 + 2
    names = [a.name for a in build_menu(cache)]
    assert names[0] == "sample@1"  # single pool config: no prefix in display names


def test_menu_without_scores_offers_majority_only(tmp_path):
    cache = load_cache(make_synthetic_cache(tmp_path / "c", n_queries=8, scores=False))
    ids = [a.id for a in build_menu(cache)]
    assert not any("best_score" in i or "weighted" in i for i in ids)
    assert "pool:n=8/majority@2" in ids


def _brute(table, cache, qid, action):
    """Exact expectation by enumerating every subset with the real selector, ties broken uniformly
    at random (the mean over ``tied_winners``)."""
    import itertools

    from rollouts.strategies.selectors import tied_winners

    rec = cache.records_for(qid, action.config_id)[0]
    samples = rec["samples"]
    vals = []
    for sub in itertools.combinations(range(len(samples)), action.n):
        ans = [samples[i]["answer"] for i in sub]
        sc = [samples[i].get("score") for i in sub]
        picks = [sub[i] for i in tied_winners(action.selector or "majority", ans, sc)] if action.n > 1 else [sub[0]]
        vals.append(float(np.mean([1.0 if samples[p]["correct"] else 0.0 for p in picks])))
    return float(np.mean(vals))


def test_expected_correctness_exact(synthetic_cache):
    cache = load_cache(synthetic_cache)
    table = OutcomeTable(cache, mc_subsets=10_000)
    for qid in cache.query_ids[:12]:
        qi = table.qindex[qid]
        for ai, a in enumerate(table.menu):
            if a.is_budget:
                assert table.correct[qi, ai] == pytest.approx(_brute(table, cache, qid, a), abs=1e-12), a.id


def test_monte_carlo_close_to_exact(synthetic_cache):
    exact = OutcomeTable(synthetic_cache, mc_subsets=10_000)
    mc = OutcomeTable(synthetic_cache, mc_subsets=16, outcome_seed=3)
    a4 = exact.action_ids.index("pool:n=8/majority@4")
    assert exact.exact[a4] and not mc.exact[a4]
    assert np.abs(exact.correct[:, a4] - mc.correct[:, a4]).mean() < 0.05
    mc2 = OutcomeTable(synthetic_cache, mc_subsets=16, outcome_seed=3)
    assert (mc.correct == mc2.correct).all()  # deterministic


def test_tokens_and_seconds(synthetic_cache):
    cache = load_cache(synthetic_cache)
    table = OutcomeTable(cache)
    lm = cache.meta["latency_model"]["coef"]
    for qid in cache.query_ids[:8]:
        qi = table.qindex[qid]
        rec = cache.records_for(qid, "pool:n=8")[0]
        toks = [s["tokens"] for s in rec["samples"]]
        for ai, a in enumerate(table.menu):
            if a.race is not None:
                continue  # races: tests/test_races.py
            if not a.is_pool:
                beam = cache.records_for(qid, a.config_id)[0]
                assert table.tokens[qi, ai] == beam["tokens"] + beam["scorer_tokens"]
                assert table.seconds[qi, ai] == beam["seconds"]
                continue
            assert table.tokens[qi, ai] == pytest.approx(sum(toks) * a.n / len(toks))
            if "seconds_by_n" in rec:
                assert table.seconds[qi, ai] == rec["seconds_by_n"][str(a.n)]
            elif a.n == len(toks):
                p = cache.queries[qid]["prompt_tokens"]
                m = max(toks)
                assert table.seconds[qi, ai] == pytest.approx(
                    lm[0] + lm[1] * p * a.n + m * (lm[2] + lm[3] * a.n)
                )


def test_missing_latency_is_a_clear_error(tmp_path):
    d = make_synthetic_cache(tmp_path / "c", n_queries=4, latency_model=False)
    with pytest.raises(CacheError, match="no latency .* budget"):
        OutcomeTable(d)


def test_seeds_are_averaged_and_sampling_matches_expectation(tmp_path):
    d = make_synthetic_cache(tmp_path / "c", n_queries=8, seeds_per_record=3)
    cache = load_cache(d)
    table = OutcomeTable(cache)
    qid = cache.query_ids[1]
    qi = table.qindex[qid]
    a1 = table.action_ids.index("pool:n=8/sample@1")
    recs = cache.records_for(qid, "pool:n=8")
    assert len(recs) == 3
    want = np.mean([np.mean([s["correct"] for s in r["samples"]]) for r in recs])
    assert table.correct[qi, a1] == pytest.approx(want)
    rng = np.random.default_rng(0)
    for ai in (a1, table.action_ids.index("pool:n=8/majority@4"), table.action_ids.index("beam:N=2,M=2")):
        draws = np.array([table.sample(qi, ai, rng) for _ in range(3000)])
        assert draws[:, 0].mean() == pytest.approx(table.correct[qi, ai], abs=0.04)
        assert draws[:, 1].mean() == pytest.approx(table.tokens[qi, ai], rel=0.05)


def test_missing_config_is_masked(tmp_path):
    d = tmp_path / "c"
    src = load_cache(make_synthetic_cache(tmp_path / "src", n_queries=6))
    with CacheWriter(
        d, meta={k: v for k, v in src.meta.items() if k not in ("schema", "schema_version")}
    ) as w:
        for q in src.queries.values():
            w.add_query(q)
        for r in src.records:
            if not (r["query_id"] == "q0002" and r["config_id"] == "beam:N=4,M=2"):
                w.add_record(r)
    table = OutcomeTable(d)
    ai = table.action_ids.index("beam:N=4,M=2")
    assert not table.mask[table.qindex["q0002"], ai]
    assert table.mask[:, ai].sum() == 5
    assert math.isinf(table.utility(0, 0)[table.qindex["q0002"], ai])
