"""Never worse than the default on small data (issue #18's acceptance), on random subsets of 200 and
400 bundled queries (subset seeds fixed here) and on the Qwen2.5-Math import (100 queries), over the
5 x 5 grid: the gated policy is below the static picked on train + validation (all the data it saw,
its fallback) with 90% confidence at no point; against evaluate.py's train-only pick it never is where
its gate is open (where closed it plays the fallback, which may be another static). At λ = (0, 0) its
accuracy is >= the train-picked static's minus the paired bootstrap interval's half-width. Training is
kept short (the gate, not PPO, is under test). Slow: about 2 CPU-minutes, most of it the import's
featurisation.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import evaluate
import train
from evaluation.options import EvalOptions
from rollouts.cache import load_cache
from rollouts.cache_rewrite import write_subset

ROOT = Path(__file__).resolve().parents[1]
QWEN_DIR = ROOT.parent / "shared" / "data" / "qwen25math_rm_maj_math100"
SHORT = ["--total-timesteps", "1024", "--no-progress", "--hyperparams", "n_envs=2", "eval_freq=512",
         "checkpoint_freq=1024", "val_grid=2", "export=false"]  # fmt: skip
TOL = 1e-9


@pytest.fixture(scope="module")
def bundled():
    return load_cache(ROOT / "data" / "default_cache")


def subset_cache(src, n: int, seed: int, out: Path) -> Path:
    keep = set(np.random.default_rng(seed).choice(src.query_ids, size=n, replace=False).tolist())
    return write_subset(src, keep, out)


def train_and_evaluate(cache: Path, runs: Path) -> dict:
    assert train.main(["--cache", str(cache), "--runs-dir", str(runs), "--name", "r", *SHORT]) == 0
    return evaluate.evaluate(
        EvalOptions(run=str(runs / "r"), out=str(runs / "eval"), plots=False, n_boot=1000)
    )


def report(label: str, res: dict) -> None:
    """One line of the figures docs/results.md quotes (shown with ``pytest -s``)."""
    s, p0 = res["summary"], res["points"][0]
    print(
        f"\n{label}: {res['n_queries']} test queries, gate open at {s['gate']['points_open']['ppo']}/25 "
        f"(α = {s['gate']['ppo']['shrinkage']:.3f}); below the train-picked static at 90%: ungated "
        f"{s['below_static_train_best_ci']['ppo']}, gated {s['below_static_train_best_ci']['ppo_gated']}, "
        f"router {s['below_static_train_best_ci']['probe_router']}, gated router "
        f"{s['below_static_train_best_ci']['probe_router_gated']}; below the train+val-picked static: "
        f"ungated {s['below_static_trainval_best_ci']['ppo']}, gated {s['below_static_trainval_best_ci']['ppo_gated']}, "
        f"gated router {s['below_static_trainval_best_ci']['probe_router_gated']}; gated ≥ train-picked static at "
        f"{s['ppo_gated_ge_static_train_best']}/25 (ungated {s['ppo_ge_static_train_best']}); accuracy at λ = 0: "
        f"gated {p0['policies']['ppo_gated']['accuracy']:.3f}, ungated {p0['policies']['ppo']['accuracy']:.3f}, "
        f"train-picked static {p0['policies']['static_train_best']['accuracy']:.3f}, random "
        f"{p0['policies']['random']['accuracy']:.3f}"
    )


def below(res: dict, ref: str, policy: str = "ppo_gated", gate: bool | None = None) -> list:
    """The points where ``policy`` is below the static ``ref`` (``static_train_best``: picked on the
    train split, as evaluate.py's reference; ``static_trainval_best``: on train + validation, all
    the data the policy saw, the gate's fallback) with 90% confidence; ``gate``: only where the
    gate is open (True) or closed (False)."""
    return [
        (p["lambda_tokens"], p["lambda_seconds"])
        for p in res["points"]
        if p[f"vs_{ref}"][policy]["ci90"][1] < -TOL and gate in (None, p["gate"]["ppo"]["open"])
    ]


def check_never_below(res: dict) -> None:
    assert below(res, "static_trainval_best") == []
    # against the train-only pick, routing never loses: any such point is one where the gate is
    # closed and the fallback (picked on train + validation) is another static than the train-only pick
    assert below(res, "static_train_best", gate=True) == []
    for p in res["points"]:
        if (p["lambda_tokens"], p["lambda_seconds"]) in below(res, "static_train_best"):
            assert p["static_trainval_best"] != p["static_train_best"]


@pytest.mark.slow
@pytest.mark.parametrize("n, seed", [(200, 0), (200, 1), (200, 2), (400, 0), (400, 1), (400, 2)])
def test_gated_policy_never_below_static_on_small_subsets(bundled, tmp_path, n, seed):
    res = train_and_evaluate(subset_cache(bundled, n, seed, tmp_path / "cache"), tmp_path / "runs")
    report(f"subset of {n}, seed {seed}", res)
    assert res["summary"]["n_points"] == 25
    check_never_below(res)
    p0 = res["points"][0]
    assert (p0["lambda_tokens"], p0["lambda_seconds"]) == (0.0, 0.0)
    vs = p0["vs_static_train_best"]["ppo_gated"]  # at λ = 0 utility is accuracy
    half = (vs["ci90"][1] - vs["ci90"][0]) / 2
    acc = p0["policies"]["ppo_gated"]["accuracy"] - p0["policies"]["static_train_best"]["accuracy"]
    assert acc == pytest.approx(vs["diff"]) and acc >= -half - TOL


@pytest.mark.slow
@pytest.mark.skipif(not QWEN_DIR.exists(), reason=f"shared data absent: {QWEN_DIR}")
def test_gated_policy_never_below_static_on_qwen_import(tmp_path):
    from rollouts.importers import Importer, load_featurizer
    from rollouts.importers.qwen25math import QwenHarnessReader
    from rollouts.latency_fit import default_latency_model

    # as `collect.py import qwen25math DIR --out q` does it: seconds from the shipped latency model
    reader = QwenHarnessReader(QWEN_DIR, scorer="Qwen2.5-Math-RM-72B")
    importer = Importer(
        tmp_path / "q", featurizer=load_featurizer(), latency_model=default_latency_model(), progress=False
    )
    s = importer.run(reader)
    assert s.imported == 100
    res = train_and_evaluate(tmp_path / "q", tmp_path / "runs")
    report("Qwen2.5-Math import", res)
    check_never_below(res)
