"""The seconds of one escalation round: ``k`` samples of a query drawn in parallel.

With the cache's latency model (``meta.json``'s ``latency_model``, or the load-scaled one) a round of
width k costs ``Round(prompt_tokens, k, longest of the k samples)``; without one, the pool record's
measured ``seconds_by_n[k]``; a cache without any seconds prices nothing (λ_L is fixed at 0 there, as
in Allocate-v0). :func:`check_round_prices` refuses, when the env is built, a cache that cannot price
some draw size (or, for the finish watch, a round cut at a finish: that needs the latency model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rollouts.cache import CacheError
from rollouts.latency import Round

if TYPE_CHECKING:
    from env.escalate_menu import EscalateMenu
    from env.outcomes import OutcomeTable
    from env.pool_outcomes import PoolRecord


def round_seconds(table: OutcomeTable, qi: int, pool: PoolRecord, k: int, max_gen: float) -> float:
    """The seconds of drawing ``k`` samples (the longest ``max_gen`` tokens) of query row ``qi``."""
    if not table.latency_available:
        return 0.0
    lat = table.latency
    if lat is not None:
        return lat.round_seconds(Round(int(table.prompt_tokens[qi]), k, max_gen))  # type: ignore[arg-type]
    if str(k) in pool.seconds_by_n:
        return pool.seconds_by_n[str(k)]
    raise CacheError(
        f"{table.cache_path}: no latency for a round of {k} samples of query "
        f"{table.query_ids[qi]!r}: meta.json has no latency_model and the record no seconds_by_n"
    )


def check_round_prices(table: OutcomeTable, menu: EscalateMenu, rows: np.ndarray) -> None:
    """Raise ``CacheError`` unless every draw size of ``menu`` can be priced for every pool record of
    ``rows`` (only a cache without a latency model but with seconds can fail: the records' own)."""
    if table.latency is not None or not table.latency_available:
        return
    if getattr(menu, "watch", "round") == "finish":
        raise CacheError(
            f"{table.cache_path}: env.watch: finish prices a round at each finish (its width and the decode steps "
            "so far), which needs meta.json's latency_model; this cache has only measured whole-round seconds"
        )
    for qi in rows:
        for c, draws in zip(menu.pool_configs, menu.pool_draw_index, strict=True):
            for p in table.pool_records(int(qi), c):
                missing = [k for k in draws if str(k) not in p.seconds_by_n]
                if missing:
                    raise CacheError(
                        f"{table.cache_path}: ttc/Escalate-v0 prices every round of k samples, but meta.json has "
                        f"no latency_model and query {table.query_ids[int(qi)]!r} has no seconds_by_n for k={missing[0]}"
                    )
