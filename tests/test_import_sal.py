"""search-and-learn adapter on small hand-made files in that project's documented column layout.

The completions are our own toy text; the latency model is SYNTHETIC (labelled) so modelled
seconds can be checked against its prediction.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rollouts.cache import load_cache
from rollouts.importers import Importer, load_featurizer
from rollouts.importers.generic import LineError
from rollouts.importers.search_and_learn import SearchAndLearnReader, aggregate, infer_approach, row_to_run
from rollouts.latency import LatencyModel

DATA = Path(__file__).resolve().parent / "data"
BON = DATA / "import_sal_best_of_n.jsonl"
BEAM = DATA / "import_sal_beam_search.jsonl"
SYNTHETIC = LatencyModel.from_dict({"coef": [0.05, 1e-4, 0.01, 0.002], "fit": {"label": "synthetic-test"}})


def run(out: Path, reader) -> object:
    return Importer(out, featurizer=load_featurizer(), latency_model=SYNTHETIC, progress=False).run(reader)


def test_aggregate_like_search_and_learn():
    assert aggregate([0.2, 0.9, 0.5], "last") == 0.5
    assert aggregate([0.2, 0.9, 0.5], "min") == 0.2
    assert aggregate([0.5, 0.5], "prod") == 0.25
    assert aggregate([], "last") is None and aggregate(0.7) == 0.7
    with pytest.raises(LineError):
        aggregate(["x"])


def test_infer_approach_from_file_name():
    assert infer_approach(Path("Llama-beam_search-completions.jsonl")) == "beam_search"
    assert infer_approach(Path("dvts.parquet")) == "dvts"
    assert infer_approach(Path("x.jsonl")) == "best_of_n"


def test_row_errors():
    with pytest.raises(LineError, match="missing column 'completions'"):
        row_to_run({"problem": "p", "scores": []}, 0, approach="best_of_n", agg="last", query_prefix="f",
                   dataset=None, prm="prm")
    with pytest.raises(LineError, match="one entry per completion"):
        row_to_run({"problem": "p", "completions": ["a", "b"], "scores": [[0.1]]}, 0, approach="best_of_n",
                   agg="last", query_prefix="f", dataset=None, prm="prm")


def test_best_of_n_pools(tmp_path):
    out = tmp_path / "c"
    s = run(out, SearchAndLearnReader(BON, dataset="toy", prm="toy-prm"))
    assert (s.imported, s.samples, len(s.errors)) == (3, 12, 0)
    cache = load_cache(out)
    recs = {r["query_id"]: r for r in cache.records}
    assert set(recs) == {"toy/mult/1.json", "toy/frac/2.json", "toy/sub/3.json"}
    mult = recs["toy/mult/1.json"]
    assert mult["config_id"] == "pool:n=4,agg_strategy=last,scorer=toy-prm"
    assert [x["answer"] for x in mult["samples"]] == ["12", "7", "12", "14"]
    assert [x["correct"] for x in mult["samples"]] == [True, False, True, False]
    assert [x["score"] for x in mult["samples"]] == [0.95, 0.2, 0.85, 0.4]  # last step score
    assert [x["tokens"] for x in mult["samples"]] == [31, 29, 22, 31]  # completion_tokens
    assert mult["provenance"]["tokens"] == "given:search_and_learn"
    assert mult["provenance"]["correct"] == "graded:math-verify"
    assert mult["provenance"]["answer"] == "extracted:math-verify"
    assert mult["seconds_source"] == "modelled"
    frac = recs["toy/frac/2.json"]
    assert [x["correct"] for x in frac["samples"]] == [True, True, False, True]  # 2.5 == 5/2
    sub = recs["toy/sub/3.json"]  # completion_tokens -1: counted with the tokenizer
    assert sub["provenance"]["tokens"] == "tokenizer:smollm2-135m-instruct"
    assert all(x["tokens"] > 10 for x in sub["samples"])
    q = cache.queries["toy/frac/2.json"]
    assert (q["dataset"], q["index"], q["meta"]) == ("toy", 1, {"level": 2, "subject": "Prealgebra"})
    assert cache.meta["imports"][0]["approach"] == "best_of_n"


def test_beam_search_results_and_parquet(tmp_path):
    out = tmp_path / "c"
    s = run(out, SearchAndLearnReader(BEAM))
    assert (s.imported, s.results) == (2, 2)
    recs = {r["query_id"]: r for r in load_cache(out).records}
    a = recs["toy/mult/1.json"]
    assert a["strategy"] == "search_result" and a["params"]["method"] == "beam_search"
    assert a["result"]["answer"] == "12" and a["result"]["correct"] is True
    assert a["tokens"] == 62 and "lower bound" in a["provenance"]["tokens"]
    assert a["provenance"]["seconds"] == "modelled:synthetic-test:one-round approximation (width 2, params.n)"
    assert [b["score"] for b in a["result"]["beams"]] == [0.95, 0.4]
    b = recs["toy/sub/3.json"]
    assert b["result"]["correct"] is False and b["provenance"]["tokens"].startswith("tokenizer:")

    # the same rows as Parquet (the format search-and-learn pushes to the Hub)
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in BON.read_text().splitlines()]
    for r in rows:
        r["completion_tokens"] = r["completion_tokens"] if isinstance(r["completion_tokens"], list) else [-1] * 4
        for k in ("agg_scores", "pred_weighted@4", "pred_maj@4", "pred_naive@4"):
            r.pop(k, None)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "best_of_n.parquet")
    out2 = tmp_path / "p"
    s2 = run(out2, SearchAndLearnReader(tmp_path / "best_of_n.parquet"))
    assert (s2.imported, len(s2.errors)) == (3, 0)
    got = {r["query_id"]: [x["correct"] for x in r["samples"]] for r in load_cache(out2).records}
    assert got["toy/mult/1.json"] == [True, False, True, False]


def test_cli_dispatch(tmp_path, capsys):
    from rollouts.importers.cli import main

    lat = tmp_path / "lat.json"
    lat.write_text(json.dumps(SYNTHETIC.to_dict()))
    rc = main(["import", "sal", str(BEAM), "--out", str(tmp_path / "c"), "--latency-model", str(lat),
               "--no-progress", "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["format"] == "search_and_learn" and summary["imported"] == 2
