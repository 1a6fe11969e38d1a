"""What the upstream server says about itself: its served model and context length (``GET /v1/models``).

The calls that generate go through :class:`~rollouts.backends.openai_http.OpenAIBackend` (serve.py: one
:meth:`~rollouts.backends.openai_http.OpenAIBackend.scoped` view per request, cancelled with its
:class:`~rollouts.backends.cancel.CancelScope` when the client leaves or the deadline passes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from rollouts.backends.base import BackendError
from rollouts.backends.openai_http import served_model


@dataclass
class Upstream:
    """The upstream server: its URL, key, served model and context length (from ``GET /v1/models``)."""

    base_url: str
    api_key: str | None = None
    connect_timeout_s: float = 5.0
    served_model_name: str | None = None
    max_model_len: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def learn(self, models: dict[str, Any]) -> None:
        """Take the served model and its context length from a ``GET /v1/models`` reply (the
        ``openai`` backend's own reading of it)."""
        self.served_model_name, self.max_model_len = served_model(models, None, self.base_url)


def max_model_len(base_url: str, api_key: str | None = None, timeout_s: float = 5.0) -> int | None:
    """The context length an OpenAI-compatible server reports for its first model (vLLM lists
    ``max_model_len`` in ``/v1/models``); None when it does not say or cannot be reached."""
    up = Upstream(base_url.rstrip("/"), api_key)
    try:
        r = httpx.get(f"{up.base_url}/models", headers=up.headers, timeout=timeout_s)
        r.raise_for_status()
        up.learn(r.json())
    except (httpx.HTTPError, BackendError, ValueError, KeyError, TypeError):
        return None
    return up.max_model_len
