"""Train/val/test splits by query id, and a split's rows in an outcome table.

A query's split is a hash of ``f"{split_seed}:{query_id}"``: deterministic, independent of the order of
the ids and of which other ids the cache holds. A run stores its split (``splits.json``, the output of
:func:`make_splits`); :func:`split_rows` maps a stored split onto a table, leaving out the ids the table
does not have (a run evaluated on a cache that lost queries, or the escalation env's pool-less ones).
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from rollouts.errors import ConfigError

if TYPE_CHECKING:
    from env.outcomes import OutcomeTable

SPLITS = ("train", "val", "test")


def split_of(query_id: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """The split of one query: a hash of ``f"{seed}:{query_id}"`` mapped to [0, 1) and bucketed."""
    h = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def make_splits(query_ids: list[str], seed: int = 0, fractions=(0.7, 0.15, 0.15)) -> dict[str, Any]:
    """Deterministic train/val/test split by query id (independent of order and of other ids)."""
    fr = tuple(float(x) for x in fractions)
    if len(fr) != 3 or any(x < 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"split_fractions must be three numbers >= 0 summing to 1, got {list(fractions)}")
    out: dict[str, Any] = {"seed": int(seed), "fractions": list(fr), "method": "sha256(seed:query_id)"}
    for s in SPLITS:
        out[s] = []
    for q in query_ids:
        out[split_of(q, seed, fr)].append(q)  # type: ignore[arg-type]
    return out


def split_rows(table: OutcomeTable, splits: dict[str, Any], name: str) -> np.ndarray:
    """The table rows of split ``name`` of ``splits`` (a :func:`make_splits` output), in the split's
    order; ids the table does not hold are left out."""
    return table.indices([q for q in splits[name] if q in table.qindex])
