"""Every bad-input case of issue #14 gets one ``error:`` line (file and line where there is one), exit
status 2, and leaves the existing run folder and cache byte for byte as they were."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

import collect
import evaluate
import route
import train
from tests.fixtures.synthetic_cache import make_synthetic_cache


def _digest(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in sorted(f.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def world(tiny_run, synthetic_cache, tmp_path_factory):
    """A finished run, a cache, and the bad files the cases point at."""
    d = tmp_path_factory.mktemp("bad")
    cache = d / "cache"
    shutil.copytree(synthetic_cache, cache)
    for name, change in (("onnx_corrupt", "onnx"), ("onnx_missing", "missing"), ("json_corrupt", "json")):
        e = d / name
        shutil.copytree(tiny_run / "export", e)
        if change == "onnx":
            (e / "policy.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
        elif change == "missing":
            (e / "policy.onnx").unlink()
        else:
            text = (e / "policy.json").read_text().splitlines()
            text[3] = text[3] + ' "broken'
            (e / "policy.json").write_text("\n".join(text))
    (d / "latin1.jsonl").write_bytes(b'{"question": "What is 2 + 2?", "answer": "4"}\n{"question": "Caf\xe9?", "answer": "1"}\n')
    (d / "empty.jsonl").write_text("\n")
    (d / "env_list.yml").write_text("env: [1, 2]\n")
    make_synthetic_cache(d / "dim4", n_queries=40, dim=4)
    return {"run": tiny_run, "cache": cache, "dir": d}


def _collect(w, *overrides):
    return collect.main(["--no-progress", f"output={w['cache']}", *overrides])


CASES = {
    # route.py and evaluate.py --export: a corrupt or missing policy.onnx, a corrupt policy.json
    "route: corrupt policy.onnx": (lambda w: route.main(["--export", str(w["dir"] / "onnx_corrupt"), "q"]),
                                   "onnx_corrupt/policy.onnx: not a loadable ONNX model"),
    "route: missing policy.onnx": (lambda w: route.main(["--export", str(w["dir"] / "onnx_missing"), "q"]),
                                   "onnx_missing/policy.onnx: ONNX model not found"),
    "route: corrupt policy.json": (lambda w: route.main(["--export", str(w["dir"] / "json_corrupt"), "q"]),
                                   "json_corrupt/policy.json:4: malformed JSON"),
    "evaluate: corrupt policy.onnx": (
        lambda w: evaluate.main(["--export", str(w["dir"] / "onnx_corrupt"), "--run", str(w["run"])]),
        "not a loadable ONNX model"),
    # non-UTF-8 bytes in a dataset (route.py refuses such a question on its own line: test_route.py)
    "collect: non-UTF-8 dataset": (lambda w: _collect(w, f"dataset=jsonl:{w['dir'] / 'latin1.jsonl'}"),
                                   "latin1.jsonl:2: not UTF-8 text"),
    # collect.py overrides of the wrong type
    "collect: limit=abc": (lambda w: _collect(w, "limit=abc"), "limit must be an integer or null, got 'abc'"),
    "collect: temperature=hot": (lambda w: _collect(w, "temperature=hot"), "temperature must be a number, got 'hot'"),
    "collect: max_tokens=1e3": (lambda w: _collect(w, "max_tokens=1e3"), "max_tokens must be an integer, got 1000.0"),
    # calibration_queries too small to fit the latency model: refused before the engine starts
    "collect: calibration_queries=1": (
        lambda w: _collect(w, "calibration_queries=1", "menu=[{strategy: sample_pool, n: 2}]", "budgets=[1, 2]"),
        "latency model needs at least 4"),
    # a cache whose features have another length
    "evaluate: other feature length": (
        lambda w: evaluate.main(["--run", str(w["run"]), "--cache", str(w["dir"] / "dim4")]),
        "trained on 8 features per query"),
    # train config values of the wrong type
    "train: outcome_seed 'abc'": (lambda w: _train(w, "env.outcome_seed=abc"),
                                  "env.outcome_seed must be an integer, got 'abc'"),
    "train: runs_dir 5": (lambda w: _train(w, "runs_dir=5"), "runs_dir must be a string, got 5"),
    "train: env [1, 2]": (lambda w: train.main(["--config", str(w["dir"] / "env_list.yml"), "--cache",
                                                str(w["cache"]), "--runs-dir", str(w["run"].parent)]),
                          "env must be a mapping of settings, got [1, 2]"),
    "train: export 'false'": (lambda w: _train(w, "export='false'"), "export must be true or false, got 'false'"),
    # imports of an empty or undecodable file
    "import: empty file": (lambda w: collect.main(["import", "generic", str(w["dir"] / "empty.jsonl"), "--out",
                                                   str(w["dir"] / "new_cache"), "--no-progress"]),
                           "empty.jsonl: empty input, nothing to import"),
    "import: non-UTF-8 file": (lambda w: collect.main(["import", "generic", str(w["dir"] / "latin1.jsonl"), "--out",
                                                       str(w["dir"] / "new_cache"), "--no-progress"]),
                               "latin1.jsonl:2: not UTF-8 text"),
}  # fmt: skip


def _train(w, *hyper):
    return train.main(["--cache", str(w["cache"]), "--runs-dir", str(w["run"].parent), "--name", "new", "--no-progress",
                       "--hyperparams", *hyper])  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_one_error_line_exit_2_nothing_changed(world, case, capsys):
    run, message = CASES[case]
    before = _digest(world["run"], world["cache"])
    runs = sorted(p.name for p in world["run"].parent.iterdir())
    rc = run(world)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: "), (case, err)
    assert message in err[0], (case, err)
    assert _digest(world["run"], world["cache"]) == before
    assert sorted(p.name for p in world["run"].parent.iterdir()) == runs  # no new run folder
    assert not (world["dir"] / "new_cache").exists()  # a failed import leaves no empty cache


def test_numbers_in_e_notation_are_numbers():
    args = train.make_parser().parse_args(["--hyperparams", "ppo.learning_rate=1e-3", "env.reward_scale=2E0"])
    cfg = train.build_config(args)
    assert cfg.ppo["learning_rate"] == 0.001 and cfg.env["reward_scale"] == 2.0
    from rollouts.config import load_config

    assert load_config(None, ["temperature=5e-1"]).temperature == 0.5
