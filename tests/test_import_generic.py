"""The generic import format: validation, filling with provenance, error reporting, resume.

Uses the real bundled featurizer/tokenizer (loaded once per process by ``load_featurizer``). Latency
models here are SYNTHETIC (labelled so): the tests check that modelled seconds are the model's
prediction and are flagged, not what real hardware does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from rollouts.cache import CacheError, load_cache
from rollouts.importers import Importer, load_featurizer
from rollouts.importers.cli import main
from rollouts.importers.generic import GenericReader, LineError, parse_run
from rollouts.latency import LatencyModel, Round

DATA = Path(__file__).resolve().parent / "data"
EXAMPLE = DATA / "import_example.jsonl"
BAD = DATA / "import_bad.jsonl"
SYNTHETIC_LATENCY = {"coef": [0.05, 1e-4, 0.01, 0.002], "fit": {"label": "synthetic-test", "synthetic": True}}


def synthetic_latency() -> LatencyModel:
    return LatencyModel.from_dict(SYNTHETIC_LATENCY)


def latency_file(tmp_path: Path) -> str:
    p = tmp_path / "synthetic_latency.json"
    p.write_text(json.dumps(SYNTHETIC_LATENCY))
    return str(p)


def importer(out: Path, **kw) -> Importer:
    kw.setdefault("latency_model", synthetic_latency())
    return Importer(out, featurizer=load_featurizer(), progress=False, **kw)


def records(out: Path) -> dict[tuple[str, str], dict]:
    return {(r["query_id"], r["config_id"]): r for r in load_cache(out).records}


# ----------------------------------------------------------------------------------------------
# Validation (no model needed)

GOOD = {"query_id": "q", "question": "What is 1+1?", "reference": "2", "strategy": "best_of_n",
        "samples": [{"answer": "2", "tokens": 3}]}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"reference": None}, "missing 'reference'"),
        ({"question": ""}, "'question' (the query text) is empty"),
        ({"strategy": "mcts_magic"}, "unknown strategy name 'mcts_magic'"),
        ({"samples": [{"answer": "2", "tokens": -1}]}, "negative token count"),
        ({"samples": [{"answer": "2", "tokens": 2.5}]}, "'tokens' must be a whole number"),
        ({"samples": [{"tokens": 3}]}, "needs 'answer' (final answer text) or 'text'"),
        ({"samples": []}, "'samples' must be a non-empty list"),
        ({"samples": [{"answer": "2", "correct": "yes"}]}, "'correct' must be true, false or null"),
        ({"samples": [{"answer": "2", "seconds": -1}]}, "'seconds' is negative"),
        ({"result": {"answer": "2"}}, "give exactly one of 'samples'"),
        ({"refrence": "2"}, "unknown field(s) 'refrence'"),
        ({"seed": -1}, "'seed' must be a whole number >= 0"),
        ({"params": {"n": 0}}, "params.n is 0 but the pool has 1 samples"),
        ({"strategy": "beam_search"}, "takes a 'result', not 'samples'"),
        ({"score_scale": "percent"}, "'score_scale' must be one of"),
    ],
)
def test_parse_run_rejects(change, reason):
    obj = {**GOOD, **change}
    obj = {k: v for k, v in obj.items() if v is not None}
    with pytest.raises(LineError) as exc:
        parse_run(obj, "f.jsonl", 1)
    assert reason in str(exc.value)


def test_parse_run_maps_strategies():
    assert parse_run(GOOD, "f", 1).strategy == "sample_pool"
    beam = {**GOOD, "strategy": "beam_search", "result": {"answer": "2", "tokens": 5}}
    del beam["samples"]
    assert parse_run(beam, "f", 1).strategy == "search_result"
    beam["result"]["iterations"] = [{"width": 4, "max_gen_tokens": 10}]
    assert parse_run(beam, "f", 1).strategy == "beam_search"


# ----------------------------------------------------------------------------------------------
# Import


def test_worked_example_is_filled_and_labelled(tmp_path):
    out = tmp_path / "c"
    s = importer(out).run(GenericReader(EXAMPLE))
    assert (s.lines, s.imported, s.queries_new, len(s.errors)) == (3, 3, 2, 0)
    cache = load_cache(out)
    recs = records(out)
    fz = load_featurizer()

    pool = recs[("add-1", "pool:n=3,temperature=0.7")]
    assert [x["correct"] for x in pool["samples"]] == [True, False, True]
    assert pool["samples"][2]["answer"] == "42"  # extracted from the text
    text = "17 + 25 = 42, so the answer is $\\boxed{42}$."
    assert pool["samples"][2]["tokens"] == len(fz.tokenizer(text, add_special_tokens=False)["input_ids"])
    assert "text" not in pool["samples"][2]
    prov = pool["provenance"]
    assert prov["correct"] == "graded:math-verify"
    assert prov["answer"] == "extracted:math-verify+given:generic"
    assert prov["tokens"] == "given:generic+tokenizer:smollm2-135m-instruct"
    assert prov["source"] == "import_example.jsonl:1"
    assert pool["seconds_source"] == "modelled" and prov["seconds"] == "modelled:synthetic-test"
    p = cache.queries["add-1"]["prompt_tokens"]
    k_max = max(x["tokens"] for x in pool["samples"])
    assert pool["seconds"] == pytest.approx(synthetic_latency().predict([Round(p, 3, k_max)]), abs=1e-4)
    assert pool["params"] == {"n": 3, "temperature": 0.7}
    assert pool["tokens"] == sum(x["tokens"] for x in pool["samples"])
    # scored samples are charged what a reward model reads: prompt + sample
    assert pool["samples"][0]["scorer_tokens"] == p + 9 and prov["scorer_tokens"] == "modelled:prompt+sample tokens"

    beam = recs[("add-1", "beam_search:m=2,n=4")]
    assert beam["strategy"] == "search_result" and beam["params"]["method"] == "beam_search"
    assert beam["result"] == {"answer": "42", "correct": True}
    assert (beam["tokens"], beam["seconds"], beam["seconds_source"]) == (64, 1.8, "measured")
    assert beam["provenance"]["seconds"] == "given:generic"

    frac = recs[("frac-2", "pool:n=3,temperature=0.7")]
    assert [x["correct"] for x in frac["samples"]] == [True, True, False]  # 0.75 == 3/4; null is wrong
    assert frac["provenance"]["correct"] == "given:generic+graded:math-verify"
    assert (frac["seconds"], frac["seconds_source"]) == (0.9, "measured")

    q = cache.queries["add-1"]
    assert q["question"] is None and q["answer"] is None
    assert q["text_sha256"] == hashlib.sha256(b"What is 17 + 25?").hexdigest()
    assert len(q["features"]) == fz.describe()["dim"]
    from rollouts.prompts import build_messages

    assert q["prompt_tokens"] == len(fz.prompt_ids(build_messages("What is 17 + 25?")))

    meta = cache.meta
    assert meta["featurizer"] == fz.describe()
    assert meta["prompt"]["builder"] == "rollouts.prompts.build_messages"
    assert meta["sampling"]["prompt_suffix"] == meta["prompt"]["prompt_suffix"]
    assert meta["tokenizer"]["name"] == "smollm2-135m-instruct"
    assert meta["latency_model"]["fit"]["label"] == "synthetic-test"
    assert meta["imports"][0]["format"] == "generic"
    assert s.share("correct", "graded") == pytest.approx(5 / 7)
    assert s.cache["configs"]["pool:n=3,temperature=0.7"]["majority_accuracy"] == 1.0


def test_keep_text_stores_texts(tmp_path):
    out = tmp_path / "c"
    importer(out, keep_text=True).run(GenericReader(EXAMPLE))
    cache = load_cache(out)
    assert cache.queries["frac-2"]["question"] == "Write 6/8 in lowest terms."
    assert cache.queries["frac-2"]["answer"] == "\\frac{3}{4}"
    pool = records(out)[("add-1", "pool:n=3,temperature=0.7")]
    assert pool["samples"][2]["text"].startswith("17 + 25")


def test_without_latency_model_seconds_are_missing(tmp_path):
    out = tmp_path / "c"
    importer(out, latency_model=None).run(GenericReader(EXAMPLE))
    pool = records(out)[("add-1", "pool:n=3,temperature=0.7")]
    assert pool["seconds"] is None and pool["seconds_source"] == "missing"


def _write(path: Path, objs: list) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs))
    return path


def test_scores_logit_and_range(tmp_path):
    line = {**GOOD, "samples": [{"answer": "2", "tokens": 3, "score": 2.0}, {"answer": "3", "tokens": 3, "score": -1.0}]}
    f = _write(tmp_path / "in.jsonl", [line])
    s = importer(tmp_path / "a").run(GenericReader(f))
    assert "score 2.0 is outside [0, 1]" in s.errors.lines()[0] and s.imported == 0
    s = importer(tmp_path / "b", score_scale="logit").run(GenericReader(f))
    (rec,) = load_cache(tmp_path / "b").records
    assert rec["samples"][0]["score"] == pytest.approx(0.8807970779778823)
    assert rec["samples"][0]["raw_score"] == 2.0
    assert rec["provenance"]["score"] == "given:generic:sigmoid(raw_score)"


def test_query_id_reused_for_another_question(tmp_path):
    a = {**GOOD}
    b = {**GOOD, "question": "What is 2+2?", "strategy": "sample_pool", "params": {"t": 1}}
    s = importer(tmp_path / "c").run(GenericReader(_write(tmp_path / "in.jsonl", [a, b])))
    assert s.imported == 1
    assert s.errors.lines() == [f"{tmp_path / 'in.jsonl'}:2: query_id 'q' was used at in.jsonl:1 for a different question"]
    s = importer(tmp_path / "c").run(GenericReader(_write(tmp_path / "in2.jsonl", [b])))
    assert "already in the cache for a different question" in s.errors.lines()[0]


# ----------------------------------------------------------------------------------------------
# Malformed input, --on-error, re-runs (through the CLI)


def test_cli_reports_bad_lines_and_imports_the_rest(tmp_path, capsys):
    out = tmp_path / "c"
    rc = main(["generic", str(BAD), "--out", str(out), "--latency-model", latency_file(tmp_path), "--no-progress"])
    assert rc == 1
    err = capsys.readouterr().err
    for line, reason in [
        (2, "invalid JSON"),
        (3, "missing 'reference'"),
        (4, "unknown strategy name 'tree_of_thought'"),
        (5, "negative token count"),
        (6, "duplicate query/strategy key ('ok-1', 'pool:n=2', 0) (first at line 1)"),
    ]:
        (hit,) = [x for x in err.splitlines() if x.startswith(f"{BAD}:{line}: ")]
        assert reason in hit, (line, err)
    recs = load_cache(out).records
    assert sorted(r["query_id"] for r in recs) == ["ok-1", "ok-2"]
    assert {r["query_id"]: [x["answer"] for x in r["samples"]] for r in recs}["ok-1"] == ["4", "5"]  # the first


def test_stop_writes_nothing_of_the_bad_line_and_resumes(tmp_path, capsys):
    out = tmp_path / "c"
    lat = latency_file(tmp_path)
    args = ["--out", str(out), "--latency-model", lat, "--no-progress"]
    assert main(["generic", str(BAD), *args, "--on-error", "stop"]) == 2
    assert f"{BAD}:2: invalid JSON" in capsys.readouterr().err
    assert [r["query_id"] for r in load_cache(out).records] == ["ok-1"]
    assert sorted(load_cache(out).queries) == ["ok-1"]
    # same again: stops at the same line, nothing duplicated
    assert main(["generic", str(BAD), *args, "--on-error", "stop"]) == 2
    assert len(load_cache(out).records) == 1
    # fix the file (drop the bad lines) and resume
    fixed = tmp_path / "fixed.jsonl"
    good = [line for i, line in enumerate(BAD.read_text().splitlines(), 1) if i in (1, 7)]
    fixed.write_text("\n".join(good) + "\n")
    capsys.readouterr()
    assert main(["generic", str(fixed), *args, "--on-error", "stop", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["imported"], summary["already_present"]) == (1, 1)
    before = (out / "records.jsonl").read_bytes()
    assert main(["generic", str(fixed), *args]) == 0
    assert (out / "records.jsonl").read_bytes() == before  # a re-run changes nothing
    assert sorted(r["query_id"] for r in load_cache(out).records) == ["ok-1", "ok-2"]


def test_rerun_skips_present_keys_and_keeps_meta(tmp_path):
    out = tmp_path / "c"
    importer(out).run(GenericReader(EXAMPLE))
    rec_bytes, q_bytes = (out / "records.jsonl").read_bytes(), (out / "queries.jsonl").read_bytes()
    s = importer(out).run(GenericReader(EXAMPLE))
    assert (s.imported, s.already_present, s.queries_new) == (0, 3, 0)
    assert (out / "records.jsonl").read_bytes() == rec_bytes and (out / "queries.jsonl").read_bytes() == q_bytes
    assert len(load_cache(out).meta["imports"]) == 1


def test_import_refuses_another_featurizer_or_latency_model(tmp_path):
    out = tmp_path / "c"
    importer(out).run(GenericReader(EXAMPLE))
    other = LatencyModel.from_dict({"coef": [0.1, 0, 0, 0], "fit": {"label": "other"}})
    with pytest.raises(CacheError, match="another latency model"):
        importer(out, latency_model=other).run(GenericReader(EXAMPLE))
    meta = json.loads((out / "meta.json").read_text())
    meta["featurizer"]["layer"] = -2
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CacheError, match="featurized with"):
        importer(out).run(GenericReader(EXAMPLE))


def test_cli_limit_and_missing_file(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["generic", str(EXAMPLE), "--out", str(out), "--limit", "1", "--no-latency-model",
                 "--no-progress"]) == 0
    assert len(load_cache(out).records) == 1
    assert main(["generic", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    assert "error:" in capsys.readouterr().err


def test_docs_example_is_the_test_file():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "import.md").read_text()
    block = doc.split("```jsonl\n", 1)[1].split("```", 1)[0]
    assert block == EXAMPLE.read_text()


def test_import_into_a_cache_with_other_features_is_refused(tmp_path, synthetic_cache):
    out = tmp_path / "c"
    shutil.copytree(synthetic_cache, out)
    with pytest.raises(CacheError, match="queries have 8 features"):
        importer(out).run(GenericReader(EXAMPLE))


def test_threads_default_and_refusal(tmp_path, capsys):
    """--threads defaults to 1 (measured fastest on a busy 2-core machine; 0: every core); a negative
    count is refused before anything is written."""
    from rollouts.importers.cli import build_parser

    assert build_parser().parse_args(["generic", "x", "--out", "y"]).threads == 1
    out = tmp_path / "c"
    assert main(["generic", str(BAD), "--out", str(out), "--threads", "-1", "--no-progress"]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(err) == 1 and err[0].startswith("error: --threads") and not out.exists()
