"""A real third-party import without timings or the generator's tokenizer: OpenAI's GPT-3 GSM8K
solutions (``../shared/data/gsm8k/example_model_solutions.jsonl``, read in place; see its README).

Each question has one finetuned sample and one verifier-selected solution from the 6B and the 175B
model: two single-sample pool configs and two search-result configs, no seconds, no token counts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

import collect
from env.allocate_env import AllocateEnv
from env.outcomes import OutcomeTable
from policies.base import lambda_grid
from rollouts.cache import load_cache
from rollouts.importers.cli import main
from tests.fixtures import pre13_defaults as pre13

SRC = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "example_model_solutions.jsonl"
SHA256 = "4bc62db838f8418365d51c627bd66294cbdca9fb7f01519cb13f0dce8c51580b"  # from its README
N = 40


def write_generic(path: Path) -> dict[str, float]:
    """Generic lines for the first N questions; returns each config's accuracy computed from the file."""
    acc: dict[str, list[bool]] = {}
    lines = []
    with open(SRC, encoding="utf-8") as fh:
        for i, row in zip(range(N), fh, strict=False):
            row = json.loads(row)
            ref = row["ground_truth"].split("A:")[-1].strip()
            q = {"query_id": f"gsm8k-test-{i}", "question": row["question"], "reference": ref,
                 "dataset": "gsm8k", "index": i}
            for size in ("6b", "175b"):
                ft, ver = row[f"{size}_finetuning"], row[f"{size}_verification"]
                lines.append({**q, "strategy": "best_of_n", "params": {"model": f"gpt3-{size}"},
                              "samples": [{"text": ft["solution"], "correct": ft["is_correct"]}]})
                lines.append({**q, "strategy": "search_result", "params": {"model": f"gpt3-{size}", "verifier": 100},
                              "result": {"text": ver["solution"], "correct": ver["is_correct"]}})
                acc.setdefault(f"pool:n=1,model=gpt3-{size}", []).append(ft["is_correct"])
                acc.setdefault(f"search_result:model=gpt3-{size},verifier=100", []).append(ver["is_correct"])
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {k: float(np.mean(v)) for k, v in acc.items()}


@pytest.mark.slow
def test_gpt3_gsm8k_solutions_import_without_timings(tmp_path, capsys):
    want = write_generic(tmp_path / "gpt3.jsonl")
    out = tmp_path / "cache"
    assert main(["generic", str(tmp_path / "gpt3.jsonl"), "--out", str(out), "--model", "gpt3",
                 "--feature-store", "none", "--no-progress", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries_new"] == N and summary["imported"] == 4 * N and not summary["errors"]
    cache = load_cache(out)
    for cid, acc in want.items():  # correctness kept as given
        assert summary["cache"]["configs"][cid]["accuracy"] == pytest.approx(acc), cid
    # every token count came from the SmolLM2 tokenizer, not GPT-3's: labelled approximate
    assert summary["cache"]["tokens_approximate"] == 4 * N
    assert collect.main(["stats", str(out)]) == 0
    assert f"approximate token counts: {4 * N} of {4 * N} records" in capsys.readouterr().out
    assert all(r["seconds"] is None and r["seconds_source"] == "missing" for r in cache.records)
    (entry,) = cache.meta["imports"]
    assert entry["options"]["latency"] == "none" and entry["counts"]["imported"] == 4 * N

    table = OutcomeTable(cache)
    assert len(table.menu) == 4 and not table.latency_available
    assert lambda_grid(table, np.arange(N), 5)["lambda_seconds"] == [0.0]
    with pytest.warns(UserWarning, match="λ_L is fixed at 0"):
        env = AllocateEnv(**pre13.ENV, table=table, split="all")
    env.reset(seed=0)
    *_, info = env.step(int(np.argmax(env.action_masks())))
    assert info["seconds"] == 0.0 and info["lambda_seconds"] == 0.0
    assert hashlib.sha256(SRC.read_bytes()).hexdigest() == SHA256  # the data its README describes
