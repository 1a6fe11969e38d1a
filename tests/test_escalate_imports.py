"""The same escalate train + evaluate on imported caches, without code changes: the Qwen2.5-Math import of
../shared (reward-model scores: score selectors available) and the same rows with ``pred_score`` dropped
(an import without scores: score selectors masked). Slow: the import featurizes the questions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import evaluate
from tests.test_escalate_train_eval import train_escalate
from tests.test_import_qwen import QWEN_FILE, raw_rows

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not QWEN_FILE.exists(), reason=f"shared data absent: {QWEN_FILE} not found"),
]


def _import(tmp: Path, name: str, scores: bool) -> Path:
    from rollouts.importers import Importer, load_featurizer
    from rollouts.importers.qwen25math import QwenHarnessReader
    from rollouts.latency_fit import DEFAULT_MODEL_PATH, load_latency_model

    # the 32 shortest questions (featurizing long MATH prompts on a busy CPU is slow), in a temp copy
    rows = sorted(raw_rows(), key=lambda r: len(r["question"]))[:32]
    if not scores:
        rows = [{k: v for k, v in r.items() if k != "pred_score"} for r in rows]
    src = tmp / f"{name}_src" / QWEN_FILE.name
    src.parent.mkdir(parents=True)
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp / name
    Importer(
        out,
        featurizer=load_featurizer(),
        latency_model=load_latency_model(DEFAULT_MODEL_PATH),
        progress=False,
    ).run(QwenHarnessReader(src, scorer="Qwen2.5-Math-RM-72B"))
    return out


@pytest.mark.parametrize("scores", [True, False])
def test_escalate_on_qwen_import(tmp_path, scores):
    cache = _import(tmp_path, "qwen", scores)
    run = train_escalate(cache, tmp_path / "runs", "seq", steps=1024)
    meta = json.loads((run / "export" / "policy.json").read_text())
    assert meta["kind"] == "escalate" and meta["serving"] is None  # an import cannot be replayed live
    assert meta["escalate"]["pool_size"] == 8 and meta["escalate"]["has_scores"] is scores
    rc = evaluate.main(
        ["--run", str(run), "--json", str(tmp_path / "r.json"), "--grid", "2", "--orders", "2",
         "--bootstrap", "50", "--no-plots"]
    )  # fmt: skip
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["n_queries"] > 0 and r["step_menu"][:4] == ["draw@1", "draw@2", "draw@4", "draw@8"]
    pols = r["points"][0]["policies"]
    assert ("rule:score_threshold" in pols) is scores
    assert any("best_score@" in k for k in pols if k.startswith("static:")) is scores
    for p in r["points"]:
        stops = p["policies"]["sequential"]["stop_share"]
        if not scores:
            assert "stop:best_score" not in stops and "stop:weighted" not in stops
