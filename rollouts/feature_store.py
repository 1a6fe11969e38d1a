"""A store of query features already computed, so the same prompt is never featurized twice.

Features depend only on the featurizer (model, layer, dim) and the prompt's token ids, so they are
keyed by those: one JSONL file per featurizer under the store folder (default
``~/.cache/ttc-alloc/features``), one line ``{"key": sha256(prompt ids), "features": [...]}`` per
prompt, appended and fsynced batch by batch (``rollouts.cache.JsonlAppender``, which also cuts a torn
last line after a crash). Importing the same questions again, into this or another cache, or
re-running an import that was killed while featurizing, reuses them. Values are rounded to 5
decimals, as the cache stores them, so a reused vector equals a recomputed one in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rollouts.cache import JsonlAppender, iter_jsonl

ROUND = 5  # decimals, as rollouts.importers stores query features


def default_store_dir() -> Path:
    from rollouts.models import cache_root

    return cache_root() / "features"


def prompt_key(prompt_ids: Sequence[int]) -> str:
    return hashlib.sha256(",".join(map(str, prompt_ids)).encode()).hexdigest()


def featurizer_key(describe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(describe, sort_keys=True).encode()).hexdigest()[:16]


class FeatureStore:
    """Features by (featurizer, prompt) on disk; ``get`` what is there, ``put`` as batches finish."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self._loaded: dict[str, dict[str, list[float]]] = {}
        self._appenders: dict[str, JsonlAppender] = {}

    def _file(self, fkey: str) -> Path:
        return self.dir / f"{fkey}.jsonl"

    def _table(self, describe: dict[str, Any]) -> tuple[str, dict[str, list[float]]]:
        fkey = featurizer_key(describe)
        if fkey not in self._loaded:
            table: dict[str, list[float]] = {}
            path = self._file(fkey)
            if path.exists():
                for _, row in iter_jsonl(path):
                    table[row["key"]] = row["features"]
            self._loaded[fkey] = table
        return fkey, self._loaded[fkey]

    def get(self, describe: dict[str, Any], keys: Sequence[str]) -> dict[str, list[float]]:
        """The stored features of those prompt keys that have them."""
        _, table = self._table(describe)
        return {k: table[k] for k in keys if k in table}

    def put(self, describe: dict[str, Any], items: Sequence[tuple[str, Sequence[float]]]) -> None:
        """Store (prompt key, features) pairs, rounded; one fsynced append per item."""
        fkey, table = self._table(describe)
        if fkey not in self._appenders:
            self.dir.mkdir(parents=True, exist_ok=True)
            meta = self.dir / f"{fkey}.featurizer.json"
            if not meta.exists():
                tmp = meta.with_suffix(".tmp")
                tmp.write_text(json.dumps(describe, sort_keys=True) + "\n")
                os.replace(tmp, meta)
            self._appenders[fkey] = JsonlAppender(self._file(fkey))
        for key, feats in items:
            if key in table:
                continue
            row = [round(float(x), ROUND) for x in feats]
            self._appenders[fkey].append({"key": key, "features": row})
            table[key] = row

    def close(self) -> None:
        for app in self._appenders.values():
            app.close()
        self._appenders.clear()
