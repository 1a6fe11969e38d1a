"""The bundled default cache loads through the reader API and matches what docs/collect.md reports."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rollouts.cache import RolloutCache, load_cache
from rollouts.stats import summarize

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "data" / "default_cache"
POOL_N = 16  # the bundled menu's pool size (configs/collect_default.yaml)


@pytest.fixture(scope="module")
def cache() -> RolloutCache:
    return load_cache(CACHE)


def test_bundled_cache_is_complete_over_the_cpu_menu(cache: RolloutCache):
    assert len(cache.query_ids) >= 300
    assert cache.meta["model"] == "smollm2-135m-instruct"
    configs = cache.config_ids
    assert f"pool:n={POOL_N}" in configs and sum(c.startswith("beam:") for c in configs) == 4
    for q in cache.query_ids:
        assert len(cache.queries[q]["features"]) > 0
        for c in configs:
            recs = cache.records_for(q, c)
            assert len(recs) == 1, (q, c)
            r = recs[0]
            assert r["tokens"] > 0 and r["seconds"] is not None and r["seconds"] > 0
            if c.startswith("beam:"):
                assert r["tokens"] == sum(it["tokens"] for it in r["iterations"])
            else:
                assert len(r["samples"]) == POOL_N


def test_readme_reports_the_bundled_cache_figures(cache: RolloutCache):
    """Per-strategy accuracy, mean tokens and mean seconds in docs/collect.md come from this cache."""
    s = summarize(cache)
    readme = (ROOT / "docs" / "collect.md").read_text()
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(r"^\| `([^`]+)` \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|$", readme, re.M)}
    for cid, c in s["configs"].items():
        key = cid if cid.startswith("beam:") else f"pool:n={POOL_N}/sample@1"
        acc, tok, sec = (float(x) for x in rows[key])
        per_sample_tokens = c["mean_tokens"] / (POOL_N if cid.startswith("pool:") else 1)
        assert abs(acc - c["accuracy"]) < 6e-4, cid
        assert abs(tok - per_sample_tokens) < 0.06, cid
        if cid.startswith("beam:"):
            assert abs(sec - c["mean_seconds"]) < 6e-3, cid
