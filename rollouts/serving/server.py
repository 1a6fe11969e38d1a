"""The routing server's request handling: admission (auth, body, model, the upstream's limits),
pricing, the batched featurizer, a slot, the strategy in a worker thread against a cancellable
upstream view, and the reply; raced against the client's disconnect and the request's deadline.
``serve.py`` builds the FastAPI app around it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hmac
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import Request

from rollouts.errors import ConfigError
from rollouts.serving.protocol import (
    ChatRequest,
    RequestError,
    ServeConfig,
    error_body,
    load_body,
    parse_chat_request,
)
from rollouts.strategies import POOL, RACE
from rollouts.strategies.race import SAMPLE_COUNTS

log = logging.getLogger("ttc.serve")


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ttc_requests", "chat completion requests by HTTP status", ["status"], registry=r)
        self.errors = Counter("ttc_errors", "failed requests by kind", ["kind"], registry=r)
        self.cancelled = Counter("ttc_cancelled", "requests abandoned and their upstream work cancelled, by reason",
                                 ["reason"], registry=r)  # fmt: skip
        self.actions = Counter("ttc_actions", "actions chosen by the policy", ["action"], registry=r)
        self.tokens = Counter("ttc_generated_tokens", "tokens generated upstream by the strategies", registry=r)
        buckets = (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)
        self.latency = Histogram("ttc_request_seconds", "end-to-end request latency (queue included)",
                                 buckets=buckets, registry=r)  # fmt: skip
        self.strategy_seconds = Histogram("ttc_strategy_seconds", "featurize + choose + strategy run, by strategy",
                                          ["strategy"], buckets=buckets, registry=r)  # fmt: skip
        self.batch = Histogram("ttc_featurize_batch", "requests featurized in one forward pass",
                               buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)  # fmt: skip
        self.in_flight = Gauge("ttc_in_flight", "requests running now", registry=r)
        self.queued = Gauge("ttc_queued", "requests waiting for a slot", registry=r)


class RoutingServer:
    """What the handlers share: config, router, metrics, slots, the featurizer batcher, the upstream."""

    def __init__(self, cfg: ServeConfig, router: Any, policy_kinds: dict[str, Callable[..., dict[str, Any]]],
                 budgets: Any) -> None:  # fmt: skip
        import httpx

        from rollouts.serving.batcher import FeaturizeBatcher
        from rollouts.serving.upstream import Upstream

        self.cfg, self.router = cfg, router
        self.kind = router.policy.doc.get("kind", "allocate")
        if self.kind not in policy_kinds:
            raise ConfigError(f"{cfg.export}: policy kind {self.kind!r} cannot be served (known: "
                              f"{', '.join(policy_kinds)})")  # fmt: skip
        self.serve_fn = policy_kinds[self.kind]
        self.budgets = budgets  # serve.Budgets: target -> prices
        self.metrics = Metrics()
        self.pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="ttc-request")
        self.slots = asyncio.Semaphore(cfg.max_concurrency)
        self.pending = 0  # admitted requests: running + waiting (event-loop thread only)
        self.batcher = FeaturizeBatcher(router, cfg.batch_wait_s, cfg.max_batch, on_batch=self.metrics.batch.observe)
        self.up = Upstream(cfg.upstream.rstrip("/"), cfg.upstream_api_key)
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(cfg.upstream_timeout_s, connect=self.up.connect_timeout_s),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=4 * cfg.max_concurrency),
        )
        self.served_names = {cfg.model_name}
        self._check_tok: Any = None
        self._learned = False
        self._limits_for: int | None = None
        self._engine_lock = threading.Lock()
        self._started: Any = None
        self._learn_lock = asyncio.Lock()

    async def close(self) -> None:
        self.pool.shutdown(wait=True)  # uvicorn has already let the in-flight requests finish
        self.batcher.close()
        await self.client.aclose()

    def fail(self, status: int, kind: str, message: str, param: str | None = None, headers=None,
             code: str | None = None) -> Any:  # fmt: skip
        from fastapi.responses import JSONResponse

        self.metrics.requests.labels(str(status)).inc()
        self.metrics.errors.labels(kind).inc()
        return JSONResponse(error_body(message, kind, param, code), status_code=status, headers=headers)

    def refuse(self, exc: RequestError) -> Any:
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        return self.fail(exc.status, exc.kind, str(exc), exc.param, headers, exc.code)

    def authorized(self, request: Request) -> bool:
        if not self.cfg.api_key:
            return True
        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {self.cfg.api_key}".encode())

    async def read_body(self, request: Request) -> bytes:
        limit = self.cfg.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise RequestError("body", f"{declared} bytes, the limit is {limit}")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise RequestError("body", f"more than {limit} bytes")
        return bytes(buf)

    async def learn_upstream(self) -> None:
        """The upstream's served model and context length, asked once (``GET /v1/models``); the
        question limits follow its ``max_model_len``. 502 while it cannot be reached."""
        import httpx

        if self._learned:
            return
        async with self._learn_lock:  # once, however many requests arrive first
            if self._learned:
                return
            try:
                r = await self.client.get(f"{self.up.base_url}/models", headers=self.up.headers, timeout=5.0)
                r.raise_for_status()
                self.up.learn(r.json())
            except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                log.warning("upstream %s: GET /models failed: %s: %s", self.up.base_url, type(exc).__name__, exc)
                raise RequestError(None, "the upstream inference server is unreachable or failing", 502,
                                   "upstream_error") from exc  # fmt: skip
            self.served_names.add(str(self.up.served_model_name))
            self._learned = True

    def _engine(self) -> Any:
        """The router's ``openai`` backend (its connections, served model and limits), started once; each
        request runs on a :meth:`~rollouts.backends.openai_http.OpenAIBackend.scoped` view of it."""
        with self._engine_lock:
            if self._started is None:
                engine = self.router.backend
                _ = engine.tokenizer  # loaded here, shared by the views
                self._started = engine
            return self._started

    async def admit(self, request: Request) -> ChatRequest:
        req = parse_chat_request(load_body(await self.read_body(request)), self.cfg)
        await self.learn_upstream()
        if req.model is not None and req.model not in self.served_names:
            raise RequestError("model", f"the model {req.model!r} does not exist (served: "
                               f"{', '.join(sorted(self.served_names))})", 404, code="model_not_found")  # fmt: skip
        problem = self.check(req.question)
        if problem is not None:
            raise RequestError("messages", f"the question is refused: {problem}")
        return req

    def check(self, question: str) -> str | None:
        """The question's limits (its prompt must fit the upstream's context with the generation budget),
        checked here with a tokenizer of its own (the batcher's thread owns the router's), so a refusal
        never waits behind a featurizer forward."""
        import copy

        from rollouts.prompts import build_messages, prompt_token_ids
        from rollouts.questions import QuestionLimits, check_question

        if self._check_tok is None:
            self._check_tok = copy.deepcopy(self.router.featurizer.tokenizer)
        if self.up.max_model_len and self._limits_for != self.up.max_model_len:  # the upstream's context
            max_new, max_chars = self.router.sampling.max_tokens, self.router.limits.max_chars
            self.router.limits = QuestionLimits.for_engine(self.up.max_model_len, max_new, max_chars)
            self._limits_for = self.up.max_model_len
        r, tok = self.router, self._check_tok
        _, problem = check_question(question, r.limits,
                                    lambda q: prompt_token_ids(tok, build_messages(q, r.suffix, r.system)))  # fmt: skip
        return problem

    async def prices(self, req: ChatRequest) -> tuple[float, float, Any]:
        if req.target is None:
            return req.lambda_tokens, req.lambda_seconds, None
        cost, value = req.target
        other = req.lambda_seconds if cost == "tokens" else req.lambda_tokens
        sol = await asyncio.to_thread(self.budgets.solve, cost, value, other)
        return sol.lambda_tokens, sol.lambda_seconds, sol

    async def process(self, req: ChatRequest, scope: Any) -> dict[str, Any]:
        """Price, featurize (batched), wait for a slot, run the strategy in a worker thread."""
        from rollouts.serving.batcher import Refused

        t0 = time.perf_counter()
        lt, ls, solved = await self.prices(req)
        try:
            chosen = await asyncio.wrap_future(self.batcher.submit(req.question, lt, ls))
        except Refused as exc:
            raise RequestError("messages", f"the question is refused: {exc}") from exc
        engine = self._started or await asyncio.to_thread(self._engine)
        self.metrics.queued.inc()
        try:
            await asyncio.wait_for(self.slots.acquire(), timeout=self.cfg.queue_timeout_s)
        except asyncio.TimeoutError as exc:
            raise RequestError(None, f"no slot within {self.cfg.queue_timeout_s:g} s; retry later", 503,
                               "queue_timeout") from exc  # fmt: skip
        finally:
            self.metrics.queued.dec()
        self.metrics.in_flight.inc()
        backend = engine.scoped(scope)  # its calls close when the request is abandoned
        try:
            fut = asyncio.get_running_loop().run_in_executor(self.pool, _worker, self.serve_fn, self.router, chosen, backend)
            try:
                out = await asyncio.shield(fut)
            except asyncio.CancelledError:  # abandoned: close its upstream calls, free the slot once it stops
                scope.cancel("abandoned")
                await asyncio.wait({fut})
                if not fut.cancelled():
                    fut.exception()  # retrieved: the thread's Cancelled is the expected end
                raise
        finally:
            self.metrics.in_flight.dec()
            self.slots.release()
        out["seconds"] = time.perf_counter() - t0
        out["lambda_tokens"], out["lambda_seconds"], out["budget"] = lt, ls, solved
        return out

    async def run(self, request: Request, req: ChatRequest) -> dict[str, Any] | None:
        """:meth:`process` raced against the client's disconnect and the request's deadline: the
        result, or None when it was abandoned (its upstream work cancelled, counted)."""
        from rollouts.backends.cancel import CancelScope

        scope = CancelScope()
        task = asyncio.create_task(self.process(req, scope))
        gone = asyncio.create_task(_disconnected(request))
        try:
            done, _ = await asyncio.wait({task, gone}, timeout=self.cfg.request_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        finally:
            gone.cancel()
        if task in done:
            return task.result()
        reason = "client_disconnected" if gone in done and not gone.cancelled() else "deadline"
        scope.cancel(reason)
        task.cancel()
        await asyncio.wait({task})
        self.metrics.cancelled.labels(reason).inc()
        return None if reason == "client_disconnected" else {"deadline": True}

    async def chat(self, request: Request) -> Any:
        from rollouts.backends.base import BackendError
        from rollouts.backends.cancel import Cancelled

        t_arrive = time.perf_counter()
        if not self.authorized(request):
            return self.fail(401, "unauthorized", "missing or wrong API key (Authorization: Bearer ...)")
        try:
            req = await self.admit(request)
        except RequestError as exc:
            return self.refuse(exc)
        cfg = self.cfg
        if self.pending >= cfg.max_concurrency + cfg.max_queue:
            return self.fail(429, "queue_full", f"{self.pending} requests in flight or queued; retry later",
                             headers={"Retry-After": "1"})  # fmt: skip
        self.pending += 1
        try:
            out = await self.run(request, req)
        except RequestError as exc:
            return self.refuse(exc)
        except (BackendError, Cancelled) as exc:  # the details (URL, upstream text) go to the log only
            log.warning("upstream failure: %s", " ".join(str(exc).split()))
            return self.fail(502, "upstream_error", "the upstream inference server failed (see the server log)")
        finally:
            self.pending -= 1
        if out is None:  # the client is gone; nobody reads this
            return self.fail(499, "cancelled", "the client disconnected; its upstream work was cancelled")
        if out.get("deadline"):
            return self.fail(504, "timeout", f"no answer within {cfg.request_timeout_s:g} s; its upstream work "
                             "was cancelled")  # fmt: skip
        return self.reply(out, time.perf_counter() - t_arrive)

    def reply(self, out: dict[str, Any], latency: float) -> dict[str, Any]:
        run = self.router.serving["actions"][out["action"]]
        m = self.metrics
        m.requests.labels("200").inc()
        m.actions.labels(out["action"]).inc()
        m.tokens.inc(out["generated_tokens"])
        m.strategy_seconds.labels(run["strategy"]).observe(out["seconds"])
        m.latency.observe(latency)
        b = out["budget"]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.cfg.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                         "finish_reason": out.get("finish_reason") or "stop", "logprobs": None}],
            "usage": {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["generated_tokens"],
                      "total_tokens": out["prompt_tokens"] + out["generated_tokens"]},
            "ttc": {
                "action": out["action"], "strategy": run["strategy"], "n": run["n"],
                "selector": run.get("selector") if run["strategy"] in (POOL, RACE) else "best_score",
                "rounds": len(out["rounds"]), "tokens": out["tokens"], "generated_tokens": out["generated_tokens"],
                "seconds": round(out["seconds"], 4), "answer": out["answer"],
                **{k: out[k] for k in SAMPLE_COUNTS if k in out},
                "lambda_tokens": out["lambda_tokens"], "lambda_seconds": out["lambda_seconds"],
                "budget": None if b is None else {"cost": b.cost, "target": b.target, "solved_mean": b.achieved,
                                                  "binding": b.binding},
                "policy": self.kind,
            },
        }  # fmt: skip

    async def health(self) -> dict[str, Any]:
        import httpx

        try:
            r = await self.client.get(f"{self.up.base_url}/models", headers=self.up.headers, timeout=2.0)
            up = r.status_code == 200
        except httpx.HTTPError:
            up = False
        return {"status": "ok", "upstream": "ok" if up else "down", "pending": self.pending,
                "max_concurrency": self.cfg.max_concurrency, "max_queue": self.cfg.max_queue}  # fmt: skip


def _worker(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``fn`` in a worker thread. A ``concurrent.futures.CancelledError`` escaping it is a bug (no one
    cancelled the request), not a cancellation: the event loop would turn it into asyncio's own
    CancelledError, which no handler catches, and the client would get a plain-text 500."""
    try:
        return fn(*args)
    except concurrent.futures.CancelledError as exc:
        raise RuntimeError(f"a future inside the strategy was cancelled: {exc!r}") from exc


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read by then, so the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


