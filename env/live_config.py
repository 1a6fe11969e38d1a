"""The ``live:`` block of a training config (``env.source: live``): what a live run collects, and where.

The block is a collection config (``rollouts/config.py``'s :class:`CollectConfig`: ``dataset``,
``limit``, ``model``, ``menu``, ``budgets``, the sampling, ``scorer``, ``seed``, ``calibration_queries``,
...) without the keys a live run sets itself (``output`` is the training config's ``cache``; the engine
is an OpenAI-compatible server), plus:

- ``server``: the server's URL (``http://127.0.0.1:8000/v1``), or ``start``: train.py starts vLLM's own
  server on 127.0.0.1 (``rollouts/backends/vllm_server.py``) and stops it when the job ends;
- ``max_new_records`` / ``max_engine_seconds``: caps (null: none); training stops, saves and exports
  once a cap is reached;
- ``budgets`` defaults to the powers of two up to the largest pool (the latency calibration's pool sizes).

Checks that need no engine (unknown keys, types, the menu) run when the config is built; the dataset
spec, the server and the cache's own menu and model are checked by :func:`check_live` before anything is
written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from env.menu import pool_budgets
from rollouts.config import CollectConfig, config_from_dict
from rollouts.errors import ConfigError
from rollouts.strategies import POOL

# collection keys a live run sets itself
NOT_LIVE = ("output", "backend", "backend_options", "executor", "ray_address", "replicas", "replica_resources",
            "tensor_parallel_size", "replica_restarts")
START = "start"


@dataclass
class LiveSettings:
    """The parsed ``live:`` block: the collection config (its ``output`` the cache) and the live-only keys."""

    collect: CollectConfig
    server: str
    max_new_records: int | None
    max_engine_seconds: float | None
    max_model_len: int = 1024


def parse_live(block: Any, cache: str | None) -> LiveSettings:
    """The ``live:`` block of a config whose ``env.source`` is ``live``; ConfigError naming the key."""
    if not isinstance(block, dict):
        raise ConfigError(f"env.source: live needs a live: block (a mapping with dataset, menu, server...), got {block!r}")
    if not cache:
        raise ConfigError("env.source: live needs cache: the folder its outcomes are written through to "
                          "(a new folder, or one an earlier live run or collection of the same menu wrote)")
    d = dict(block)
    bad = sorted(set(d) & set(NOT_LIVE))
    if bad:
        raise ConfigError(f"live.{bad[0]}: a live run sets it itself (the cache is `cache`, the engine `live.server`)")
    server = d.pop("server", START)
    caps = {k: d.pop(k, None) for k in ("max_new_records", "max_engine_seconds")}
    max_model_len = d.pop("max_model_len", 1024)
    if not isinstance(server, str) or not (server == START or server.startswith(("http://", "https://"))):
        raise ConfigError(f"live.server must be an http(s) URL of an OpenAI-compatible server or 'start', got {server!r}")
    for k, v in caps.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0
                              or (k == "max_new_records" and not isinstance(v, int))):
            raise ConfigError(f"live.{k} must be null or a number > 0{' (an integer)' if k == 'max_new_records' else ''}, "
                              f"got {v!r}")
    if isinstance(max_model_len, bool) or not isinstance(max_model_len, int) or max_model_len < 1:
        raise ConfigError(f"live.max_model_len must be an integer >= 1, got {max_model_len!r}")
    if "budgets" not in d and isinstance(d.get("menu"), list):
        pools = [m.get("n") for m in d["menu"] if isinstance(m, dict) and m.get("strategy") == POOL]
        sizes = [n for n in pools if isinstance(n, int) and n >= 1]
        if pools and len(sizes) == len(pools):
            d["budgets"] = pool_budgets(max(sizes))
    d["backend"], d["output"], d["backend_options"] = "openai", cache, {"max_model_len": max_model_len}
    try:
        collect = config_from_dict(CollectConfig, d, "live.")
    except ConfigError as exc:  # the collection's own value checks name its keys bare
        msg = str(exc)
        raise (exc if msg.startswith(("live.", "unknown config key live.")) else ConfigError(f"live.{msg}")) from None
    return LiveSettings(collect, server, caps["max_new_records"], caps["max_engine_seconds"], max_model_len)


def check_live(live: LiveSettings) -> None:
    """What a live run checks before it starts anything: the dataset spec parses, the server answers, and
    an existing cache has this block's model and menu. ConfigError / DatasetError naming the culprit."""
    from rollouts.cache import read_meta
    from rollouts.datasets import load_queries

    c = live.collect
    load_queries(c.dataset, c.limit, c.offset, c.question_field, c.answer_field)
    if live.server != START:
        probe_server(live.server)
    if (Path(c.output) / "meta.json").exists():
        meta = read_meta(c.output)
        for key, want in (("model", c.model), ("menu", c.menu)):
            if meta.get(key) != want:  # an import has no collection menu: a live run cannot extend it either
                raise ConfigError(f"{c.output}: this cache holds another {key} ({meta.get(key)!r}) than the live block names "
                                  f"({want!r}); write to a new cache or name the cache's {key}")


def probe_server(url: str) -> None:
    """One GET of ``<url>/models`` (5 s); ConfigError naming the URL if nothing answers there."""
    import requests

    try:
        resp = requests.get(f"{url.rstrip('/')}/models", timeout=5)
        resp.raise_for_status()
        resp.json()
    except (requests.RequestException, ValueError) as exc:
        raise ConfigError(f"live.server {url}: no OpenAI-compatible server answers there ({type(exc).__name__}: "
                          f"{str(exc)[:160]})") from None


def check_live_training(cfg: Any) -> LiveSettings:
    """The checks of a training config (``train.TrainConfig``) that names a live block or ``env.source:
    live``, before anything runs: the settings a live run cannot have, then :func:`parse_live`."""
    if cfg.env.get("source") != "live":
        raise ConfigError("live: is set but env.source is 'cache': set env.source: live (or drop the live: block)")
    if cfg.env.get("kind", "allocate") == "escalate":  # the sequential env: draws generate the query's pools
        for key, why in (("clone_floor", "clones its floor on every train outcome"),
                         ("warm_start_from", "clones that one-shot run on every train outcome")):  # fmt: skip
            if getattr(cfg, key, None):
                raise ConfigError(f"env.source: live cannot set {key} (it {why}, which a live run does not have): "
                                  f"set {key}: {'false' if key == 'clone_floor' else 'null'}")
    if cfg.gate:
        raise ConfigError("env.source: live cannot fit the gate (it needs every outcome of the train split): "
                          "set gate: false")
    if cfg.ppo.get("policy") == "utility" and cfg.ppo.get("utility_warm_start"):
        raise ConfigError("env.source: live cannot warm-start the utility actor (it needs every outcome of the "
                          "train split): set ppo.utility_warm_start: false")
    return parse_live(cfg.live, cfg.cache)
