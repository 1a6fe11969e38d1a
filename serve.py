"""An OpenAI-compatible routing server: a chat request in, the learned policy picks the strategy and
budget, the strategy runs against an upstream vLLM server, one answer goes back with what it cost.

    python -m vllm.entrypoints.openai.api_server --model ~/.cache/ttc-alloc/models/smollm2-135m-instruct \\
        --host 127.0.0.1 --port 8000 --dtype float32 --enforce-eager --served-model-name smollm2
    python serve.py --export runs/<name>/export --upstream http://127.0.0.1:8000/v1 --port 8080

Per request (``POST /v1/chat/completions``, the OpenAI schema, so the official ``openai`` client
works unchanged): the last user message is the question; it is prompted and featurized as the
collection did (``route.LiveRouter``: the serving spec of the export), the exported policy picks an
action at the request's prices, and the action runs through the project's strategy code against the
upstream (``rollouts/backends/openai_http.py``: timeouts, bounded retries). Prices come from the
extra body field ``ttc`` (``lambda_tokens``, ``lambda_seconds``, or a budget ``target_tokens`` /
``target_seconds`` whose price is found by bisection on the run's non-test queries,
``policies/budget.py``), defaulting to the server's ``--lambda-*``. The reply is the selected
completion as the assistant message, ``usage.completion_tokens`` = every token the strategy made the
engine generate, and a ``ttc`` block (action, strategy, selector, n, rounds, tokens, seconds, ...; a race
adds samples_launched, samples_finished and samples_cancelled).

Also ``GET /v1/models``, ``GET /health`` (liveness, with the upstream's state) and ``GET /metrics``
(Prometheus text). Robustness: at most ``--max-concurrency`` requests run at once, ``--max-queue``
more wait (beyond that: 429; waiting longer than ``--queue-timeout-s``: 503); upstream down or
failing after its retries: 502 with a JSON error, and the server keeps serving; malformed requests:
400 naming the field (``error.param``); ``--api-key`` (or ``TTC_SERVE_API_KEY``) enforces a bearer
key on ``/v1/*``; SIGTERM/SIGINT stop accepting and let in-flight requests finish
(``--graceful-timeout-s``). Bad command-line input prints one ``error:`` line and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# module level: FastAPI resolves the handlers' (postponed) annotations in this module's globals
from fastapi import FastAPI, Request

from rollouts.errors import LIBRARY_INPUT_ERRORS, ConfigError, TTCError, report
from rollouts.strategies import POOL, RACE

OPENAI_KEYS = {  # accepted and ignored: the strategy samples as the collection did
    "model", "messages", "ttc", "temperature", "top_p", "max_tokens", "max_completion_tokens", "n",
    "stream", "user", "stop", "seed", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs",
    "metadata", "store", "stream_options", "response_format", "logit_bias", "service_tier",
}  # fmt: skip
TTC_KEYS = ("lambda_tokens", "lambda_seconds", "target_tokens", "target_seconds")
ROLES = ("system", "developer", "user", "assistant", "tool")


class RequestError(TTCError):
    """A malformed request: HTTP 400 naming ``param``."""

    def __init__(self, param: str, message: str, status: int = 400) -> None:
        super().__init__(f"{param}: {message}")
        self.param, self.status = param, status


@dataclass
class ServeConfig:
    export: str
    upstream: str = "http://127.0.0.1:8000/v1"
    model_name: str = "ttc-alloc"
    lambda_tokens: float = 0.0
    lambda_seconds: float = 0.0
    max_concurrency: int = 16
    max_queue: int = 64
    queue_timeout_s: float = 300.0
    upstream_timeout_s: float = 300.0
    upstream_retries: int = 1
    upstream_backoff_s: float = 0.5
    max_body_bytes: int = 65536
    max_question_chars: int = 4000
    api_key: str | None = None
    run: str | None = None  # run folder (splits.json, config.yml) for budget targets; default: export's parent
    budget_split: str = "train+val"  # policies/budget.py BUDGET_SPLITS
    graceful_timeout_s: float = 60.0


@dataclass
class ChatRequest:
    question: str
    lambda_tokens: float
    lambda_seconds: float
    target: tuple[str, float] | None = None  # ("tokens" | "seconds", value)
    extra: dict[str, Any] = field(default_factory=dict)


def _price(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise RequestError(f"ttc.{name}", f"must be a finite number >= 0, got {v!r}")
    return float(v)


def parse_chat_request(body: Any, cfg: ServeConfig) -> ChatRequest:
    """Validate a chat-completions body; :class:`RequestError` names the first bad field."""
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object")
    if body.get("stream"):
        raise RequestError("stream", "streaming is not supported (the answer is selected after the strategy ends)")
    if body.get("n", 1) != 1:
        raise RequestError("n", f"only n = 1 is supported (the strategy returns one selected answer), got {body['n']!r}")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise RequestError("messages", "required: a non-empty list of {role, content}")
    question = None
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise RequestError(f"messages[{i}].role", f"must be one of {', '.join(ROLES)}")
        c = m.get("content")
        if isinstance(c, list):  # content parts: only text parts are meaningful here
            parts = [p.get("text") for p in c if isinstance(p, dict) and p.get("type") == "text"]
            if len(parts) != len(c) or not all(isinstance(p, str) for p in parts):
                raise RequestError(f"messages[{i}].content", "only text content parts are supported")
            c = "".join(parts)
        if m["role"] == "user":
            if not isinstance(c, str) or not c.strip():
                raise RequestError(f"messages[{i}].content", "a user message needs non-empty text")
            if len(c) > cfg.max_question_chars:
                raise RequestError(
                    f"messages[{i}].content", f"{len(c)} characters, the limit is {cfg.max_question_chars}"
                )
            question = c
    if question is None:
        raise RequestError("messages", "no user message (the last user message is the question)")
    ttc = body.get("ttc", {})
    if ttc is None:
        ttc = {}
    if not isinstance(ttc, dict):
        raise RequestError("ttc", "must be an object")
    unknown = sorted(set(ttc) - set(TTC_KEYS))
    if unknown:
        raise RequestError(f"ttc.{unknown[0]}", f"unknown key (known: {', '.join(TTC_KEYS)})")
    lt = _price("lambda_tokens", ttc.get("lambda_tokens", cfg.lambda_tokens))
    ls = _price("lambda_seconds", ttc.get("lambda_seconds", cfg.lambda_seconds))
    targets = [k for k in ("target_tokens", "target_seconds") if ttc.get(k) is not None]
    target = None
    if len(targets) > 1:
        raise RequestError("ttc.target_seconds", "give one budget target per request, not both")
    if targets:
        k = targets[0]
        v = ttc[k]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise RequestError(f"ttc.{k}", f"must be a finite number > 0, got {v!r}")
        if ("lambda_tokens" if k == "target_tokens" else "lambda_seconds") in ttc:
            raise RequestError(f"ttc.{k}", "a target sets its own λ; do not also give that λ")
        target = (k.removeprefix("target_"), float(v))
    return ChatRequest(question, lt, ls, target)


# ----------------------------------------------------------------------------------------------
# Policies: how one request becomes one answer


_CHOOSE_LOCK = threading.Lock()  # one featurizer forward at a time (HF fast tokenizers are not thread-safe)


def serve_one_shot(router: Any, question: str, lambda_tokens: float, lambda_seconds: float) -> dict[str, Any]:
    """One-shot policy (``policies/onnx_policy.py``): pick one action for the query, run it once."""
    with _CHOOSE_LOCK:
        problem = router.check(question)  # the limits of rollouts/questions.py (empty, too long...)
        if problem is not None:
            raise RequestError("messages", f"the question is refused: {problem}")
        prompted, actions = router.choose([question], None, lambda_tokens, lambda_seconds)
    out = router.run_action(prompted, actions[0])[0]
    return {"action": actions[0], "prompt_tokens": len(prompted[0].prompt_ids), **out}


#: policy.json ``kind`` -> how a request is served. The sequential policy of ttc/Escalate-v0
#: (``policies/sequential_router.py``, route.py ``--mode sequential``) plugs in here with its own entry
#: (a router built from the export, and a function that runs rounds until the policy stops).
POLICY_KINDS: dict[str, Callable[..., dict[str, Any]]] = {"allocate": serve_one_shot}


class Budgets:
    """Budget targets -> prices, solved on the run's non-test queries (loaded on first use, memoized)."""

    def __init__(self, router: Any, run_dir: Path | None, split: str = "train+val") -> None:
        self.router, self.run_dir, self.split = router, run_dir, split
        self._lock = threading.Lock()
        self._table: Any = None
        self._rows: Any = None
        self._memo: dict[tuple[str, float, float], Any] = {}

    def _load(self) -> None:
        from env.allocate_env import stored_env_dict
        from env.escalate_env import env_config_from
        from env.outcomes import OutcomeTable
        from env.splits import split_rows
        from rollouts.config import load_yaml_text

        run = self.run_dir
        if run is None or not (run / "splits.json").is_file():
            raise RequestError("ttc", f"budget targets need the run's splits; {run}/splits.json not found "
                                      "(start serve.py with --run RUN_FOLDER)")  # fmt: skip
        cfg = load_yaml_text((run / "config.yml").read_text()) if (run / "config.yml").is_file() else {}
        cache = cfg.get("cache")
        if not cache or not Path(cache).is_dir():
            raise RequestError("ttc", f"the run's cache {cache!r} is not here (budget targets solve on it)")
        table = OutcomeTable.for_env(cache, env_config_from(stored_env_dict(cfg.get("env"))))
        if list(table.action_ids) != list(self.router.policy.menu):
            raise RequestError("ttc", "the run's cache has another action menu than the export")
        from policies.budget import budget_rows

        splits = json.loads((run / "splits.json").read_text())
        rows_of = {s: split_rows(table, splits, s) for s in ("train", "val")}
        rows = budget_rows(rows_of, self.split)
        self._table, self._rows = table, rows[table.mask[rows].all(axis=1)]

    def solve(self, cost: str, target: float, other: float) -> Any:
        from policies.budget import BudgetError, solve_on_table

        with self._lock:
            if self._table is None:
                self._load()
            key = (cost, target, other)
            if key not in self._memo:
                t, pol = self._table, self.router.policy

                def choose(lt: float, ls: float) -> Any:
                    return pol.act_index(t.features[self._rows], t.prompt_tokens[self._rows], lt, ls,
                                         mask=t.mask[self._rows])  # fmt: skip

                try:
                    self._memo[key] = solve_on_table(t, self._rows, choose, cost, target, other)
                except BudgetError as exc:
                    raise RequestError(f"ttc.target_{cost}", str(exc)) from exc
            return self._memo[key]


# ----------------------------------------------------------------------------------------------
# The app


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("ttc_requests", "chat completion requests by HTTP status", ["status"], registry=r)
        self.errors = Counter("ttc_errors", "failed requests by kind", ["kind"], registry=r)
        self.actions = Counter("ttc_actions", "actions chosen by the policy", ["action"], registry=r)
        self.tokens = Counter("ttc_generated_tokens", "tokens generated upstream by the strategies", registry=r)
        buckets = (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256)
        self.latency = Histogram("ttc_request_seconds", "end-to-end request latency (queue included)",
                                 buckets=buckets, registry=r)  # fmt: skip
        self.strategy_seconds = Histogram("ttc_strategy_seconds", "featurize + choose + strategy run, by strategy",
                                          ["strategy"], buckets=buckets, registry=r)  # fmt: skip
        self.in_flight = Gauge("ttc_in_flight", "requests running now", registry=r)
        self.queued = Gauge("ttc_queued", "requests waiting for a slot", registry=r)


def error_body(message: str, kind: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def create_app(cfg: ServeConfig, router: Any = None) -> Any:
    """The FastAPI app; ``router`` defaults to a ``route.LiveRouter`` on the export and the upstream."""
    from contextlib import asynccontextmanager

    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from rollouts.backends.base import BackendError

    if router is None:
        from importlib import import_module

        from policies.onnx_policy import OnnxPolicy

        # route.py is `route` in a checkout and `ttc_alloc.cli.route` in the wheel (beside this module).
        LiveRouter = import_module(f"{__package__}.route" if __package__ else "route").LiveRouter

        kind = OnnxPolicy(cfg.export).doc.get("kind", "allocate")
        if kind not in POLICY_KINDS:
            what = "sequential (ttc/Escalate-v0)" if kind == "escalate" else repr(kind)
            raise ConfigError(f"{cfg.export}: a {what} export; serve.py serves one-shot (ttc/Allocate-v0) exports "
                              "only; route a sequential one with python route.py --mode sequential")  # fmt: skip

        router = LiveRouter(
            cfg.export, backend_kind="openai",
            backend_options={"base_url": cfg.upstream, "timeout_s": cfg.upstream_timeout_s,
                             "max_retries": cfg.upstream_retries, "backoff_s": cfg.upstream_backoff_s,
                             "max_concurrency": 64},
        )  # fmt: skip
    kind = router.policy.doc.get("kind", "allocate")
    if kind not in POLICY_KINDS:
        raise ConfigError(f"{cfg.export}: policy kind {kind!r} cannot be served (known: {', '.join(POLICY_KINDS)})")
    serve_fn = POLICY_KINDS[kind]
    run_dir = Path(cfg.run) if cfg.run else Path(cfg.export).resolve().parent
    budgets = Budgets(router, run_dir, cfg.budget_split)
    metrics = Metrics()
    pool = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="ttc-request")
    slots = asyncio.Semaphore(cfg.max_concurrency)
    state = {"pending": 0}  # admitted requests: running + waiting (event-loop thread only)
    backend_lock = threading.Lock()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.shutdown(wait=True)  # uvicorn has already let the in-flight requests finish

    app = FastAPI(title="ttc-alloc serve", lifespan=lifespan)

    def fail(status: int, kind: str, message: str, param: str | None = None, headers=None) -> Any:
        metrics.requests.labels(str(status)).inc()
        metrics.errors.labels(kind).inc()
        return JSONResponse(error_body(message, kind, param), status_code=status, headers=headers)

    def authorized(request: Request) -> bool:
        if not cfg.api_key:
            return True
        got = request.headers.get("authorization", "")
        return hmac.compare_digest(got.encode(), f"Bearer {cfg.api_key}".encode())

    def work(req: ChatRequest) -> dict[str, Any]:
        t0 = time.perf_counter()
        lt, ls, solved = req.lambda_tokens, req.lambda_seconds, None
        if req.target is not None:
            cost, value = req.target
            sol = budgets.solve(cost, value, ls if cost == "tokens" else lt)
            lt, ls, solved = sol.lambda_tokens, sol.lambda_seconds, sol
        with backend_lock:  # connect (or reconnect after an outage) once, not per thread
            _ = router.backend
        out = serve_fn(router, req.question, lt, ls)
        out["seconds"] = time.perf_counter() - t0
        out["lambda_tokens"], out["lambda_seconds"], out["budget"] = lt, ls, solved
        return out

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            raise RequestError("body", f"{declared} bytes, the limit is {cfg.max_body_bytes}")
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > cfg.max_body_bytes:
                raise RequestError("body", f"more than {cfg.max_body_bytes} bytes")
        return bytes(buf)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        t_arrive = time.perf_counter()
        if not authorized(request):
            return fail(401, "unauthorized", "missing or wrong API key (Authorization: Bearer ...)")
        try:
            raw = await read_body(request)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError("body", f"not JSON ({exc})") from exc
            req = parse_chat_request(body, cfg)
        except RequestError as exc:
            return fail(exc.status, "invalid_request_error", str(exc), exc.param)
        if state["pending"] >= cfg.max_concurrency + cfg.max_queue:
            return fail(429, "queue_full", f"{state['pending']} requests in flight or queued; retry later",
                        headers={"Retry-After": "1"})  # fmt: skip
        state["pending"] += 1
        metrics.queued.inc()
        try:
            try:
                await asyncio.wait_for(slots.acquire(), timeout=cfg.queue_timeout_s)
            except asyncio.TimeoutError:
                metrics.queued.dec()
                return fail(503, "queue_timeout", f"no slot within {cfg.queue_timeout_s:g} s; retry later",
                            headers={"Retry-After": "5"})  # fmt: skip
            metrics.queued.dec()
            metrics.in_flight.inc()
            try:
                out = await asyncio.get_running_loop().run_in_executor(pool, work, req)
            except RequestError as exc:
                return fail(exc.status, "invalid_request_error", str(exc), exc.param)
            except BackendError as exc:
                return fail(502, "upstream_error", f"upstream inference server failed: {exc}")
            except Exception as exc:  # the server stays up; the client gets a JSON error
                return fail(500, "internal_error", f"{type(exc).__name__}: {exc}")
            finally:
                metrics.in_flight.dec()
                slots.release()
        finally:
            state["pending"] -= 1
        run = router.serving["actions"][out["action"]]
        metrics.requests.labels("200").inc()
        metrics.actions.labels(out["action"]).inc()
        metrics.tokens.inc(out["generated_tokens"])
        metrics.strategy_seconds.labels(run["strategy"]).observe(out["seconds"])
        metrics.latency.observe(time.perf_counter() - t_arrive)
        b = out["budget"]
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": cfg.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": out["text"]},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": out["prompt_tokens"], "completion_tokens": out["generated_tokens"],
                      "total_tokens": out["prompt_tokens"] + out["generated_tokens"]},
            "ttc": {
                "action": out["action"], "strategy": run["strategy"], "n": run["n"],
                "selector": run.get("selector") if run["strategy"] in (POOL, RACE) else "best_score",
                "rounds": len(out["rounds"]), "tokens": out["tokens"], "generated_tokens": out["generated_tokens"],
                "seconds": round(out["seconds"], 4), "answer": out["answer"],
                **{k: out[k] for k in ("samples_launched", "samples_finished", "samples_cancelled") if k in out},
                "lambda_tokens": out["lambda_tokens"], "lambda_seconds": out["lambda_seconds"],
                "budget": None if b is None else {"cost": b.cost, "target": b.target, "solved_mean": b.achieved,
                                                  "binding": b.binding},
                "policy": kind,
            },
        }  # fmt: skip

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if not authorized(request):
            return fail(401, "unauthorized", "missing or wrong API key (Authorization: Bearer ...)")
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": 0,
                                            "owned_by": "ttc-alloc"}]}  # fmt: skip

    @app.get("/health")
    async def health() -> Any:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                up = (await client.get(f"{cfg.upstream.rstrip('/')}/models")).status_code == 200
        except httpx.HTTPError:
            up = False
        return {"status": "ok", "upstream": "ok" if up else "down", "pending": state["pending"],
                "max_concurrency": cfg.max_concurrency, "max_queue": cfg.max_queue}  # fmt: skip

    @app.get("/metrics")
    async def prometheus() -> Any:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics, app.state.router = metrics, router
    return app


def make_parser() -> argparse.ArgumentParser:
    from policies.budget import BUDGET_SPLITS
    from rollouts.console import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    d = ServeConfig(export="")
    p.add_argument("--export", required=True, help="an export folder (policy.json + policy.onnx with a serving spec)")
    p.add_argument("--upstream", default=d.upstream, help="the vLLM OpenAI server's /v1 URL")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface; set --api-key)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on")
    p.add_argument("--model-name", default=d.model_name, help="the id /v1/models lists and replies carry")
    p.add_argument("--lambda-tokens", type=float, default=d.lambda_tokens, help="price of a token when a request names none")
    p.add_argument("--lambda-seconds", type=float, default=d.lambda_seconds, help="price of a second when a request names none")
    p.add_argument("--max-concurrency", type=int, default=d.max_concurrency, help="requests running at once")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="requests waiting beyond those (then 429)")
    p.add_argument("--queue-timeout-s", type=float, default=d.queue_timeout_s, help="longest wait for a slot (then 503)")
    p.add_argument("--upstream-timeout-s", type=float, default=d.upstream_timeout_s, help="read timeout per upstream call")
    p.add_argument("--upstream-retries", type=int, default=d.upstream_retries, help="retries per upstream call")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help="largest request body accepted (larger: 400)")
    p.add_argument("--max-question-chars", type=int, default=d.max_question_chars,
                   help="longest question accepted, in characters (longer: 400)")
    p.add_argument("--api-key", default=os.environ.get("TTC_SERVE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* (default: $TTC_SERVE_API_KEY; none: open)")
    p.add_argument("--run", help="run folder for budget targets (splits.json, config.yml; default: the export's parent)")
    p.add_argument("--budget-split", default=d.budget_split, choices=BUDGET_SPLITS,
                   help="queries budget targets are solved on (default: train+val)")
    p.add_argument("--graceful-timeout-s", type=float, default=d.graceful_timeout_s,
                   help="on SIGTERM, how long in-flight requests may take to finish")
    return p


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    from env.outcomes import validate_lambda

    for name in ("max_concurrency", "max_queue", "max_body_bytes", "max_question_chars"):
        if getattr(args, name) < (1 if name != "max_queue" else 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("queue_timeout_s", "upstream_timeout_s", "graceful_timeout_s"):
        if not getattr(args, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.upstream_retries < 0:
        raise ConfigError(f"--upstream-retries must be >= 0, got {args.upstream_retries}")
    return ServeConfig(
        export=args.export, upstream=args.upstream, model_name=args.model_name,
        lambda_tokens=validate_lambda("--lambda-tokens", args.lambda_tokens),
        lambda_seconds=validate_lambda("--lambda-seconds", args.lambda_seconds),
        max_concurrency=args.max_concurrency, max_queue=args.max_queue, queue_timeout_s=args.queue_timeout_s,
        upstream_timeout_s=args.upstream_timeout_s, upstream_retries=args.upstream_retries,
        max_body_bytes=args.max_body_bytes, max_question_chars=args.max_question_chars, api_key=args.api_key or None,
        run=args.run, graceful_timeout_s=args.graceful_timeout_s, budget_split=args.budget_split,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    from rollouts.console import plain_warnings

    plain_warnings()
    args = make_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        app = create_app(cfg)
    # ValueError besides TTCError (itself one): plain ones below the router are bad input too (rollouts/errors.py)
    except LIBRARY_INPUT_ERRORS as exc:
        return report(exc)
    import signal

    import uvicorn

    # uvicorn handles SIGTERM/SIGINT: stop accepting, finish in-flight requests, run the lifespan end,
    # then re-raise the signal to the previous handler: this one makes that a clean exit (status 0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=cfg.graceful_timeout_s))  # fmt: skip
    threading.Thread(target=_announce_ready, args=(server, args.host, args.port, cfg), daemon=True).start()
    server.run()
    return 0


def _announce_ready(server: Any, host: str, port: int, cfg: ServeConfig) -> None:
    """One line on stdout once the server listens (uvicorn itself logs at warning level only)."""
    while not server.started and not server.should_exit:
        time.sleep(0.05)
    if server.started:
        print(f"serve.py: ready on http://{host}:{port}/v1 (policy {cfg.export}, upstream {cfg.upstream})", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
