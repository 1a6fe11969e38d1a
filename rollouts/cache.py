"""The rollout cache: a documented, versioned, crash-safe store of raw strategy measurements.

A cache is a directory::

    meta.json          cache-level facts: schema version, model, backend, versions, hardware,
                       dataset, sampling parameters, strategy menu, featurizer, latency model
    queries.jsonl      one line per query: id, provenance, prompt length, features
    records.jsonl      one line per (query_id, config_id, seed): the raw measurements of one strategy run

Either JSONL file may be gzip-compressed (``.jsonl.gz``, used for the bundled cache); the reader
accepts both. Writers only append whole lines, each with one ``write`` + ``fsync``; a line torn by a
kill is the last line of a file without a trailing newline, which ``JsonlAppender`` cuts off (it
was never acknowledged, so nothing is lost). Any other unreadable line is corruption: ``CacheError``
names the file and the line number.

Schema v1 (see docs/cache.md). Fields that a producer may not have are optional and
flagged: ``seconds`` may be ``None`` with ``seconds_source`` telling ``"measured"``, ``"modelled"``
or ``"missing"``; sample ``score``/``tokens``/``correct`` may be ``None``; ``provenance`` says for
each measured field whether it was measured by the engine, graded here, given by a third party or
modelled.
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollouts.atomic import write_text_atomic
from rollouts.errors import TTCError

SCHEMA_NAME = "ttc-alloc/rollout-cache"
SCHEMA_VERSION = 1

STRATEGIES = ("sample_pool", "beam_search", "search_result")
SECONDS_SOURCES = ("measured", "modelled", "missing")

#: Required keys per line kind, with the accepted Python types (None allowed where listed).
QUERY_FIELDS: dict[str, tuple[type, ...]] = {"query_id": (str,), "prompt_tokens": (int,), "features": (list,)}
RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "query_id": (str,), "config_id": (str,), "strategy": (str,), "params": (dict,), "seed": (int,),
    "tokens": (int,), "scorer_tokens": (int,), "seconds": (float, int, type(None)), "seconds_source": (str,),
}  # fmt: skip
SAMPLE_FIELDS: dict[str, tuple[type, ...]] = {
    "answer": (str, type(None)), "correct": (bool, type(None)), "tokens": (int, type(None)),
}  # fmt: skip


class CacheError(TTCError):
    """A cache file is missing, malformed or of another schema. The message names file and line."""


def record_key(rec: dict[str, Any]) -> tuple[str, str, int]:
    """The identity of a record: one strategy config run once (seed) on one query."""
    return (rec["query_id"], rec["config_id"], int(rec["seed"]))


# ----------------------------------------------------------------------------------------------
# Files


def _find(directory: Path, stem: str) -> Path | None:
    """``<stem>.jsonl`` in ``directory``, else ``<stem>.jsonl.gz``, else None."""
    return next((p for p in (directory / f"{stem}.jsonl", directory / f"{stem}.jsonl.gz") if p.exists()), None)


def iter_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line_number, object) from a JSONL or JSONL.GZ file; CacheError names a bad line.

    A final line without a newline in a plain file is a torn write from a killed writer and is skipped.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise CacheError(f"{path}: cannot read ({exc})") from exc
    torn = lines[-1] != ""  # content after the last newline was never completed
    for lineno, line in enumerate(lines, start=1):
        if lineno == len(lines) and (not line or torn):
            return
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CacheError(f"{path}:{lineno}: corrupt cache line ({exc.msg} at column {exc.colno})") from exc
        if not isinstance(obj, dict):
            raise CacheError(f"{path}:{lineno}: corrupt cache line (expected a JSON object)")
        yield lineno, obj


def _check_fields(obj: dict[str, Any], spec: dict[str, tuple[type, ...]], where: str) -> None:
    for key, types in spec.items():
        if key not in obj:
            raise CacheError(f"{where}: missing field {key!r}")
        val = obj[key]
        if isinstance(val, bool) and bool not in types:
            raise CacheError(f"{where}: field {key!r} has type bool, expected {types[0].__name__}")
        if not isinstance(val, types):
            raise CacheError(f"{where}: field {key!r} has type {type(val).__name__}, expected {types[0].__name__}")


def validate_query(q: dict[str, Any], where: str) -> None:
    _check_fields(q, QUERY_FIELDS, where)
    if q["prompt_tokens"] < 0:
        raise CacheError(f"{where}: prompt_tokens is negative")
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in q["features"]):
        raise CacheError(f"{where}: features must be finite numbers")


def validate_record(r: dict[str, Any], where: str) -> None:
    _check_fields(r, RECORD_FIELDS, where)
    if r["strategy"] not in STRATEGIES:
        raise CacheError(f"{where}: unknown strategy {r['strategy']!r} (known: {', '.join(STRATEGIES)})")
    if r["seconds_source"] not in SECONDS_SOURCES:
        raise CacheError(f"{where}: seconds_source must be one of {SECONDS_SOURCES}")
    if r["tokens"] < 0 or r["scorer_tokens"] < 0:
        raise CacheError(f"{where}: negative token count")
    if r["seconds"] is not None and not (math.isfinite(r["seconds"]) and r["seconds"] >= 0):
        raise CacheError(f"{where}: seconds must be a finite number >= 0 or null")
    if r["strategy"] == "sample_pool":
        samples = r.get("samples")
        if not isinstance(samples, list) or not samples:
            raise CacheError(f"{where}: a sample_pool record needs a non-empty 'samples' list")
        for i, s in enumerate(samples):
            _check_fields(s, SAMPLE_FIELDS, f"{where}: samples[{i}]")
            if s["tokens"] is not None and s["tokens"] < 0:
                raise CacheError(f"{where}: samples[{i}]: negative token count")
    else:
        res = r.get("result")
        if not isinstance(res, dict) or "correct" not in res or "answer" not in res:
            raise CacheError(f"{where}: a {r['strategy']} record needs a 'result' with 'answer' and 'correct'")
        if r["strategy"] == "beam_search":
            its = r.get("iterations")
            if not isinstance(its, list) or not its:
                raise CacheError(f"{where}: a beam_search record needs a non-empty 'iterations' list")


# ----------------------------------------------------------------------------------------------
# Writing


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via a temp file + fsync + rename, so a reader sees the old or the new file, never half."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


class JsonlAppender:
    """Appends one JSON object per line, each write whole and fsynced; cuts a torn tail on open."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired_bytes = self._cut_torn_tail()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _cut_torn_tail(self) -> int:
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0
        with open(self.path, "rb+") as fh:
            data = fh.read()
            if data.endswith(b"\n"):
                return 0
            keep = data.rfind(b"\n") + 1
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())
            return len(data) - keep

    def append(self, obj: dict[str, Any]) -> None:
        line = (json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n").encode()
        view = memoryview(line)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CacheWriter:
    """Adds queries and records to a cache directory; knows which keys are already done (resume).

    Records are appended after their query line, so a record never refers to an unwritten query.
    The writer holds the cache's lock (rollouts/locks.py) until closed: a second writer on the same
    cache raises FolderLocked before touching anything.
    """

    def __init__(self, directory: str | Path, meta: dict[str, Any] | None = None):
        from rollouts.locks import FolderLock

        self.dir = Path(directory)
        self._lock = FolderLock(self.dir, "cache").acquire()
        try:
            self._open(meta)
        except BaseException:
            self._lock.release()
            raise

    def _open(self, meta: dict[str, Any] | None) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if _find(self.dir, "records") is not None and (self.dir / "records.jsonl").exists() is False:
            raise CacheError(f"{self.dir}: compressed caches are read-only; copy to a new directory to extend")
        meta_path = self.dir / "meta.json"
        if meta_path.exists():
            self.meta = read_meta(self.dir)
            if meta:
                _check_meta_compatible(self.meta, meta, meta_path)
                self.meta = {**self.meta, **meta}  # keep what earlier runs added (e.g. latency calibration)
                write_json_atomic(meta_path, self.meta)
        else:
            self.meta = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION, **(meta or {})}
            write_json_atomic(meta_path, self.meta)
        self.query_ids: set[str] = set()
        self.keys: set[tuple[str, str, int]] = set()
        qp, rp = self.dir / "queries.jsonl", self.dir / "records.jsonl"
        self._queries = JsonlAppender(qp)
        self._records = JsonlAppender(rp)
        for lineno, q in iter_jsonl(qp):
            validate_query(q, f"{qp}:{lineno}")
            self.query_ids.add(q["query_id"])
        for lineno, r in iter_jsonl(rp):
            validate_record(r, f"{rp}:{lineno}")
            key = record_key(r)
            if key in self.keys:
                raise CacheError(f"{rp}:{lineno}: duplicate record key {key}")
            self.keys.add(key)

    def update_meta(self, **fields: Any) -> None:
        self.meta.update(fields)
        write_json_atomic(self.dir / "meta.json", self.meta)

    def add_query(self, q: dict[str, Any]) -> bool:
        """Append a query line unless the id is present. Returns True if written."""
        if q["query_id"] in self.query_ids:
            return False
        validate_query(q, f"query {q.get('query_id')!r}")
        self._queries.append(q)
        self.query_ids.add(q["query_id"])
        return True

    def has(self, query_id: str, config_id: str, seed: int) -> bool:
        return (query_id, config_id, int(seed)) in self.keys

    def add_record(self, r: dict[str, Any]) -> bool:
        """Append a record unless its key is present. Returns True if written."""
        key = record_key(r)
        if key in self.keys:
            return False
        if r["query_id"] not in self.query_ids:
            raise CacheError(f"record {key}: its query is not in the cache yet")
        validate_record(r, f"record {key}")
        self._records.append(r)
        self.keys.add(key)
        return True

    def close(self) -> None:
        self._queries.close()
        self._records.close()
        self._lock.release()

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_meta_compatible(old: dict[str, Any], new: dict[str, Any], where: Path) -> None:
    for key in ("model", "dataset", "sampling"):
        if key in old and key in new and old[key] != new[key]:
            raise CacheError(
                f"{where}: this cache was made with a different {key} ({old[key]!r} vs {new[key]!r}); "
                "resume with the same settings or write to a new cache"
            )


# ----------------------------------------------------------------------------------------------
# Reading


def read_json_file(path: Path, missing: str, what: str, error: type[ValueError] = CacheError) -> Any:
    """The JSON document in ``path``; ``error`` says ``path: <missing>`` if there is no such file, and
    names the line of a syntax error."""
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: malformed {what} ({exc.msg})") from exc


def read_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "meta.json"
    meta = read_json_file(path, "not a rollout cache (meta.json missing)", "meta.json")
    if meta.get("schema") != SCHEMA_NAME:
        raise CacheError(f"{path}: not a ttc-alloc rollout cache (schema {meta.get('schema')!r})")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise CacheError(f"{path}: schema_version {meta.get('schema_version')!r}; this code reads {SCHEMA_VERSION}")
    return meta


@dataclass
class RolloutCache:
    """A cache loaded in memory: the reader API used by the environment, evaluation and stats."""

    path: Path
    meta: dict[str, Any]
    queries: dict[str, dict[str, Any]]
    records: list[dict[str, Any]]
    by_query: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.by_query = {}
        for r in self.records:
            self.by_query.setdefault(r["query_id"], {}).setdefault(r["config_id"], []).append(r)

    @property
    def query_ids(self) -> list[str]:
        """Query ids in file order that have at least one record."""
        return [q for q in self.queries if q in self.by_query]

    @property
    def config_ids(self) -> list[str]:
        """Config ids in the order of their first record."""
        return list(dict.fromkeys(r["config_id"] for r in self.records))

    def records_for(self, query_id: str, config_id: str) -> list[dict[str, Any]]:
        return self.by_query.get(query_id, {}).get(config_id, [])


def load_cache(directory: str | Path) -> RolloutCache:
    """Read and validate a cache directory. Raises CacheError naming the file and line of any problem."""
    d = Path(directory)
    if not d.is_dir():
        raise CacheError(f"{d}: cache directory not found")
    meta = read_meta(d)
    qp, rp = _find(d, "queries"), _find(d, "records")
    if qp is None or rp is None:
        raise CacheError(f"{d}: cache needs queries.jsonl[.gz] and records.jsonl[.gz]")
    queries: dict[str, dict[str, Any]] = {}
    dim: int | None = None
    for lineno, q in iter_jsonl(qp):
        where = f"{qp}:{lineno}"
        validate_query(q, where)
        if q["query_id"] in queries:
            raise CacheError(f"{where}: duplicate query_id {q['query_id']!r}")
        if dim is None:
            dim = len(q["features"])
        elif len(q["features"]) != dim:
            raise CacheError(f"{where}: features have length {len(q['features'])}, others have {dim}")
        queries[q["query_id"]] = q
    records: list[dict[str, Any]] = []
    keys: set[tuple[str, str, int]] = set()
    for lineno, r in iter_jsonl(rp):
        where = f"{rp}:{lineno}"
        validate_record(r, where)
        if r["query_id"] not in queries:
            raise CacheError(f"{where}: record for unknown query_id {r['query_id']!r}")
        key = record_key(r)
        if key in keys:
            raise CacheError(f"{where}: duplicate record key {key}")
        keys.add(key)
        records.append(r)
    return RolloutCache(path=d, meta=meta, queries=queries, records=records)
