"""Token counts for imports without the hub: a tokenizer-only folder, a single tokenizer.json, a hub id
that is not cached locally (fails at once), and approximate counts labelled per record and in stats.

The tokenizer-only folder is built here from the bundled SmolLM2 tokenizer saved alone (no
config.json, no weights). The latency model is SYNTHETIC (labelled).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import collect
from rollouts.cache import load_cache
from rollouts.importers import Importer, load_featurizer, load_tokenizer
from rollouts.importers.generic import GenericReader
from rollouts.latency import LatencyModel
from rollouts.models import ModelNotFound

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "data" / "import_example.jsonl"
SYNTHETIC = LatencyModel.from_dict({"coef": [0.05, 1e-4, 0.01, 0.002], "fit": {"label": "synthetic-test"}})
TEXT = "17 + 25 = 42, so the answer is $\\boxed{42}$."


@pytest.fixture(scope="module")
def tokenizer_only(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tok") / "smollm2-tokenizer"
    load_tokenizer("smollm2-135m-instruct").save_pretrained(folder)
    assert (folder / "tokenizer.json").exists() and not (folder / "config.json").exists()
    return folder


def _count(tok) -> int:
    return len(tok(TEXT, add_special_tokens=False)["input_ids"])


def test_tokenizer_only_folder_bare_folder_and_file(tokenizer_only, tmp_path):
    want = _count(load_tokenizer("smollm2-135m-instruct"))
    assert _count(load_tokenizer(str(tokenizer_only))) == want
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(tokenizer_only / "tokenizer.json", bare / "tokenizer.json")  # nothing else
    assert _count(load_tokenizer(str(bare))) == want
    assert _count(load_tokenizer(str(bare / "tokenizer.json"))) == want
    with pytest.raises(ModelNotFound, match="has no tokenizer.json"):
        load_tokenizer(str(tmp_path / "bare" / ".."))  # a folder with neither
    with pytest.raises(ModelNotFound, match="not in the local HF cache"):
        load_tokenizer("no-such-org/no-such-model")


def test_hub_id_without_network_fails_at_once(tmp_path):
    out = tmp_path / "c"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, str(ROOT / "collect.py"), "import", "generic", str(EXAMPLE), "--out", str(out),
                        "--tokenizer", "Qwen/Qwen2.5-Math-7B-Instruct-not-cached", "--no-progress"],
                       capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
    wall = time.monotonic() - t0
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: tokenizer 'Qwen/Qwen2.5-Math-7B-Instruct-not-cached'")
    assert wall < 5.0, wall
    assert not out.exists()  # nothing partial


def test_approximate_counts_labelled_and_shown_by_stats(tokenizer_only, tmp_path, capsys):
    out = tmp_path / "approx"
    Importer(out, featurizer=load_featurizer(), tokenizer=load_tokenizer(str(tokenizer_only)),
             tokenizer_name=str(tokenizer_only), latency_model=SYNTHETIC, progress=False,
             meta={"model": "some-api-model"}).run(GenericReader(EXAMPLE))
    recs = {r["query_id"]: r for r in load_cache(out).records if r["strategy"] == "sample_pool"}
    prov = recs["add-1"]["provenance"]  # one sample's tokens were counted from its text
    assert prov["tokens"].endswith(f"tokenizer:{tokenizer_only}")
    assert "not the generating model's tokenizer" in prov["tokens_approximate"]
    assert "tokens_approximate" not in recs["frac-2"]["provenance"]  # all tokens given
    assert collect.main(["stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "approximate token counts: 1 of 3 records" in text and str(tokenizer_only) in text
    assert collect.main(["stats", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["tokens_approximate"] == 1

    exact = tmp_path / "exact"  # the user says the tokenizer is the generator's own
    Importer(exact, featurizer=load_featurizer(), tokenizer=load_tokenizer(str(tokenizer_only)),
             tokenizer_name=str(tokenizer_only), latency_model=SYNTHETIC, progress=False,
             tokenizer_exact=True).run(GenericReader(EXAMPLE))
    assert not any("tokens_approximate" in r["provenance"] for r in load_cache(exact).records)
    assert load_cache(exact).meta["tokenizer"]["exact"] is True
