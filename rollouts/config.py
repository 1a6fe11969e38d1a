"""The project's one config system: the YAML reader, the override syntax, the type checks and the
collection config.

Every config file, override and YAML-valued option is parsed by :func:`load_yaml_text`; config files
are read by :func:`load_yaml_file`, overrides by :func:`parse_override` (canonical ``key=value``; the
value is YAML, so ``dataset=hf:openai/gsm8k:test`` keeps its colons) and every config dataclass is built
by :func:`config_from_dict`: unknown keys refused, field types checked (:func:`check_types`), then the
class's own ``validate()``. Each raises the one :class:`rollouts.errors.ConfigError` naming the key.
The dataclass defaults are the shipped defaults (``configs/*.yaml`` restate them, tests pin that).
"""

from __future__ import annotations

import dataclasses
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml

from rollouts.errors import ConfigError
from rollouts.prompts import DEFAULT_SUFFIX
from rollouts.strategies import BEAM, POOL, STRATEGIES


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as PyYAML reads it, except that ``1e-3`` and ``1E5`` are numbers (YAML 1.1 wants a dot
    and a signed exponent, so PyYAML reads them as strings; YAML 1.2 and every user read them as floats)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_yaml_text(text: str) -> Any:
    """Parse YAML text the one way every config, override and option of the project is parsed."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def load_yaml_file(path: str | Path) -> dict[str, Any]:
    """A config file's mapping; :class:`ConfigError` naming the file (and line) if it is missing,
    not UTF-8, malformed or not a mapping. An empty file is an empty mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = load_yaml_text(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise ConfigError(f"{where}: malformed YAML ({getattr(exc, 'problem', None) or exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the config must be a YAML mapping")
    return data


def key_lines(path: str | Path) -> dict[str, int]:
    """The line of each key a config file sets: ``{"seed": 3, "env.outcome": 19, ...}`` (top level and
    one section deep), for :func:`locate`."""
    node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=_Loader)
    lines: dict[str, int] = {}
    for k, v in node.value if isinstance(node, yaml.MappingNode) else []:
        lines[str(k.value)] = k.start_mark.line + 1
        for k2, _ in v.value if isinstance(v, yaml.MappingNode) else []:
            lines[f"{k.value}.{k2.value}"] = k2.start_mark.line + 1
    return lines


def locate(exc: ConfigError, path: str | Path, lines: dict[str, int]) -> ConfigError:
    """``exc`` as ``path:line: message`` when its message names a key the file sets (``lines``: those
    keys, less the ones the command line overrode); ``exc`` itself otherwise."""
    m = re.match(r"(?:unknown config key )?([A-Za-z_][\w.]*)", str(exc))
    line = lines.get(m.group(1)) if m else None
    return ConfigError(f"{path}:{line}: {exc}") if line else exc


# ----------------------------------------------------------------------------------------------
# Overrides

def parse_override(item: str, legacy_colon: bool = False) -> tuple[str, Any]:
    """One command-line override: ``key=value`` (the value is YAML) -> ``(key, value)``.

    ``legacy_colon``: also accept train.py's old ``key:value`` spelling (deprecated: one ``warning:``
    line on stderr; its value, as before, is the text itself where it is not YAML).
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if sep and not (legacy_colon and ":" in key):  # "name:a=b" is the old spelling of name=a=b
        try:
            return key, load_yaml_text(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: malformed value ({exc})") from exc
    key, sep, raw = item.partition(":")
    key = key.strip()
    if not (legacy_colon and sep):
        raise ConfigError(f"override {item!r} is not key=value")
    print(f"warning: {item!r}: key:value overrides are deprecated, write {key}={raw}", file=sys.stderr)
    try:
        return key, load_yaml_text(raw)
    except yaml.YAMLError:
        return key, raw


# ----------------------------------------------------------------------------------------------
# Validation: the one way a config dataclass is built


_TYPES: dict[str, tuple[str, Any]] = {
    "int": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "float": ("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "dict": ("a mapping of settings", lambda v: isinstance(v, dict)),
    "list": ("a list", lambda v: isinstance(v, list)),
}


def check_types(obj: Any, where: str = "") -> None:
    """Raise :class:`ConfigError` naming the first dataclass field whose value is not of its annotated type.

    Understands the annotations the configs use (``int``, ``float``, ``bool``, ``str``, ``dict[...]``,
    ``list[...]``, ``X | None``); anything else (``Any``) is left to the config's own checks.
    ``where`` prefixes the field name (``"env."``).
    """
    for f in dataclasses.fields(obj):
        ann = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        parts = [a.strip().split("[")[0] for a in ann.split("|")]
        if not all(a in _TYPES or a == "None" for a in parts):
            continue
        v = getattr(obj, f.name)
        if v is None and "None" in parts:
            continue
        if not any(_TYPES[a][1](v) for a in parts if a != "None"):
            want = " or ".join(_TYPES[a][0] for a in parts if a != "None") + (" or null" if "None" in parts else "")
            raise ConfigError(f"{where}{f.name} must be {want}, got {v!r}")


def reject_unknown_keys(cls: type, d: dict[str, Any], where: str = "") -> None:
    """Raise :class:`ConfigError` naming the first key of ``d`` that is not a field of dataclass ``cls``."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown config key {where}{unknown[0]} (known: {', '.join(sorted(known))})")


class Validated(Protocol):
    def validate(self) -> None: ...


C = TypeVar("C", bound=Validated)


def config_from_dict(
    cls: type[C], d: dict[str, Any] | None, where: str = "", path: str | Path | None = None,
    lines: dict[str, int] | None = None,
) -> C:
    """The one way a config dataclass is built from a mapping: unknown keys refused, field types
    checked, then ``cls.validate()`` (value checks, normalisation). ``where`` prefixes key names; with
    the config file's ``path`` and :func:`key_lines`, an error about a key it sets names its line."""
    d = dict(d or {})
    try:
        reject_unknown_keys(cls, d, where)
        cfg = cls(**d)
        check_types(cfg, where)
        cfg.validate()
    except ConfigError as exc:
        located = locate(exc, path, lines) if path and lines else exc
        if located is exc:
            raise
        raise located from exc
    return cfg


@dataclass
class CollectConfig:
    dataset: str = "arith:0"  # hf:<id>[:split] | jsonl:<path> | arith:<seed>
    limit: int | None = 1440
    offset: int = 0
    question_field: str | None = None
    answer_field: str | None = None
    model: str = "smollm2-135m-instruct"
    backend: str = "vllm"  # vllm | openai
    # vllm: engine arguments (max_model_len: the context, bounds the KV cache); openai: base_url, api_key,
    # max_retries..., max_model_len (bounds the server's own context length from /v1/models)
    backend_options: dict[str, Any] = field(default_factory=lambda: {"max_model_len": 1024})
    prompt_suffix: str = DEFAULT_SUFFIX
    system_prompt: str | None = None
    temperature: float = 0.3
    top_p: float = 1.0
    max_tokens: int = 64
    menu: list[dict[str, Any]] = field(default_factory=lambda: [
        {"strategy": "sample_pool", "n": 16},
        {"strategy": "beam_search", "n": 2, "m": 2, "max_iterations": 4},
        {"strategy": "beam_search", "n": 4, "m": 2, "max_iterations": 4},
        {"strategy": "beam_search", "n": 8, "m": 2, "max_iterations": 4},
        {"strategy": "beam_search", "n": 8, "m": 4, "max_iterations": 4},
    ])
    budgets: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])  # derived from the pool
    scorer: str = "logprob"
    scorer_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    batch_queries: int = 16  # queries per engine batch (throughput)
    calibration_queries: int = 4  # queries run alone to measure latency (0: none)
    grade_timeout_s: int = 5
    output: str = "runs/collect/default_cache"
    # Where strategy runs execute: "local" (this process's engine) or "ray" (replica actors on a Ray cluster,
    # rollouts/ray_executor.py; needs the `ray` extra). The cache is written by this process either way.
    executor: str = "local"
    ray_address: str | None = None  # None: start a local cluster; "auto" / "host:6379": join a running one
    replicas: int = 1  # replica actors, one engine each
    replica_resources: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1})  # Ray actor options
    tensor_parallel_size: int = 1  # GPUs per vLLM engine (a replica should then request num_gpus >= this)
    replica_restarts: int = 3  # Ray restarts a dead replica and retries its batches this many times

    def validate(self) -> None:
        """Value checks (the field types are checked by :func:`config_from_dict` before this runs)."""
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be >= 1, got {self.limit}")
        if self.backend not in ("vllm", "openai"):
            raise ConfigError(f"unknown backend {self.backend!r} (known: vllm, openai)")
        if self.max_tokens < 1 or self.batch_queries < 1 or self.calibration_queries < 0:
            raise ConfigError("max_tokens and batch_queries must be >= 1, calibration_queries >= 0")
        if not self.menu:
            raise ConfigError("the strategy menu is empty")
        for i, item in enumerate(self.menu):
            name = item.get("strategy")
            if name not in STRATEGIES:
                raise ConfigError(f"menu[{i}]: unknown strategy {name!r} (known: {', '.join(STRATEGIES)})")
            keys = STRATEGIES[name].item_keys  # the spec's own keys (rollouts/strategies/)
            extra = set(item) - set(keys) - {"strategy"}
            if extra:
                raise ConfigError(f"menu[{i}] ({name}): unknown keys {sorted(extra)}")
            for k in keys:
                v = item.get(k)
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    raise ConfigError(f"menu[{i}] ({name}): {k} must be a positive integer, got {v!r}")
            if name == BEAM and item["n"] % item["m"]:
                raise ConfigError(f"menu[{i}] (beam_search): n={item['n']} must be divisible by m={item['m']}")
        pools = [m["n"] for m in self.menu if m["strategy"] == POOL]
        for b in self.budgets:
            if not isinstance(b, int) or b < 1:
                raise ConfigError(f"budgets must be positive integers, got {b!r}")
            if pools and b > max(pools):
                raise ConfigError(f"budget {b} exceeds the pool size {max(pools)}")
        if self.executor not in ("local", "ray"):
            raise ConfigError(f"unknown executor {self.executor!r} (known: local, ray)")
        if self.replicas < 1 or self.tensor_parallel_size < 1 or self.replica_restarts < 0:
            raise ConfigError("replicas and tensor_parallel_size must be >= 1, replica_restarts >= 0")
        bad = set(self.replica_resources) - {"num_cpus", "num_gpus", "memory", "resources", "accelerator_type"}
        if bad:
            raise ConfigError(f"replica_resources: unknown keys {sorted(bad)} "
                              "(known: num_cpus, num_gpus, memory, resources, accelerator_type)")
        if self.tensor_parallel_size > 1 and self.replica_resources.get("num_gpus", 0) < self.tensor_parallel_size:
            raise ConfigError(f"tensor_parallel_size={self.tensor_parallel_size} needs replica_resources.num_gpus "
                              f">= {self.tensor_parallel_size}, got {self.replica_resources.get('num_gpus', 0)}")
        if self.scorer not in ("logprob", "prm"):
            raise ConfigError(f"unknown scorer {self.scorer!r} (known: logprob, prm)")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> CollectConfig:
    """The collection config: ``path`` (YAML; None: the defaults) with ``key=value`` overrides."""
    data = load_yaml_file(path) if path is not None else {}
    lines = key_lines(path) if path is not None else {}
    for item in overrides or []:
        key, value = parse_override(item)
        data[key] = value
        lines.pop(key, None)
    return config_from_dict(CollectConfig, data, path=path, lines=lines)
