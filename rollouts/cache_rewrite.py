"""Whole-cache rewrites: every record of a plain cache re-made in place (:func:`rewrite_records`, e.g.
re-priced seconds), the bundled form, a gzip-compressed copy (:func:`write_compressed_copy`), and a copy
holding only some queries (:func:`write_subset`, e.g. for small-data experiments).

Both validate what they write with :mod:`rollouts.cache`'s rules and replace files atomically.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from rollouts.atomic import fsync_dir
from rollouts.cache import (
    CacheWriter,
    RolloutCache,
    iter_jsonl,
    load_cache,
    validate_record,
    write_json_atomic,
)


def rewrite_records(directory: str | Path, fn: Any) -> int:
    """Apply ``fn`` to every record of a plain cache and replace the file atomically. Returns the count."""
    d = Path(directory)
    rp = d / "records.jsonl"
    recs = [fn(r) for _, r in iter_jsonl(rp)]
    for i, r in enumerate(recs, 1):
        validate_record(r, f"{rp}:{i} (rewritten)")
    tmp = rp.with_name(f".{rp.name}.rewrite")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in recs:
            fh.write(json.dumps(r, sort_keys=True, separators=(",", ":"), allow_nan=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, rp)
    fsync_dir(d)
    return len(recs)


def _without_text(rec: dict[str, Any]) -> dict[str, Any]:
    rec = dict(rec)
    if "samples" in rec:
        rec["samples"] = [{k: v for k, v in s.items() if k != "text"} for s in rec["samples"]]
    if "result" in rec:
        rec["result"] = {k: v for k, v in rec["result"].items() if k != "text"}
    return rec


def write_compressed_copy(src: str | Path, dst: str | Path, drop_text: bool = False) -> None:
    """Copy a cache into ``dst`` with gzip-compressed JSONL files (the bundled form).

    ``drop_text`` removes generated texts (answers, correctness and counts stay): model outputs can
    quote a third-party question, which a bundled cache must not carry.
    """
    src, dst = Path(src), Path(dst)
    cache = load_cache(src)  # validates before packing
    dst.mkdir(parents=True, exist_ok=True)
    meta = dict(cache.meta)
    if drop_text:
        meta["texts_dropped"] = True
    records = [_without_text(r) for r in cache.records] if drop_text else cache.records
    queries = [cache.queries[q] for q in cache.query_ids]  # only queries with records
    for stem, objs in (("queries", queries), ("records", records)):
        _write_gz_lines(dst / f"{stem}.jsonl.gz", objs)
    write_json_atomic(dst / "meta.json", meta)


def _write_gz_lines(path: Path, objs: Iterable[dict[str, Any]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=9) as fh:
        for o in objs:
            fh.write(json.dumps(o, sort_keys=True, separators=(",", ":")) + "\n")
    os.replace(tmp, path)


def write_subset(
    src: RolloutCache,
    query_ids: set[str],
    out: str | Path,
    transform: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    drop_meta: tuple[str, ...] = (),
) -> Path:
    """A new cache at ``out`` with ``src``'s meta (less the keys ``drop_meta``) and only the queries
    ``query_ids`` and their records; ``transform`` maps each kept record to the records written in its
    place (a test fixture splits pools or drops timings this way)."""
    drop = ("schema", "schema_version", *drop_meta)
    meta = {k: v for k, v in src.meta.items() if k not in drop}
    with CacheWriter(out, meta=meta) as w:
        for q in src.queries.values():
            if q["query_id"] in query_ids:
                w.add_query(q)
        for r in src.records:
            if r["query_id"] in query_ids:
                for rec in transform(r) if transform is not None else [r]:
                    w.add_record(rec)
    return Path(out)
