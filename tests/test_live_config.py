"""Live training's bad input (env.source: live): one ``error:`` line naming the culprit, exit status 2,
nothing written (no run folder; the cache byte for byte as it was). No engine is needed: every case is
refused before one would start."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import collect
import train
from env.live_config import parse_live
from env.menu import pool_budgets
from rollouts.errors import ConfigError

MENU = "live.menu=[{strategy: sample_pool, n: 4}]"
LIVE_OK = ["env.source=live", "gate=false", "ppo.utility_warm_start=false", "live.dataset=arith:3", "live.limit=12", MENU]


def _digest(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders if f.exists() for p in sorted(f.rglob("*")) if p.is_file()}  # fmt: skip


def _train(tmp_path: Path, cache: Path | str, *hp: str) -> int:
    return train.main(["--config", "", "--cache", str(cache), "--runs-dir", str(tmp_path / "runs"), "--name", "live",
                       "--no-progress", "--hyperparams", *hp])  # fmt: skip


@pytest.fixture
def foreign_cache(tmp_path, synthetic_cache):
    """A cache another collection wrote (another model and menu than the live block's)."""
    cache = tmp_path / "foreign"
    shutil.copytree(synthetic_cache, cache)
    return cache


CASES = {
    "unreachable server": ([*LIVE_OK, "live.server=http://127.0.0.1:9/v1"],
                           "live.server http://127.0.0.1:9/v1: no OpenAI-compatible server answers there"),
    "dataset spec that does not parse": ([*LIVE_OK, "live.dataset=nosuch:1", "live.server=http://127.0.0.1:9/v1"],
                                         "nosuch:1"),
    "unknown live key": ([*LIVE_OK, "live.nosuch=1"], "unknown config key live.nosuch"),
    "live key the run sets itself": ([*LIVE_OK, "live.output=/tmp/x"], "live.output: a live run sets it itself"),
    "bad server": ([*LIVE_OK, "live.server=localhost:8000"], "live.server must be an http(s) URL"),
    "bad cap": ([*LIVE_OK, "live.max_new_records=0"], "live.max_new_records must be null or a number > 0"),
    "gate on": ([*LIVE_OK, "gate=true"], "set gate: false"),
    "warm start on": ([*LIVE_OK, "ppo.utility_warm_start=true"], "set ppo.utility_warm_start: false"),
    "sequential floor clone": ([*LIVE_OK, "env.kind=escalate", "ppo.policy=mlp", "clone_floor=true"],
                               "env.source: live cannot set clone_floor"),
    "sequential one-shot clone": ([*LIVE_OK, "env.kind=escalate", "ppo.policy=mlp", "clone_floor=false",
                                   "warm_start_from=runs/x"], "set warm_start_from: null"),
    "live block without source": (["live.dataset=arith:3"], "live: is set but env.source is 'cache'"),
    "source without live block": (["env.source=live", "gate=false", "ppo.utility_warm_start=false"],
                                  "env.source: live needs a live: block"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_live_bad_input_is_one_error_and_writes_nothing(case, tmp_path, capsys):
    hp, expected = CASES[case]
    cache = tmp_path / "cache"
    rc = _train(tmp_path, cache, *hp)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0], err
    assert not cache.exists() and not (tmp_path / "runs" / "live").exists()


def test_live_without_cache_path_is_refused(tmp_path, capsys):
    cfg = tmp_path / "live.yml"
    cfg.write_text("cache: null\ngate: false\nenv: {source: live}\nppo: {utility_warm_start: false}\n"
                   "live: {dataset: 'arith:3', menu: [{strategy: sample_pool, n: 4}]}\n")
    rc = train.main(["--config", str(cfg), "--runs-dir", str(tmp_path / "runs"), "--name", "live", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "env.source: live needs cache:" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_live_on_a_cache_of_another_menu_or_model_is_refused(foreign_cache, tmp_path, capsys):
    before = _digest(foreign_cache)
    meta = json.loads((foreign_cache / "meta.json").read_text())
    for extra, what in ((["live.model=smollm2-135m-instruct"], "another model"), ([f"live.model={meta['model']}"], "another menu")):
        rc = _train(tmp_path, foreign_cache, *LIVE_OK, *extra, "live.server=start")
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and f"holds {what}" in err[0], err
    assert _digest(foreign_cache) == before and not (tmp_path / "runs").exists()


def test_complete_refuses_a_cached_run(tiny_run, capsys):
    assert collect.main(["complete", str(tiny_run)]) == 2
    assert "not a live run" in capsys.readouterr().err


def test_live_budgets_default_to_the_pool_budgets():
    live = parse_live({"dataset": "arith:0", "menu": [{"strategy": "sample_pool", "n": 4}], "server": "start"}, "c")
    assert live.collect.budgets == pool_budgets(4) == [1, 2, 4]
    assert live.collect.output == "c" and live.collect.backend == "openai"
    with pytest.raises(ConfigError, match="live.menu"):
        parse_live({"menu": [{"strategy": "nosuch"}]}, "c")
