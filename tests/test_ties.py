"""Ties: the evaluation's tolerance, and random (seeded) tie-breaking of the selectors and the outcome table."""

from __future__ import annotations

import numpy as np
import pytest

from env.pool_outcomes import expected_selected_correct
from evaluation import bootstrap
from rollouts.strategies.selectors import select, tied_winners


def test_below_ignores_float_ties():
    assert not bootstrap.below(-1e-15) and not bootstrap.below(0.0)
    assert bootstrap.below(-1e-6)


def test_bootstrap_of_the_best_static_itself_is_a_tie():
    rng = np.random.default_rng(0)
    u = rng.random((50, 5)) * np.array([1.0, 1.1, 0.9, 1.0, 0.8])  # column sums as float noise makes them
    best = int(u.mean(axis=0).argmax())
    r = bootstrap.bootstrap_vs_best_static(u, np.full(50, best), n_boot=200, seed=1)
    assert r["diff"] == pytest.approx(0.0, abs=1e-12)
    assert r["ci90"][1] == pytest.approx(0.0, abs=1e-12)
    assert not bootstrap.below(r["ci90"][1])
    worse = bootstrap.bootstrap_vs_best_static(u, np.full(50, int(u.mean(axis=0).argmin())), n_boot=200, seed=1)
    assert bootstrap.below(worse["ci90"][1])


def test_tied_winners_and_seeded_random_tie_break():
    assert tied_winners("majority", ["3", "4", "4", "3"]) == [0, 1]
    assert tied_winners("majority", ["3", "4", "4"]) == [1]
    assert tied_winners("majority", [None, "5", None]) == [1]
    assert tied_winners("best_score", ["1", "2", "3"], [0.5, 0.9, 0.9]) == [1, 2]
    assert tied_winners("weighted", ["1", "2", "2"], [0.6, 0.3, 0.3]) == [0, 1]  # 0.3 + 0.3 vs 0.6
    assert select("majority", ["3", "4", "4", "3"]) == 0  # no generator: earliest
    picks = [select("majority", ["3", "4", "4", "3"], rng=np.random.default_rng(s)) for s in range(200)]
    assert set(picks) == {0, 1} and 70 < picks.count(0) < 130
    again = [select("majority", ["3", "4", "4", "3"], rng=np.random.default_rng(s)) for s in range(200)]
    assert picks == again  # seeded: reproducible


def test_expected_correctness_does_not_depend_on_pool_order():
    rng = np.random.default_rng(3)
    for selector in ("majority", "weighted", "best_score"):
        answers = rng.integers(-1, 3, size=(300, 4))
        scores = np.round(rng.random((300, 4)) * 4) / 4  # coarse: many exact ties
        correct = (answers == 0).astype(float)
        perm = rng.permutation(4)
        a = expected_selected_correct(selector, answers, scores, correct)
        b = expected_selected_correct(selector, answers[:, perm], scores[:, perm], correct[:, perm])
        assert np.allclose(a, b), selector
        # and it is the mean over tied_winners of the pure-Python selector
        for i in range(40):
            keys = [None if x < 0 else str(x) for x in answers[i]]
            w = tied_winners(selector, keys, list(scores[i]))
            assert a[i] == pytest.approx(np.mean(correct[i, w]))
