"""Bad input to collect.py: one clear `error:` line naming the culprit, exit status 2, nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_collect(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "collect.py"), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_unknown_strategy(tmp_path):
    line = _one_error_line(run_collect("menu=[{strategy: tree_of_thought, n: 4}]", f"output={tmp_path}/c"))
    assert "unknown strategy 'tree_of_thought'" in line


def test_malformed_yaml(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("dataset: arith:0\nmenu: [\n  - {strategy: sample_pool, n: 4\n")
    line = _one_error_line(run_collect("--config", str(cfg)))
    assert str(cfg) in line and "malformed YAML" in line


def test_negative_budget(tmp_path):
    line = _one_error_line(run_collect("budgets=[1, -2]", f"output={tmp_path}/c"))
    assert "budgets must be positive" in line
    line = _one_error_line(run_collect("menu=[{strategy: sample_pool, n: -4}]", f"output={tmp_path}/c"))
    assert "n must be a positive integer" in line


def test_unknown_config_key(tmp_path):
    assert "unknown config key" in _one_error_line(run_collect("temprature=0.5", f"output={tmp_path}/c"))


def test_missing_model(tmp_path):
    line = _one_error_line(run_collect(f"model={tmp_path}/no-such-model", f"output={tmp_path}/c"))
    assert "no-such-model" in line and "does not exist" in line
    assert not (tmp_path / "c").exists()  # nothing half-made


def test_unreachable_server(tmp_path):
    line = _one_error_line(run_collect(
        "backend=openai", "backend_options={base_url: 'http://127.0.0.1:9/v1', max_retries: 1, backoff_s: 0.1}",
        f"output={tmp_path}/c", "limit=2"))
    assert "127.0.0.1:9" in line and "unreachable" in line


def test_corrupt_cache_line_in_stats(tmp_path):
    from rollouts.cache import CacheWriter

    with CacheWriter(tmp_path, meta={}) as w:
        w.add_query({"query_id": "a", "prompt_tokens": 3, "features": [0.0]})
    (tmp_path / "records.jsonl").write_text('{"query_id": "a"}\n{not json\n')
    line = _one_error_line(run_collect("stats", str(tmp_path), "--json"))
    assert f"{tmp_path}/records.jsonl:1" in line  # the first bad line: a record missing fields


def test_stats_json_keys(tmp_path):
    from rollouts.cache import CacheWriter

    with CacheWriter(tmp_path, meta={"model": "m"}) as w:
        w.add_query({"query_id": "a", "prompt_tokens": 3, "features": [0.0]})
        w.add_record({"query_id": "a", "config_id": "pool:n=2", "strategy": "sample_pool", "params": {}, "seed": 0,
                      "tokens": 5, "scorer_tokens": 0, "seconds": 1.0, "seconds_source": "measured",
                      "samples": [{"answer": "1", "correct": True, "tokens": 2},
                                  {"answer": "2", "correct": False, "tokens": 3}]})
    proc = run_collect("stats", str(tmp_path), "--json")
    assert proc.returncode == 0, proc.stderr
    s = json.loads(proc.stdout)
    assert s["queries"] == 1 and s["records"] == 1
    c = s["configs"]["pool:n=2"]
    assert c["accuracy"] == 0.5 and c["mean_tokens"] == 5 and c["mean_seconds"] == 1.0 and c["records"] == 1
    assert s["pass_rate_histogram_n1"]["pool:n=2"] == {"0/2": 0, "1/2": 1, "2/2": 0}


@pytest.mark.parametrize("source", ["jsonl:/no/such/file.jsonl", "zip:foo"])
def test_bad_dataset(tmp_path, source):
    assert "dataset" in _one_error_line(run_collect(f"dataset={source}", f"output={tmp_path}/c"))
