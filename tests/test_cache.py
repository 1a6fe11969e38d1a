"""The rollout cache: round trip, resume bookkeeping, torn tails, corruption reported by file and line."""

from __future__ import annotations

import gzip
import json

import pytest

from rollouts.cache import CacheError, CacheWriter, load_cache
from rollouts.cache_rewrite import write_compressed_copy


def _query(qid: str) -> dict:
    return {"query_id": qid, "prompt_tokens": 12, "features": [0.1, -0.2, 0.3]}


def _pool(qid: str, seed: int = 0) -> dict:
    return {
        "query_id": qid, "config_id": "pool:n=2", "strategy": "sample_pool", "params": {"n": 2}, "seed": seed,
        "tokens": 7, "scorer_tokens": 0, "seconds": 0.5, "seconds_source": "modelled",
        "samples": [{"answer": "4", "correct": True, "tokens": 3}, {"answer": "5", "correct": False, "tokens": 4}],
    }


def test_round_trip_and_resume(tmp_path):
    d = tmp_path / "c"
    with CacheWriter(d, meta={"model": "m"}) as w:
        assert w.add_query(_query("a"))
        assert w.add_record(_pool("a"))
        assert not w.add_record(_pool("a"))  # same key: skipped, not duplicated
    with CacheWriter(d, meta={"model": "m"}) as w:  # reopened: knows what is done
        assert w.has("a", "pool:n=2", 0)
        assert not w.add_query(_query("a"))
        w.add_query(_query("b"))
        w.add_record(_pool("b"))
    cache = load_cache(d)
    assert cache.query_ids == ["a", "b"]
    assert [r["query_id"] for r in cache.records] == ["a", "b"]
    assert cache.records_for("a", "pool:n=2")[0]["samples"][0]["answer"] == "4"


def test_resume_refuses_other_settings(tmp_path):
    CacheWriter(tmp_path, meta={"model": "m1"}).close()
    with pytest.raises(CacheError, match="different model"):
        CacheWriter(tmp_path, meta={"model": "m2"})


def test_torn_tail_is_cut_not_lost(tmp_path):
    with CacheWriter(tmp_path, meta={}) as w:
        w.add_query(_query("a"))
        w.add_record(_pool("a"))
    rp = tmp_path / "records.jsonl"
    whole = rp.read_bytes()
    rp.write_bytes(whole + b'{"query_id": "a", "config_id": "po')  # a kill mid-write
    assert len(load_cache(tmp_path).records) == 1  # the reader ignores the unfinished line
    with CacheWriter(tmp_path, meta={}) as w:  # the writer cuts it before appending
        assert w.has("a", "pool:n=2", 0)
        w.add_record(_pool("a", seed=1))
    assert rp.read_bytes().startswith(whole)
    assert len(load_cache(tmp_path).records) == 2


def test_corrupt_line_names_file_and_line(tmp_path):
    with CacheWriter(tmp_path, meta={}) as w:
        w.add_query(_query("a"))
        w.add_record(_pool("a"))
        w.add_record(_pool("a", seed=1))
    rp = tmp_path / "records.jsonl"
    lines = rp.read_text().splitlines()
    lines[0] = lines[0][:20] + "#garbage"
    rp.write_text("\n".join(lines) + "\n")
    with pytest.raises(CacheError, match=r"records\.jsonl:1: corrupt cache line"):
        load_cache(tmp_path)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("tokens"), "missing field 'tokens'"),
        (lambda r: r.update(tokens=-1), "negative token count"),
        (lambda r: r.update(strategy="tree_of_thought"), "unknown strategy"),
        (lambda r: r.update(seconds=float("nan")), "seconds"),
        (lambda r: r["samples"][0].update(tokens=-3), "negative token count"),
    ],
)
def test_invalid_records_are_named(tmp_path, mutate, message):
    with CacheWriter(tmp_path, meta={}) as w:
        w.add_query(_query("a"))
    rec = _pool("a")
    mutate(rec)
    with open(tmp_path / "records.jsonl", "a") as fh:
        fh.write(json.dumps(rec) + "\n")
    with pytest.raises(CacheError, match=message) as exc:
        load_cache(tmp_path)
    assert "records.jsonl:1" in str(exc.value)


def test_compressed_copy_loads(tmp_path):
    with CacheWriter(tmp_path / "src", meta={"model": "m"}) as w:
        w.add_query(_query("a"))
        w.add_record(_pool("a"))
    write_compressed_copy(tmp_path / "src", tmp_path / "dst")
    assert (tmp_path / "dst" / "records.jsonl.gz").exists()
    with gzip.open(tmp_path / "dst" / "records.jsonl.gz", "rt") as fh:
        assert json.loads(fh.readline())["query_id"] == "a"
    cache = load_cache(tmp_path / "dst")
    assert cache.meta["model"] == "m" and len(cache.records) == 1


def test_not_a_cache(tmp_path):
    with pytest.raises(CacheError, match="meta.json missing"):
        load_cache(tmp_path)


def test_rewrite_records_is_whole(tmp_path):
    from rollouts.cache_rewrite import rewrite_records

    with CacheWriter(tmp_path, meta={}) as w:
        w.add_query(_query("a"))
        w.add_record(_pool("a"))
        w.add_record(_pool("a", seed=1))
    assert rewrite_records(tmp_path, lambda r: {**r, "seconds": 2.0}) == 2
    assert [r["seconds"] for r in load_cache(tmp_path).records] == [2.0, 2.0]
    with pytest.raises(CacheError, match="negative token count"):
        rewrite_records(tmp_path, lambda r: {**r, "tokens": -1})
    assert [r["tokens"] for r in load_cache(tmp_path).records] == [7, 7]  # a bad rewrite changes nothing
