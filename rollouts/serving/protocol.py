"""The OpenAI chat-completions request as ``serve.py`` reads it: what is accepted, what is refused (400
naming the field), and the error body every refusal carries."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from rollouts.errors import TTCError

#: accepted and ignored: the strategy samples as the collection did (its own temperature, top_p, max_tokens)
IGNORED_KEYS = {
    "model", "messages", "ttc", "temperature", "top_p", "max_tokens", "max_completion_tokens", "n",
    "stream", "user", "stop", "seed", "presence_penalty", "frequency_penalty", "metadata", "store",
    "stream_options", "service_tier", "logprobs", "top_logprobs", "response_format", "logit_bias",
    "parallel_tool_calls", "modalities", "reasoning_effort",
}  # fmt: skip
#: OpenAI parameters the router cannot honour (a 400 names them rather than ignoring them silently)
UNSUPPORTED = {
    "tools": "tool calling is not supported (the answer is the strategy's selected completion)",
    "tool_choice": "tool calling is not supported",
    "functions": "function calling is not supported",
    "function_call": "function calling is not supported",
    "audio": "audio output is not supported",
    "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported",
}
TTC_KEYS = ("lambda_tokens", "lambda_seconds", "target_tokens", "target_seconds")
ROLES = ("system", "developer", "user", "assistant", "tool")


class RequestError(TTCError):
    """A refused request: HTTP ``status`` (400 by default) naming ``param``, with an OpenAI error ``kind``."""

    def __init__(self, param: str | None, message: str, status: int = 400,
                 kind: str = "invalid_request_error", code: str | None = None) -> None:  # fmt: skip
        super().__init__(f"{param}: {message}" if param else message)
        self.param, self.status, self.kind, self.code = param, status, kind, code


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
    request_timeout_s: float = 600.0
    upstream_timeout_s: float = 300.0
    upstream_retries: int = 1
    upstream_backoff_s: float = 0.5
    max_body_bytes: int = 65536
    max_question_chars: int = 4000
    api_key: str | None = None
    upstream_api_key: str | None = None
    docs: bool = False  # /docs, /redoc and /openapi.json
    run: str | None = None  # run folder (splits.json, config.yml) for budget targets; default: export's parent
    budget_split: str = "train+val"  # policies/budget.py BUDGET_SPLITS
    graceful_timeout_s: float = 60.0
    batch_wait_s: float = 0.005  # how long the featurizer waits for more requests to batch with
    max_batch: int = 32


@dataclass
class ChatRequest:
    question: str
    lambda_tokens: float
    lambda_seconds: float
    target: tuple[str, float] | None = None  # ("tokens" | "seconds", value)
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def load_body(raw: bytes) -> Any:
    """The JSON body; :class:`RequestError` for anything that is not (bad UTF-8, bad syntax, nesting
    deeper than the decoder's recursion limit)."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError("body", f"not JSON ({exc})") from exc
    except RecursionError as exc:
        raise RequestError("body", "JSON nested too deeply") from exc


def _price(name: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise RequestError(f"ttc.{name}", f"must be a finite number >= 0, got {v!r}")
    return float(v)


def _check_options(body: dict[str, Any]) -> None:
    """400 for the OpenAI options the router cannot honour and for keys that are not OpenAI's."""
    for key, why in UNSUPPORTED.items():
        if body.get(key) not in (None, [], {}) and not (key == "tool_choice" and body[key] == "none"):
            raise RequestError(key, why)
    rf = body.get("response_format")
    if rf is not None and (not isinstance(rf, dict) or rf.get("type") != "text"):
        raise RequestError("response_format", "only {\"type\": \"text\"} is supported (no JSON mode or schema)")
    if body.get("logprobs") or body.get("top_logprobs"):
        param = "logprobs" if body.get("logprobs") else "top_logprobs"
        raise RequestError(param, "log-probabilities of the selected answer are not returned")
    if body.get("logit_bias"):
        raise RequestError("logit_bias", "not supported (the strategy samples as the collection did)")
    mods = body.get("modalities")
    if mods is not None and mods != ["text"]:
        raise RequestError("modalities", "only [\"text\"] is supported")
    if body.get("stream"):
        raise RequestError("stream", "streaming is not supported (the answer is selected after the strategy ends)")
    if body.get("n", 1) not in (1, None):
        raise RequestError("n", f"only n = 1 is supported (the strategy returns one selected answer), got {body['n']!r}")
    unknown = sorted(set(body) - IGNORED_KEYS - set(UNSUPPORTED))
    if unknown:
        raise RequestError(unknown[0], "unrecognized request argument")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise RequestError("model", "must be a string")


def _question(msgs: Any, max_chars: int) -> str:
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
            c = "".join(str(p) for p in parts)
        if m["role"] == "user":
            if not isinstance(c, str) or not c.strip():
                raise RequestError(f"messages[{i}].content", "a user message needs non-empty text")
            if len(c) > max_chars:
                raise RequestError(f"messages[{i}].content", f"{len(c)} characters, the limit is {max_chars}")
            question = c
    if question is None:
        raise RequestError("messages", "no user message (the last user message is the question)")
    return question


def _prices(ttc: Any, cfg: ServeConfig) -> tuple[float, float, tuple[str, float] | None]:
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
    if len(targets) > 1:
        raise RequestError("ttc.target_seconds", "give one budget target per request, not both")
    if not targets:
        return lt, ls, None
    k = targets[0]
    v = ttc[k]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise RequestError(f"ttc.{k}", f"must be a finite number > 0, got {v!r}")
    if ("lambda_tokens" if k == "target_tokens" else "lambda_seconds") in ttc:
        raise RequestError(f"ttc.{k}", "a target sets its own λ; do not also give that λ")
    return lt, ls, (k.removeprefix("target_"), float(v))


def parse_chat_request(body: Any, cfg: ServeConfig) -> ChatRequest:
    """Validate a chat-completions body; :class:`RequestError` names the first bad field."""
    if not isinstance(body, dict):
        raise RequestError("body", "must be a JSON object")
    _check_options(body)
    question = _question(body.get("messages"), cfg.max_question_chars)
    lt, ls, target = _prices(body.get("ttc"), cfg)
    return ChatRequest(question, lt, ls, target, model=body.get("model"))
