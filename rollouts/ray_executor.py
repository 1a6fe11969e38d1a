"""Collection on a Ray cluster (``executor: ray``): replica actors run the strategies, the driver writes.

Each replica is a Ray actor holding one engine, built by the project's backend factory
(``rollouts/backends``), plus the scorer and, while queries are featurised, the featurizer. A replica
runs *whole* strategy runs (a pool, or every iteration of a beam search) for a batch of queries with
the same code as single-process collection (``rollouts.collector.run_strategy``): the work units are
exactly the single-process loop's (``batch_queries`` queries x one menu item), so greedy decoding
gives the same records. Results stream back to the driver, whose single ``CacheWriter`` appends them:
schema, fsync per line and resume are unchanged, keys already in the cache are never scheduled, and a
record whose key is already written (a retried batch) is dropped by the writer.

Faults: an actor that dies (killed, OOM, node lost) is restarted by Ray and its pending batches are
retried on it (``max_restarts`` / ``max_task_retries`` = ``replica_restarts``); once a replica is out
of restarts its batches go to the others. A killed driver loses nothing written: rerun the command.

Why an actor pool and not ``ray.data.Dataset.map_batches``: one engine per replica must serve three
phases in order (featurisation, latency calibration on one engine *alone*, then the main pass), and the
main pass needs the calibration's latency model before its first record is written. A Ray Data
pipeline's actors live for one pipeline, so each phase would start every engine again (a minute here,
minutes for large models on GPUs), and the "alone on one engine" calibration cannot be expressed as a
map over a dataset. Holding the actors lets the driver schedule each phase on the same engines, keep at
most two batches in flight per replica (backpressure), and resubmit a dead replica's batch elsewhere.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from rollouts.backends import Backend, BackendError, Completion, SamplingSpec, make_backend
from rollouts.collector import Collector, query_line, run_strategy, sampling_spec
from rollouts.config import CollectConfig
from rollouts.errors import ConfigError
from rollouts.models import resolve_model
from rollouts.scorers import make_scorer
from rollouts.strategies import PromptedQuery, StrategyResult, StrategySpec

ROOT = Path(__file__).resolve().parents[1]
IN_FLIGHT = 2  # batches queued per replica: the next one is ready when the engine finishes the last
FEATURE_BATCH = 16  # the Featurizer's default batch: the same padding groups as single-process
# Environment a replica needs from the driver's (Ray workers start from the raylet's environment).
FORWARD_ENV_PREFIXES = ("VLLM_", "HF_", "TTC_ALLOC_", "TRANSFORMERS_", "CUDA_")


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("executor=ray needs Ray: pip install -e '.[ray]' (scripts/setup.sh installs it)") from exc
    return ray


def replica_env() -> dict[str, str]:
    """Environment variables forwarded to every replica (runtime_env), with this checkout on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARD_ENV_PREFIXES)}
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    return env


class Replica:
    """One engine, its scorer and strategy code; a Ray actor (``ray.remote(Replica)``) in ``RayCollector``."""

    def __init__(self, cfg_fields: dict[str, Any], index: int):
        self.cfg = CollectConfig(**cfg_fields)
        self.index = index
        self.model_path = resolve_model(self.cfg.model)  # per node: converts a bundled model where needed
        opts = dict(self.cfg.backend_options)
        if self.cfg.tensor_parallel_size > 1:
            # The actor holds its GPUs; vLLM's multiprocessing executor shards over them inside it.
            opts.setdefault("tensor_parallel_size", self.cfg.tensor_parallel_size)
            opts.setdefault("distributed_executor_backend", "mp")
        self.backend = make_backend(self.cfg.backend, self.model_path, **opts)
        self.scorer = make_scorer(self.cfg.scorer, **self.cfg.scorer_options)
        self.sampling = sampling_spec(self.cfg)
        self._featurizer: Any = None

    def info(self) -> dict[str, Any]:
        return {"index": self.index, "pid": os.getpid(), "host": socket.gethostname(),
                "backend": self.backend.describe()}

    def features(self, prompts: list[list[int]]) -> tuple[Any, dict[str, Any]]:
        if self._featurizer is None:
            from rollouts.features import Featurizer

            self._featurizer = Featurizer(self.model_path, name=self.cfg.model)
        return self._featurizer.features(prompts, progress=False), self._featurizer.describe()

    def drop_featurizer(self) -> None:
        self._featurizer = None

    def run(self, strategy: StrategySpec, queries: list[PromptedQuery]) -> tuple[list[StrategyResult], dict[str, Any]]:
        t0 = time.perf_counter()
        results = run_strategy(self.cfg, self.backend, self.sampling, self.scorer, strategy, queries)
        return results, {"queries": len(queries), "wall_s": round(time.perf_counter() - t0, 3),
                         "replica": self.index}

    def timed_run(self, strategy: StrategySpec, q: PromptedQuery) -> tuple[StrategyResult, float]:
        """A direct latency measurement, timed inside the replica (no Ray round trip in it)."""
        t0 = time.perf_counter()
        (res,) = run_strategy(self.cfg, self.backend, self.sampling, self.scorer, strategy, [q])
        return res, time.perf_counter() - t0


class DriverView(Backend):
    """The driver's stand-in for the replicas' engine: the served model's tokenizer and a description.

    Prompts are tokenised once, here, with the model's HF tokenizer (as the HTTP backend does), so every
    replica runs the same token ids. The driver holds no engine: ``generate`` refuses.
    """

    def __init__(self, model_path: str, cfg: CollectConfig):
        super().__init__(model=model_path, info={"backend": cfg.backend, "executor": "ray"})
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    def generate(self, prompts: list[list[int]], specs: list[SamplingSpec]) -> list[list[Completion]]:
        raise BackendError("executor=ray: the driver holds no engine; strategy runs go to the replicas")


class RayCollector(Collector):
    """``Collector`` whose featurisation, calibration and strategy runs execute on Ray replica actors."""

    def __init__(self, cfg: CollectConfig, backend: Backend | None = None, progress: bool = True):
        self._ray = import_ray()
        self.actors: list[Any] = []
        self.replica_info: list[dict[str, Any]] = []
        self._dead: set[int] = set()
        self._owns_ray = False
        # the cache lock, queries and writer first (Collector): a refused run starts no cluster
        super().__init__(cfg, backend=backend or DriverView(resolve_model(cfg.model), cfg), progress=progress)
        if self._ray.is_initialized():
            return
        kw: dict[str, Any] = {"address": cfg.ray_address, "log_to_driver": True}
        if cfg.ray_address is None:
            kw["include_dashboard"] = False  # a local cluster for this run only
            # Ray starts workers at nice 15; on a shared machine the engines would then starve.
            os.environ.setdefault("RAY_worker_niceness", "0")
        try:
            self._ray.init(**kw)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError... for a bad address
            super().close()
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise BackendError(f"cannot start or join the Ray cluster (ray_address={cfg.ray_address!r}): "
                               f"{type(exc).__name__}: {first}") from exc
        self._owns_ray = True

    # -- replicas -----------------------------------------------------------------------------------
    def pool(self) -> list[Any]:
        """Start the replicas on first use (a finished cache starts none) and wait for their engines."""
        if self.actors:
            return self.actors
        ray, c = self._ray, self.cfg
        res = dict(c.replica_resources)
        opts: dict[str, Any] = {
            "num_cpus": res.pop("num_cpus", 1), "num_gpus": res.pop("num_gpus", 0), **res,
            "max_restarts": c.replica_restarts, "max_task_retries": c.replica_restarts,
            "runtime_env": {"env_vars": replica_env()},
        }
        remote = ray.remote(Replica).options(**opts)
        fields = dataclasses.asdict(c)
        self.actors = [remote.remote(fields, i) for i in range(c.replicas)]
        try:
            self.replica_info = ray.get([a.info.remote() for a in self.actors])
        except ray.exceptions.RayError as exc:
            raise BackendError(f"a Ray replica could not start its {c.backend!r} engine: {exc}") from exc
        for inf in self.replica_info:
            print(f"ray: replica {inf['index']} pid {inf['pid']} on {inf['host']} "
                  f"({inf['backend'].get('backend')}, {inf['backend'].get('device', '?')})", file=sys.stderr)
        backend = {k: v for k, v in self.replica_info[0]["backend"].items() if k != "model"}
        self.writer.update_meta(backend={**backend, "executor": "ray", "replicas": c.replicas})
        return self.actors

    def _get(self, ref: Any) -> Any:
        """``ray.get``, re-raising a replica's own exception as itself (a BackendError stays one line)."""
        try:
            return self._ray.get(ref)
        except self._ray.exceptions.RayTaskError as exc:
            if exc.cause is None:
                raise
            raise exc.cause from None

    def _stream(self, units: list[Any], submit: Callable[[Any, Any], Any]) -> Iterator[tuple[Any, Any]]:
        """Run ``units`` over the replicas (``submit(actor, unit) -> ref``), at most IN_FLIGHT queued per
        replica; yield ``(unit, result)`` as results arrive. A replica out of restarts is dropped and its
        unit goes to another one."""
        ray, actors = self._ray, self.pool()
        queue, load = deque(units), [0] * len(actors)
        inflight: dict[Any, Any] = {}  # ref -> (actor index, unit)
        while queue or inflight:
            for i, actor in enumerate(actors):
                while queue and i not in self._dead and load[i] < IN_FLIGHT:
                    u = queue.popleft()
                    inflight[submit(actor, u)] = (i, u)
                    load[i] += 1
            if not inflight:
                raise BackendError(f"every Ray replica died ({len(actors)} of {len(actors)}); "
                                   "the cache keeps every record written: rerun to resume")
            (ref,), _ = ray.wait(list(inflight), num_returns=1)
            i, u = inflight.pop(ref)
            load[i] -= 1
            try:
                out = self._get(ref)
            except ray.exceptions.RayActorError as exc:  # out of restarts: never use it again
                self._dead.add(i)
                queue.appendleft(u)
                print(f"ray: replica {i} is gone ({type(exc).__name__}); its batch goes to another", file=sys.stderr)
                continue
            yield u, out

    # -- the three phases on the replicas -----------------------------------------------------------
    def featurize(self) -> None:
        todo = [(q, p) for q, p in zip(self.queries, self.prompted) if q.query_id not in self.writer.query_ids]
        if not todo:
            return
        chunks = list(enumerate(todo[i:i + FEATURE_BATCH] for i in range(0, len(todo), FEATURE_BATCH)))
        done: dict[int, Any] = {}
        nxt, featurizer = 0, None
        bar = tqdm(total=len(todo), desc="features (ray)", unit="q", disable=not self.progress)
        stream = self._stream(chunks, lambda a, u: a.features.remote([p.prompt_ids for _, p in u[1]]))
        for (ci, chunk), (feats, described) in stream:
            featurizer = described  # every replica describes the same featurizer
            done[ci] = (chunk, feats)
            while nxt in done:  # the single-process order of query lines
                for (q, p), f in zip(*done.pop(nxt)):
                    self.writer.add_query(query_line(self.cfg, q, p, f))
                nxt += 1
            bar.update(len(chunk))
        bar.close()
        self.writer.update_meta(featurizer=featurizer)
        self._ray.get([a.drop_featurizer.remote() for i, a in enumerate(self.actors) if i not in self._dead])

    def _live(self) -> Any:
        actors = self.pool()
        live = [a for i, a in enumerate(actors) if i not in self._dead]
        if not live:
            raise BackendError("every Ray replica died; rerun to resume")
        return live[0]

    def _run(self, strategy: StrategySpec, queries: list[PromptedQuery]) -> list[StrategyResult]:
        return self._get(self._live().run.remote(strategy, queries))[0]

    def _timed_run(self, strategy: StrategySpec, q: PromptedQuery) -> tuple[StrategyResult, float]:
        # Calibration runs on one replica while the others idle: a query alone on its engine.
        return self._get(self._live().timed_run.remote(strategy, q))

    def collect(self) -> dict[str, Any]:
        self.featurize()
        self.calibrate()
        c = self.cfg
        cids = [s.config_id for s in self.strategies]
        total = len(self.prompted) * len(cids)
        done = sum(self.writer.has(q.query_id, cid, c.seed) for q in self.prompted for cid in cids)
        units = []  # the single-process loop's units, in its order, minus what the cache has
        for start in range(0, len(self.prompted), c.batch_queries):
            batch = self.prompted[start:start + c.batch_queries]
            for strategy, cid in zip(self.strategies, cids):
                todo = [q for q in batch if not self.writer.has(q.query_id, cid, c.seed)]
                if todo:
                    units.append((strategy, todo))
        gen_tokens, written, dropped = 0, 0, 0
        bar = tqdm(total=total, initial=done, desc=f"collect (ray, {c.replicas} replicas)", unit="rec",
                   disable=not self.progress)
        t_start = time.perf_counter()
        if units:
            self.pool()
            t_start = time.perf_counter()  # engine starts are not collection throughput
        for (_, todo), (results, info) in self._stream(units, lambda a, u: a.run.remote(u[0], u[1])):
            for res in results:
                if self.writer.add_record(self._record(res, info)):
                    gen_tokens += res.tokens
                    written += 1
                else:
                    dropped += 1  # a retried batch's record that was already written
            bar.update(len(todo))
            dt = max(time.perf_counter() - t_start, 1e-9)
            bar.set_postfix(tok_s=f"{gen_tokens / dt:.0f}", rec_s=f"{written / dt:.2f}",
                            replicas=len(self.actors) - len(self._dead))
        bar.close()
        return {"generated_tokens": gen_tokens, "wall_s": time.perf_counter() - t_start, "records": written,
                "duplicates_dropped": dropped, "replicas": c.replicas}

    def close(self) -> None:
        super().close()
        for a in self.actors:
            try:
                self._ray.kill(a)
            except Exception:  # already gone
                pass
        self.actors = []
        if self._owns_ray:
            self._ray.shutdown()
