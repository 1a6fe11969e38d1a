"""Imported pools go through the same budget derivation as collected ones (env/outcomes.py).

Pools of K samples yield budgets N < K by the subset expectation with the project's selectors; the
expectations are recomputed here by brute force over all subsets with ``select``. The latency model
is SYNTHETIC (labelled).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from rollouts.cache import load_cache
from rollouts.importers import Importer, load_featurizer
from rollouts.importers.generic import GenericReader
from rollouts.importers.search_and_learn import SearchAndLearnReader
from rollouts.latency import LatencyModel, Round
from rollouts.strategies.selectors import tied_winners

outcomes = pytest.importorskip("env.outcomes", reason="env/outcomes.py not there yet")

DATA = Path(__file__).resolve().parent / "data"
SYNTHETIC = LatencyModel.from_dict({"coef": [0.05, 1e-4, 0.01, 0.002], "fit": {"label": "synthetic-test"}})


def _import(out: Path, reader) -> None:
    s = Importer(out, featurizer=load_featurizer(), latency_model=SYNTHETIC, progress=False).run(reader)
    assert not s.errors


def brute_force(samples: list[dict], selector: str | None, n: int) -> float:
    vals = []
    for sub in itertools.combinations(range(len(samples)), n):
        ss = [samples[i] for i in sub]
        if selector is None:
            vals.append(float(bool(ss[0]["correct"])))
            continue
        # ties broken uniformly at random: the mean over the tied winners
        w = tied_winners(selector, [s["answer"] for s in ss], [s.get("score") for s in ss])
        vals.append(float(np.mean([float(bool(ss[i]["correct"])) for i in w])))
    return float(np.mean(vals))


def test_imported_pools_derive_budgets_with_the_selectors(tmp_path):
    out = tmp_path / "c"
    _import(out, SearchAndLearnReader(DATA / "import_sal_best_of_n.jsonl"))
    cache = load_cache(out)
    table = outcomes.OutcomeTable(cache)
    cfg = "pool:n=4,agg_strategy=last,scorer=prm"
    ids = set(table.action_ids)
    for a in (f"{cfg}/sample@1", f"{cfg}/majority@2", f"{cfg}/best_score@2", f"{cfg}/weighted@4"):
        assert a in ids, a
    for ai, action in enumerate(table.menu):
        if action.race is not None:
            continue  # races: tests/test_races.py
        for qi, q in enumerate(table.query_ids):
            (rec,) = cache.records_for(q, cfg)
            want = brute_force(rec["samples"], action.selector, action.n)
            assert table.correct[qi, ai] == pytest.approx(want), (action.id, q)
            assert table.mask[qi, ai]
            # seconds of a smaller budget: the latency model on one round of width N
            toks = [s["tokens"] for s in rec["samples"]]
            mean_max = np.mean([max(toks[i] for i in sub) for sub in itertools.combinations(range(4), action.n)])
            p = cache.queries[q]["prompt_tokens"]
            assert table.seconds[qi, ai] == pytest.approx(SYNTHETIC.predict([Round(p, action.n, mean_max)]))


def test_generic_import_with_search_results_builds_a_menu(tmp_path):
    out = tmp_path / "c"
    _import(out, GenericReader(DATA / "import_example.jsonl"))
    table = outcomes.OutcomeTable(out)
    assert "beam_search:m=2,n=4" in table.action_ids
    ai = table.action_ids.index("beam_search:m=2,n=4")
    qi = table.query_ids.index("add-1")
    assert table.correct[qi, ai] == 1.0 and table.seconds[qi, ai] == 1.8
    assert not table.mask[table.query_ids.index("frac-2"), ai]  # no beam record for that query
