"""Rewards from a live engine (``env.source: live``): the collector runs what the policy asks for, the
cache keeps it.

:meth:`LiveSource.open` (``train.py``'s set-up stage, through :func:`open_table`):

1. checks the ``live:`` block (``env/live_config.py``): dataset spec, server, the cache's menu and model,
   before anything is started or written; starts vLLM's server itself for ``server: start``;
2. opens the collector (``rollouts/collector.py``) on the cache: the same strategy registry, prompts,
   grading, scorer, featurizer and cache writer (fsynced appends, the cache's lock, resume) as
   ``collect.py``; featurizes the dataset's queries missing from the cache, in the featurizer's batches;
3. completes the validation split with the collector (every menu item; the latency calibration runs
   first on a new cache, on validation queries; a cache with a latency model keeps it). Validation,
   the λ ranges and the utility actor's priors read these complete rows;
4. builds the :class:`env.live_table.LiveTable` from what the cache holds.

:meth:`LiveSource.ensure` then serves the training envs (``policies/live_training.py``): the (query,
action) pairs of one vectorised step whose config has no record are run on the engine together, one
batched engine call per config (a pool config runs its whole pool, from which every budget and race of
it derives), appended to the cache and priced into the table before the step returns. For the
sequential env (:meth:`ensure_configs`) a step needs its query's pools on the episode's first step (its
draws then read them, as from a cache) and a beam's config when it takes one. A test-split query
is never generated while training: the table masks its rows, and :meth:`ensure` refuses it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from env.live_config import START, LiveSettings, check_live
from env.live_table import LiveTable
from env.outcomes import OutcomeTable
from env.splits import make_splits
from rollouts.console import note, phase
from rollouts.errors import ConfigError

_OPEN: list[LiveSource] = []


class LiveSource:
    """A collector on the cache, the live table it fills, and what it has cost (``stats``)."""

    def __init__(self, live: LiveSettings, env_config: Any, progress: bool = True):
        self.live, self.env_config, self.progress = live, env_config, progress
        self.server: Any = None
        self.collector: Any = None
        self.table: LiveTable | None = None
        self.engine_seconds = 0.0  # spent on what training asked for
        self.setup_engine_seconds = 0.0  # spent completing the validation split
        self.new_records = 0
        self.steps = self.hits = 0
        self.records_per_config: Counter[str] = Counter()

    @classmethod
    def open(cls, live: LiveSettings, env_config: Any, progress: bool = True, complete: str = "val") -> LiveSource:
        """Check, start, featurize and complete split ``complete`` (see the module docstring); all or nothing."""
        check_live(live)
        src = cls(live, env_config, progress)
        _OPEN.append(src)
        try:
            src._start()
            src._complete(complete)
            src._build_table(complete)
        except BaseException:
            src.close()
            raise
        return src

    def _start(self) -> None:
        from rollouts.executors import make_collector
        from rollouts.models import resolve_model

        c = self.live.collect
        url = self.live.server
        if url == START:
            from rollouts.backends.vllm_server import VLLMServer

            with phase(f"starting vLLM's server for {c.model} on 127.0.0.1"):
                self.server = VLLMServer(resolve_model(c.model), served_model_name=c.model).start()
            url = self.server.url
        self.collector = make_collector(replace(c, backend_options={**c.backend_options, "base_url": url}),
                                        progress=self.progress)
        self.collector.featurize()
        self.prompted = {p.query_id: p for p in self.collector.prompted}
        self.query_ids = [q.query_id for q in self.collector.queries]
        self.splits = make_splits(self.query_ids, self.env_config.split_seed, self.env_config.split_fractions)

    def _complete(self, split: str) -> None:
        """Every menu item on every query of ``split``, by the collector (calibrating first on a new cache)."""
        col, todo = self.collector, self.splits[split]
        saved = col.prompted, col.cfg
        col.prompted = [self.prompted[q] for q in todo]
        if "latency_model" in col.writer.meta:  # the stored latency model
            col.cfg = replace(col.cfg, calibration_queries=0)
        t0 = time.perf_counter()
        try:
            with phase(f"completing the {split} split: {len(todo)} queries x {len(col.strategies)} menu items"):
                col.collect()
        finally:
            col.prompted, col.cfg = saved
            if col.latency is None and "latency_model" in col.writer.meta:
                from rollouts.latency import LatencyModel

                col.latency = LatencyModel.from_dict(col.writer.meta["latency_model"])
        self.setup_engine_seconds += time.perf_counter() - t0

    def _build_table(self, reference: str) -> None:
        from rollouts.cache import load_cache

        cache = load_cache(self.live.collect.output)
        self.cache_queries = cache.queries
        table = LiveTable(cache, self.collector.strategies, self.query_ids, self.env_config,
                          masked=set(self.splits["test"]))
        table.reference_rows = table.indices([q for q in self.splits[reference] if q in table.qindex])
        table.source = self  # type: ignore[attr-defined]
        self.records: dict[str, list[dict[str, Any]]] = {}
        for r in cache.records:
            if r["query_id"] in table.qindex:
                self.records.setdefault(r["query_id"], []).append(r)
            self.records_per_config[r["config_id"]] += 1
        table.add(cache, list(self.records), [r for recs in self.records.values() for r in recs])
        self.table = table
        self._cache = cache

    # -- training --------------------------------------------------------------------------------
    def ensure(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Make every (row, action) pair's outcome known: the missing configs run on the engine together."""
        table = self.table
        assert table is not None
        self.steps += len(pairs)
        self.hits += int(sum(table.known[qi, ai] for qi, ai in pairs))
        self._generate(table.missing(pairs))

    def ensure_configs(self, steps: int, needs: Sequence[tuple[int, str]]) -> None:
        """The sequential env's form of :meth:`ensure`: ``needs`` are the (row, config) records that the
        ``steps`` env steps of one vectorised step lack (``EscalateEnv.live_needs``); they run together."""
        self.steps += steps
        self.hits += steps - len({qi for qi, _ in needs})
        todo: dict[str, list[int]] = {}
        for qi, cfg in needs:
            rows = todo.setdefault(cfg, [])
            if qi not in rows:
                rows.append(qi)
        self._generate(todo)

    def _generate(self, todo: dict[str, list[int]]) -> None:
        """Run each config on its rows (one batched engine call per config), append and price the records."""
        table = self.table
        assert table is not None
        if not todo:
            return
        specs = {s.config_id: s for s in self.collector.strategies}
        test_ids = set(self.splits["test"])
        touched: dict[str, None] = {}  # the queries with new records, in order
        t0 = time.perf_counter()
        for cfg, rows in todo.items():
            qids = [table.query_ids[r] for r in rows]
            test = [q for q in qids if q in test_ids]
            if test:
                raise ConfigError(f"query {test[0]!r} is in the test split: a live run never generates it while training")
            for rec in self.collector.run_and_store(specs[cfg], [self.prompted[q] for q in qids]):
                self.records.setdefault(rec["query_id"], []).append(rec)
                self.records_per_config[cfg] += 1
                self.new_records += 1
            touched.update(dict.fromkeys(qids))
        self.engine_seconds += time.perf_counter() - t0
        table.add(self._cache, list(touched), [r for q in touched for r in self.records[q]])

    @property
    def exhausted(self) -> str | None:
        """Which cap is reached (``max_new_records`` / ``max_engine_seconds``), None while none is."""
        if self.live.max_new_records is not None and self.new_records >= self.live.max_new_records:
            return f"live.max_new_records {self.live.max_new_records}"
        if self.live.max_engine_seconds is not None and self.engine_seconds >= self.live.max_engine_seconds:
            return f"live.max_engine_seconds {self.live.max_engine_seconds}"
        return None

    def stats(self) -> dict[str, Any]:
        """What the live run has cost so far (train_summary.json's ``live``)."""
        return {"new_records": self.new_records, "engine_seconds": round(self.engine_seconds, 2),
                "setup_engine_seconds": round(self.setup_engine_seconds, 2),
                "cache_hit_rate": round(self.hits / self.steps, 4) if self.steps else None, "steps": self.steps,
                "records_per_config": dict(self.records_per_config)}

    def close(self) -> None:
        if self.collector is not None:
            self.collector.close()
            self.collector = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self in _OPEN:
            _OPEN.remove(self)


def open_table(cfg: Any, env_config: Any) -> OutcomeTable:
    """The outcome table a training job reads: the cache's (``env.source: cache``), or a live source's."""
    if getattr(env_config, "source", "cache") != "live":
        with phase(f"loading the outcome table of {cfg.cache}"):
            return OutcomeTable.for_env(cfg.cache, env_config)
    from env.live_config import parse_live

    src = LiveSource.open(parse_live(cfg.live, cfg.cache), env_config, progress=cfg.progress_bar)
    assert src.table is not None
    note(f"live: {len(src.table.query_ids)} queries, {int(src.table.known.any(axis=1).sum())} with records; "
         f"validation split completed in {src.setup_engine_seconds:.1f} s")
    return src.table


@contextmanager
def closing_live() -> Iterator[None]:
    """Close every live source opened inside (the collector, its lock, a server train.py started)."""
    try:
        yield
    finally:
        for src in list(_OPEN):
            src.close()


def complete_split(train_config: dict[str, Any], split: str = "test", progress: bool = True) -> dict[str, Any]:
    """Complete ``split`` of a live run's config (config.yml's mapping): every menu item on each of its
    queries, by the collector, so that evaluation compares policies, statics and the oracle exactly."""
    from env.escalate_env import env_config_from
    from env.live_config import parse_live

    env_config = env_config_from(train_config.get("env"))
    src = LiveSource.open(parse_live(train_config.get("live"), train_config.get("cache")), env_config,
                          progress=progress, complete=split)
    try:
        n = len(src.splits[split])
        return {"split": split, "queries": n, "engine_seconds": round(src.setup_engine_seconds, 2)}
    finally:
        src.close()


def pairs_of(rows: np.ndarray, actions: np.ndarray) -> list[tuple[int, int]]:
    """(row, action) pairs of one vectorised step."""
    return [(int(r), int(a)) for r, a in zip(rows, actions)]
