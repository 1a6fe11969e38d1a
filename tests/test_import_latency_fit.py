"""Fitting the latency model for imported rollouts (rollouts/latency_fit.py).

The measurements here are SYNTHETIC, drawn from a known model with noise, and labelled so: they
check that the fit recovers a known truth and reports its error, not how fast any hardware is.
A test on the shipped fallback (configs/latency_cpu_smollm2.json) checks it is a real fit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rollouts.cache import CacheWriter
from rollouts.latency import LatencyModel, Round
from rollouts.latency_fit import (
    DEFAULT_MODEL_PATH,
    cross_validated_error,
    fit,
    fit_cache,
    load_latency_model,
    main,
    parse_measurements,
)

TRUE_COEF = [0.3, 2e-5, 0.012, 0.0015]  # synthetic truth


def synthetic_measurements(n: int = 40, noise: float = 0.02, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    truth = LatencyModel(coef=TRUE_COEF)
    out = []
    for _ in range(n):
        rounds = [Round(int(rng.integers(30, 300)), int(rng.choice([1, 2, 4, 8, 16])), int(rng.integers(8, 200)))
                  for _ in range(int(rng.integers(1, 4)))]
        secs = truth.predict(rounds) * float(1 + rng.normal(0, noise))
        out.append({"rounds": [r.__dict__ for r in rounds], "seconds": secs, "query_id": "synthetic"})
    return out


def test_fit_recovers_synthetic_truth_and_reports_error():
    ms = parse_measurements(synthetic_measurements())
    model = fit(ms, label="synthetic", source="test", synthetic=True)
    assert np.allclose(model.coef, TRUE_COEF, rtol=0.25, atol=1e-5)
    f = model.fit
    assert f["n"] == 40 and f["mape"] < 0.05 and f["cv_mape"] < 0.08 and f["cv_folds"] == 5
    assert (f["label"], f["source"], f["synthetic"]) == ("synthetic", "test", True)
    again = LatencyModel.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.fit["label"] == "synthetic" and again.coef == model.coef


def test_cross_validation_needs_enough_points():
    assert cross_validated_error(parse_measurements(synthetic_measurements(6))) is None


@pytest.mark.parametrize(
    "bad, reason",
    [
        ([{"rounds": [], "seconds": 1.0}], "non-empty 'rounds'"),
        ([{"rounds": [{"prompt_tokens": 1, "width": 1, "max_gen_tokens": 1}], "seconds": 0}], "positive number"),
        ([{"rounds": [{"prompt_tokens": 1, "width": 0, "max_gen_tokens": 1}], "seconds": 1}], "width >= 1"),
        ([{"rounds": [{"width": 1, "max_gen_tokens": 1}], "seconds": 1}], "needs integer prompt_tokens"),
    ],
)
def test_bad_measurements_are_named(bad, reason):
    with pytest.raises(ValueError, match=reason):
        parse_measurements(bad, "m.json")


def _cache_with_calibration(path, measurements, meta_extra=None):
    meta = {"model": "smollm2-135m-instruct", "backend": {"backend": "vllm", "device": "cpu"},
            "hardware": {"cpu": "Synthetic CPU", "cpu_count": 2}, "latency_calibration": measurements,
            **(meta_extra or {})}
    with CacheWriter(path, meta=meta) as w:
        w.add_query({"query_id": "q0", "prompt_tokens": 50, "features": [0.0]})
        # a measured record counts as a measurement too: one round, width = pool size, longest sample
        w.add_record({"query_id": "q0", "config_id": "pool:n=2", "strategy": "sample_pool", "params": {"n": 2},
                      "seed": 0, "tokens": 30, "scorer_tokens": 0,
                      "seconds": LatencyModel(coef=TRUE_COEF).predict([Round(50, 2, 20)]), "seconds_source": "measured",
                      "samples": [{"answer": "1", "correct": True, "tokens": 20},
                                  {"answer": "2", "correct": False, "tokens": 10}]})
    return path


def test_fit_cache_uses_calibration_and_measured_records(tmp_path):
    c = _cache_with_calibration(tmp_path / "c", synthetic_measurements(20))
    model = fit_cache(c)
    assert model.fit["n"] == 21 and model.fit["n_calibration"] == 20 and model.fit["n_measured_records"] == 1
    assert model.fit["label"] == "smollm2-135m-instruct/vllm-cpu/Synthetic CPU x2"
    # load_latency_model on a cache: its stored model wins, else a fit
    assert load_latency_model(c).fit["n"] == 21
    stored = {"coef": [1.0, 0.0, 0.0, 0.0], "fit": {"holdout": {"mape": 0.1}}}
    c2 = _cache_with_calibration(tmp_path / "c2", synthetic_measurements(20), {"latency_model": stored})
    m2 = load_latency_model(c2)
    assert m2.coef == [1.0, 0.0, 0.0, 0.0] and m2.fit["label"].startswith("smollm2-135m-instruct")
    assert load_latency_model(c2, refit=True).fit["n"] == 21


def test_fit_cache_with_too_few_measurements(tmp_path):
    c = _cache_with_calibration(tmp_path / "c", synthetic_measurements(2))
    with pytest.raises(ValueError, match="only 3 latency measurements"):
        fit_cache(c)


def test_load_from_files_and_cli(tmp_path, capsys):
    ms = synthetic_measurements(12)
    (tmp_path / "m.json").write_text(json.dumps(ms))
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(m) + "\n" for m in ms))
    a, b = load_latency_model(tmp_path / "m.json"), load_latency_model(tmp_path / "m.jsonl")
    assert a.coef == pytest.approx(b.coef) and a.fit["label"] == "m"
    out = tmp_path / "model.json"
    assert main([str(tmp_path / "m.json"), "--out", str(out), "--label", "synthetic-cli"]) == 0
    capsys.readouterr()
    m = load_latency_model(out)
    assert m.fit["label"] == "synthetic-cli" and m.coef == pytest.approx(a.coef)
    with pytest.raises(FileNotFoundError):
        load_latency_model(tmp_path / "absent.json")


def test_shipped_fallback_is_a_real_fit():
    if not DEFAULT_MODEL_PATH.exists():
        pytest.skip(f"{DEFAULT_MODEL_PATH} not shipped yet")
    model = load_latency_model(DEFAULT_MODEL_PATH)
    assert not model.fit.get("synthetic")
    assert model.fit["n"] >= 8 and "mape" in model.fit and model.fit.get("label")
    assert model.predict([Round(60, 8, 64)]) > model.predict([Round(60, 1, 64)]) > 0
