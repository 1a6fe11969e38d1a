"""Import of the Qwen2.5-Math harness output in ../shared (third-party; read at run time, never copied).

The reference statistics are computed here independently from the raw file (plain Python, no
project code) and compared with what the imported cache yields through the project's selectors.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from rollouts.cache import load_cache
from rollouts.importers import Importer, load_featurizer
from rollouts.importers.qwen25math import QwenHarnessReader
from rollouts.stats import summarize
from rollouts.strategies.selectors import select

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
QWEN_DIR = SHARED / "data" / "qwen25math_rm_maj_math100"
QWEN_FILE = QWEN_DIR / "math_cot_100.jsonl"

pytestmark = pytest.mark.skipif(not QWEN_FILE.exists(), reason=f"shared data absent: {QWEN_FILE} not found")


def raw_rows(limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in QWEN_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:limit] if limit else rows


def independent_stats(rows: list[dict], ties: str = "random") -> dict[str, float]:
    """Per-sample accuracy, pass@8, majority@8 (exact-string vote; ties broken at random and counted as
    the expectation, as the project counts them, or ``ties="first"``: the first tied answer, as the
    harness does), RM best@8 (argmax)."""
    per_sample = [c for r in rows for c in r["score"]]
    maj, rm, pass_k = [], [], []
    for r in rows:
        counts = Counter(r["pred"])
        top = max(counts.values())
        tied = [p for p in dict.fromkeys(r["pred"]) if counts[p] == top]  # in order of first appearance
        tied = tied[:1] if ties == "first" else tied
        maj.append(sum(r["score"][r["pred"].index(p)] for p in tied) / len(tied))
        rewards = [s[0] for s in r["pred_score"]]
        rm.append(r["score"][rewards.index(max(rewards))])
        pass_k.append(any(r["score"]))
    n = len(rows)
    return {"acc": sum(per_sample) / len(per_sample), "maj": sum(maj) / n, "rm": sum(rm) / n, "pass": sum(pass_k) / n}


def cache_stats(out: Path) -> dict[str, float]:
    cache = load_cache(out)
    (cid,) = cache.config_ids
    recs = cache.records
    best = []
    for r in recs:
        ss = r["samples"]
        best.append(ss[select("best_score", [s["answer"] for s in ss], [s["score"] for s in ss])]["correct"])
    e = summarize(cache)["configs"][cid]
    return {"acc": e["accuracy"], "maj": e["majority_accuracy"], "rm": sum(best) / len(best), "pass": e["pass_at_n"]}


def run_import(out: Path, source: Path = QWEN_DIR):
    reader = QwenHarnessReader(source, scorer="Qwen2.5-Math-RM-72B")
    return Importer(out, featurizer=load_featurizer(), latency_model=None, progress=False).run(reader)


def check_cache(out: Path, rows: list[dict], check_sha: bool = True) -> None:
    cache = load_cache(out)
    assert len(cache.queries) == len(rows) and len(cache.records) == len(rows)
    qtext = (out / "queries.jsonl").read_text()
    for row in rows:
        q = cache.queries[f"math_cot_100:{row['idx']}"]
        assert q["text_sha256"] == hashlib.sha256(row["question"].encode()).hexdigest()
        assert q["dataset"] == "qwen25math:math_cot_100" and q["index"] == row["idx"]
        assert q["question"] is None and row["question"] not in qtext  # third-party text not stored
        (rec,) = [r for r in cache.records if r["query_id"] == q["query_id"]]
        assert [s["correct"] for s in rec["samples"]] == row["score"]
        assert [s["answer"] for s in rec["samples"]] == row["pred"]
        assert [s["raw_score"] for s in rec["samples"]] == [x[0] for x in row["pred_score"]]
        assert all(0 < s["score"] < 1 and s["tokens"] > 0 for s in rec["samples"])
        assert rec["provenance"]["correct"] == "given:qwen25math"
        assert rec["provenance"]["score"] == "given:qwen25math:sigmoid(raw_score)"
        assert rec["provenance"]["tokens"] == "tokenizer:smollm2-135m-instruct"
        assert rec["seconds_source"] == "missing"  # no latency model given in this test
    if check_sha:
        assert cache.meta["imports"][0]["files"][0]["sha256"] == (
            "5b9128525733336c4b5bf5d3222f72b18655a305258dc09c301b546e9365ba5e")


def test_short_rows_match_independent_computation(tmp_path):
    # the 10 shortest questions (featurizing long MATH prompts on a busy CPU is slow), in a temp copy
    rows = sorted(raw_rows(), key=lambda r: len(r["question"]))[:10]
    src = tmp_path / "src" / QWEN_FILE.name
    src.parent.mkdir()
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    s = run_import(tmp_path / "q", src)
    assert (s.imported, len(s.errors), s.samples) == (10, 0, 80)
    assert s.share("correct", "given") == 1.0 and s.share("tokens", "tokenizer") == 1.0
    check_cache(tmp_path / "q", rows, check_sha=False)
    assert cache_stats(tmp_path / "q") == pytest.approx(independent_stats(rows))


@pytest.mark.slow
def test_full_import_reproduces_published_statistics(tmp_path):
    rows = raw_rows()
    assert len(rows) == 100
    s = run_import(tmp_path / "q")
    assert (s.imported, len(s.errors), s.samples) == (100, 0, 800)
    check_cache(tmp_path / "q", rows)
    ind = independent_stats(rows)
    got = cache_stats(tmp_path / "q")
    assert got == pytest.approx(ind)
    # and the numbers published in the data's README, whose majority takes the first tied answer (the
    # project breaks ties at random: 0.925 where the first-on-ties vote gives 0.93)
    published = {"acc": 0.91, "maj": 0.93, "rm": 0.94, "pass": 0.96}
    assert {**got, "maj": independent_stats(rows, ties="first")["maj"]} == pytest.approx(published, abs=5e-3)
    assert got["maj"] == pytest.approx(0.925, abs=1e-9)
    # a re-run adds nothing
    again = run_import(tmp_path / "q")
    assert (again.imported, again.already_present) == (0, 100)
