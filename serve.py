"""An OpenAI-compatible routing server: a chat request in, the learned policy picks the strategy and
its budget, the strategy runs against an upstream vLLM server, and one answer goes back with what it cost.

    python -m vllm.entrypoints.openai.api_server --model ~/.cache/ttc-alloc/models/smollm2-135m-instruct \\
        --host 127.0.0.1 --port 8000 --dtype float32 --enforce-eager --max-model-len 1024 \\
        --served-model-name smollm2
    python serve.py --export runs/<name>/export --upstream http://127.0.0.1:8000/v1 --port 8080

Per request (POST /v1/chat/completions, the OpenAI schema, so the official openai client works
unchanged): the last user message is the question. It is checked against the upstream's context
(max_model_len from its /v1/models, less the generation budget: 400 if it does not fit), prompted and
featurized as the collection did (concurrent requests share one featurizer forward), the exported
policy picks an action at the request's prices, and the action runs through the project's strategy
code against the upstream. Prices come from the extra body field "ttc" (lambda_tokens,
lambda_seconds, or a budget target_tokens / target_seconds whose price is solved on the run's
non-test queries), defaulting to --lambda-tokens / --lambda-seconds. The reply is the selected
completion (finish_reason "length" when it was cut at the token budget), usage.completion_tokens =
every token the strategy had the upstream generate, and a "ttc" block (action, strategy, selector,
n, rounds, tokens, seconds, ...; a race adds samples_launched, samples_finished and samples_cancelled).

Also GET /v1/models, GET /health (liveness, with the upstream's state) and GET /metrics (Prometheus
text; behind the key when one is set). At most --max-concurrency requests run at once and
--max-queue more wait (beyond that: 429; no slot within --queue-timeout-s: 503). A client that
disconnects, or a request past --request-timeout-s (504), has its upstream work cancelled and its
slot freed (ttc_cancelled_total). Upstream down or failing after its retries: 502 (details in the
log, not the reply). Malformed requests and options the router cannot honour (tools,
response_format, ...): 400 naming the field; an unknown model: 404. --api-key (or $TTC_SERVE_API_KEY)
requires a bearer key on /v1/* and /metrics; --upstream-api-key (or $TTC_UPSTREAM_API_KEY) is sent
to the upstream. SIGTERM/SIGINT stop accepting and let in-flight requests finish. Bad command-line
input prints one "error:" line and exits 2; when ready, one line gives the address.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

# module level: FastAPI resolves the handlers' (postponed) annotations in this module's globals
from fastapi import FastAPI, Request

from rollouts.errors import LIBRARY_INPUT_ERRORS, ConfigError, report
from rollouts.serving.protocol import RequestError, ServeConfig

log = logging.getLogger("ttc.serve")

# ----------------------------------------------------------------------------------------------
# Policies: how one request becomes one answer


def serve_one_shot(router: Any, chosen: tuple[Any, str], backend: Any) -> dict[str, Any]:
    """One-shot policy (``policies/onnx_policy.py``): the action chosen for the query, run once."""
    prompted, action = chosen
    out = router.run_action([prompted], action, backend=backend)[0]
    return {"action": action, "prompt_tokens": len(prompted.prompt_ids), **out}


#: policy.json ``kind`` -> how a request is served, from the query's (prompted query, action) and the
#: request's cancellable backend. The sequential policy of ttc/Escalate-v0 (``policies/sequential_router.py``,
#: route.py ``--mode sequential``) plugs in here with its own entry.
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

        hit = self._memo.get((cost, target, other))  # solved once per target: later requests take no lock
        if hit is not None:
            return hit
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


def default_router(cfg: ServeConfig) -> Any:
    """A ``route.LiveRouter`` on the export (its engine is never started: serve.py calls the upstream itself)."""
    from importlib import import_module

    from policies.onnx_policy import OnnxPolicy

    # route.py is `route` in a checkout and `ttc_alloc.cli.route` in the wheel (beside this module).
    LiveRouter = import_module(f"{__package__}.route" if __package__ else "route").LiveRouter
    kind = OnnxPolicy(cfg.export).doc.get("kind", "allocate")
    if kind not in POLICY_KINDS:
        what = "sequential (ttc/Escalate-v0)" if kind == "escalate" else repr(kind)
        raise ConfigError(f"{cfg.export}: a {what} export; serve.py serves one-shot (ttc/Allocate-v0) exports "
                          "only; route a sequential one with python route.py --mode sequential")  # fmt: skip
    options = {"base_url": cfg.upstream, "api_key": cfg.upstream_api_key, "timeout_s": cfg.upstream_timeout_s,
               "max_retries": cfg.upstream_retries, "backoff_s": cfg.upstream_backoff_s,
               "max_concurrency": 4 * cfg.max_concurrency}  # fmt: skip
    return LiveRouter(cfg.export, backend_kind="openai", backend_options=options)


def create_app(cfg: ServeConfig, router: Any = None, on_ready: Callable[[], Any] | None = None) -> Any:
    """The FastAPI app; ``router`` defaults to a ``route.LiveRouter`` on the export and the upstream."""
    from contextlib import asynccontextmanager

    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from rollouts.serving.server import RoutingServer

    own = router is None
    router = default_router(cfg) if router is None else router
    run_dir = Path(cfg.run) if cfg.run else Path(cfg.export).resolve().parent
    srv = RoutingServer(cfg, router, POLICY_KINDS, Budgets(router, run_dir, cfg.budget_split))
    if own:
        srv.check("What is 1 + 1?")  # the admission tokenizer is ready before the first request

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ready = asyncio.create_task(on_ready()) if on_ready is not None else None
        yield
        if ready is not None:
            ready.cancel()
        await srv.close()

    docs = {} if cfg.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="ttc-alloc serve", lifespan=lifespan, **docs)  # type: ignore[arg-type]

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> Any:  # a bug: JSON 500, counted, traceback logged
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return srv.fail(500, "internal_error", "internal server error (see the server log)")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await srv.chat(request)

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        if not srv.authorized(request):
            return srv.fail(401, "unauthorized", "missing or wrong API key (Authorization: Bearer ...)")
        return {"object": "list", "data": [{"id": cfg.model_name, "object": "model", "created": 0,
                                            "owned_by": "ttc-alloc"}]}  # fmt: skip

    @app.get("/health")
    async def health() -> Any:
        return await srv.health()

    @app.get("/metrics")
    async def prometheus(request: Request) -> Any:
        if not srv.authorized(request):
            return srv.fail(401, "unauthorized", "missing or wrong API key (Authorization: Bearer ...)")
        return Response(generate_latest(srv.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics, app.state.router, app.state.server = srv.metrics, srv.router, srv
    return app


# ----------------------------------------------------------------------------------------------
# The command line


def make_parser() -> argparse.ArgumentParser:
    from policies.budget import BUDGET_SPLITS
    from rollouts.console import HelpFormatter

    p = argparse.ArgumentParser(prog="serve.py", description=__doc__, formatter_class=HelpFormatter)
    d = ServeConfig(export="")
    p.add_argument("--export", required=True, help="an export folder (policy.json + policy.onnx with a serving spec)")
    p.add_argument("--upstream", default=d.upstream, help="the upstream vLLM OpenAI server's /v1 URL (default: %(default)s)")
    p.add_argument("--upstream-api-key", default=os.environ.get("TTC_UPSTREAM_API_KEY"),
                   help="key sent to the upstream as 'Authorization: Bearer KEY' (a vLLM started with --api-key; "
                        "default: $TTC_UPSTREAM_API_KEY; none: no header)")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: %(default)s; anything beyond loopback wants --api-key)")
    p.add_argument("--port", type=int, default=8080, help="port to listen on (default: %(default)s)")
    p.add_argument("--model-name", default=d.model_name,
                   help="the model id /v1/models lists and replies carry; requests may name it or the upstream's "
                        "(default: %(default)s)")  # fmt: skip
    p.add_argument("--lambda-tokens", type=float, default=d.lambda_tokens,
                   help="default price of a generated token, for requests without ttc prices (default: %(default)s)")
    p.add_argument("--lambda-seconds", type=float, default=d.lambda_seconds,
                   help="default price of a second of latency (default: %(default)s)")
    p.add_argument("--max-concurrency", type=int, default=d.max_concurrency,
                   help="requests running against the upstream at once (default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=d.max_queue,
                   help="requests waiting for a slot beyond those; more get 429 (default: %(default)s)")
    p.add_argument("--queue-timeout-s", type=float, default=d.queue_timeout_s,
                   help="longest wait for a slot, then 503 (default: %(default)s)")
    p.add_argument("--request-timeout-s", type=float, default=d.request_timeout_s,
                   help="deadline of a whole request; past it its upstream work is cancelled and the client gets "
                        "504 (default: %(default)s)")  # fmt: skip
    p.add_argument("--upstream-timeout-s", type=float, default=d.upstream_timeout_s,
                   help="read timeout of one upstream call (default: %(default)s)")
    p.add_argument("--upstream-retries", type=int, default=d.upstream_retries,
                   help="retries of an upstream call that failed to connect or got 429/5xx (default: %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes,
                   help="largest request body; larger ones get 400 (default: %(default)s)")
    p.add_argument("--max-question-chars", type=int, default=d.max_question_chars,
                   help="longest user message in characters; longer ones get 400 (prompts must also fit the "
                        "upstream's max_model_len with the generation budget) (default: %(default)s)")  # fmt: skip
    p.add_argument("--api-key", default=os.environ.get("TTC_SERVE_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on /v1/* and /metrics (default: $TTC_SERVE_API_KEY; "
                        "none: open)")  # fmt: skip
    p.add_argument("--docs", action="store_true", help="serve the API docs (/docs, /redoc, /openapi.json); off by default")
    p.add_argument("--run", help="run folder for budget targets (splits.json, config.yml; default: the export's parent)")
    p.add_argument("--budget-split", default=d.budget_split, choices=BUDGET_SPLITS,
                   help="queries budget targets are solved on (default: %(default)s)")
    p.add_argument("--batch-wait-s", type=float, default=d.batch_wait_s,
                   help="how long the featurizer waits for more requests to share one forward pass "
                        "(default: %(default)s)")  # fmt: skip
    p.add_argument("--graceful-timeout-s", type=float, default=d.graceful_timeout_s,
                   help="on SIGTERM, how long in-flight requests may take to finish (default: %(default)s)")
    return p


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    from env.outcomes import validate_lambda

    for name in ("max_concurrency", "max_queue", "max_body_bytes", "max_question_chars"):
        if getattr(args, name) < (1 if name != "max_queue" else 0):
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("queue_timeout_s", "request_timeout_s", "upstream_timeout_s", "graceful_timeout_s"):
        if not getattr(args, name) > 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.upstream_retries < 0:
        raise ConfigError(f"--upstream-retries must be >= 0, got {args.upstream_retries}")
    if not 0 <= args.batch_wait_s <= 1:
        raise ConfigError(f"--batch-wait-s must be in [0, 1], got {args.batch_wait_s}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in 0..65535, got {args.port}")
    return ServeConfig(
        export=args.export, upstream=args.upstream, model_name=args.model_name,
        lambda_tokens=validate_lambda("--lambda-tokens", args.lambda_tokens),
        lambda_seconds=validate_lambda("--lambda-seconds", args.lambda_seconds),
        max_concurrency=args.max_concurrency, max_queue=args.max_queue, queue_timeout_s=args.queue_timeout_s,
        request_timeout_s=args.request_timeout_s, upstream_timeout_s=args.upstream_timeout_s,
        upstream_retries=args.upstream_retries, max_body_bytes=args.max_body_bytes,
        max_question_chars=args.max_question_chars, api_key=args.api_key or None,
        upstream_api_key=args.upstream_api_key or None, docs=args.docs, run=args.run,
        graceful_timeout_s=args.graceful_timeout_s, budget_split=args.budget_split, batch_wait_s=args.batch_wait_s,
    )  # fmt: skip


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    from rollouts.console import plain_warnings

    plain_warnings()
    args = make_parser().parse_args(argv)
    import uvicorn

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server: Any = None

    async def announce() -> None:  # one line, once uvicorn listens
        while server is None or not server.started:
            await asyncio.sleep(0.05)
        url = f"http://{args.host if ':' not in args.host else f'[{args.host}]'}:{args.port}/v1"
        print(f"serve.py: ready on {url} (policy {cfg.export}, upstream {cfg.upstream}, model {cfg.model_name})",
              flush=True)

    try:
        cfg = config_from_args(args)
        if not cfg.api_key and not is_loopback(args.host):
            print(f"warning: listening on {args.host} without --api-key: anyone who can reach it can use the "
                  "upstream and read /metrics", file=sys.stderr, flush=True)  # fmt: skip
        app = create_app(cfg, on_ready=announce)
    # ValueError besides TTCError (itself one): plain ones below the router are bad input too (rollouts/errors.py)
    except LIBRARY_INPUT_ERRORS as exc:
        return report(exc)
    import signal

    # uvicorn handles SIGTERM/SIGINT: stop accepting, finish in-flight requests, run the lifespan end,
    # then re-raise the signal to the previous handler: this one makes that a clean exit (status 0)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=max(1, round(cfg.graceful_timeout_s))))  # fmt: skip
    server.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
