"""Upstream calls that a served request can abandon, and what the upstream says about itself.

Each served request gets a :class:`CancelScope` and a :class:`ScopedBackend`. The strategy code runs
in a worker thread and calls the backend as usual; every HTTP call to the upstream runs as a task on
the server's event loop (one shared ``httpx.AsyncClient``), and the worker thread waits for it. When
the client disconnects or the request passes its deadline, ``CancelScope.cancel()`` cancels those
tasks: httpx closes their connections, vLLM sees the disconnect and aborts the generation (its
``/v1/completions`` handler watches for it), the waiting thread gets :class:`Cancelled` and the
strategy unwinds, so the request's slot is freed within a moment. Payloads and parsing are
:class:`~rollouts.backends.openai_http.OpenAIBackend`'s, so token counts are the same.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx

from rollouts.backends.base import Backend, BackendError, Completion, SamplingSpec
from rollouts.backends.openai_http import OpenAIBackend


class Cancelled(Exception):
    """The request was abandoned (client gone or deadline passed); its upstream calls were closed."""


class CancelScope:
    """The upstream calls of one request: :meth:`run` waits for one (from a worker thread),
    :meth:`cancel` closes every one in flight and refuses new ones."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.cancelled = False
        self._lock = threading.Lock()
        self._futures: set[concurrent.futures.Future[Any]] = set()

    def run(self, coro: Any) -> Any:
        with self._lock:
            if self.cancelled:
                coro.close()
                raise Cancelled("request cancelled")
            fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
            self._futures.add(fut)
        try:
            return fut.result()
        except concurrent.futures.CancelledError as exc:
            raise Cancelled("request cancelled") from exc
        finally:
            with self._lock:
                self._futures.discard(fut)

    def cancel(self) -> int:
        """Cancel the calls in flight (their tasks close their connections); how many there were."""
        with self._lock:
            self.cancelled = True
            futs = list(self._futures)
        return sum(f.cancel() for f in futs)


@dataclass
class Upstream:
    """The upstream server: its URL, key, served model and context length (from ``GET /v1/models``)."""

    base_url: str
    api_key: str | None = None
    timeout_s: float = 300.0
    connect_timeout_s: float = 5.0
    max_retries: int = 1
    backoff_s: float = 0.5
    served_model_name: str | None = None
    max_model_len: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def learn(self, models: dict[str, Any]) -> None:
        data = models.get("data") or []
        if not data:
            raise BackendError("the upstream inference server serves no model")
        self.served_model_name = str(data[0]["id"])
        mml = data[0].get("max_model_len")
        self.max_model_len = int(mml) if isinstance(mml, int) and mml > 0 else None


def max_model_len(base_url: str, api_key: str | None = None, timeout_s: float = 5.0) -> int | None:
    """The context length an OpenAI-compatible server reports for its first model (vLLM lists
    ``max_model_len`` in ``/v1/models``); None when it does not say or cannot be reached."""
    up = Upstream(base_url.rstrip("/"), api_key)
    try:
        r = httpx.get(f"{up.base_url}/models", headers=up.headers, timeout=timeout_s)
        r.raise_for_status()
        up.learn(r.json())
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    return up.max_model_len


class ScopedBackend(Backend):
    """One request's view of the upstream: ``OpenAIBackend``'s requests, sent through a cancel scope."""

    def __init__(self, up: Upstream, client: httpx.AsyncClient, scope: CancelScope, tokenizer: Any) -> None:
        super().__init__(model=up.served_model_name or "", info={"backend": "openai"})
        self.up, self.client, self.scope, self._tok = up, client, scope, tokenizer
        self.base_url, self.served_model_name, self.per_request_seeds = up.base_url, up.served_model_name, False

    @property
    def tokenizer(self) -> Any:
        return self._tok

    def _one(self, prompt: list[int], spec: SamplingSpec) -> list[Completion]:
        """The HTTP backend's payload and parsing (engine token ids), with this view's :meth:`_request`."""
        return OpenAIBackend._one(self, prompt, spec)  # type: ignore[arg-type]

    def _payload(self, prompt: list[int], spec: SamplingSpec) -> dict[str, Any]:
        """The HTTP backend's request body, where it has one of its own (``_one`` then calls it)."""
        return getattr(OpenAIBackend, "_payload")(self, prompt, spec)  # type: ignore[no-any-return]  # noqa: B009

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        return self.scope.run(self._arequest(method, path, payload))  # type: ignore[no-any-return]

    async def _arequest(self, method: str, path: str, payload: dict[str, Any] | None) -> dict[str, Any]:
        """One call with bounded retries (connection errors, 429, 5xx); messages name no URL."""
        up, last = self.up, "no attempt"
        for attempt in range(up.max_retries + 1):
            try:
                resp = await self.client.request(method, f"{up.base_url}{path}", json=payload, headers=up.headers)
            except httpx.HTTPError as exc:  # connection refused, timeout, reset
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code < 500 and resp.status_code != 429:
                    if resp.status_code >= 400:
                        raise BackendError(f"the upstream rejected the request: HTTP {resp.status_code}: "
                                           f"{resp.text[:300]}")  # fmt: skip
                    return resp.json()  # type: ignore[no-any-return]
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
            if attempt < up.max_retries:
                await asyncio.sleep(up.backoff_s * 2**attempt)
        raise BackendError(f"the upstream is unreachable or failing after {up.max_retries + 1} attempts: {last}")

    def generate(self, prompts: list[list[int]], specs: list[SamplingSpec]) -> list[list[Completion]]:
        if len(prompts) != len(specs):
            raise ValueError("one spec per prompt")
        if len(prompts) <= 1:
            return [self._one(p, s) for p, s in zip(prompts, specs)]
        with ThreadPoolExecutor(max_workers=len(prompts)) as ex:
            return list(ex.map(self._one, prompts, specs))
