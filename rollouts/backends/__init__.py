"""Inference backends behind one small interface (see ``base.py``)."""

from rollouts.backends.base import Backend, BackendError, Completion, SamplingSpec

__all__ = ["Backend", "BackendError", "Completion", "SamplingSpec", "make_backend"]


def make_backend(kind: str, model: str, **options) -> Backend:
    """Build a backend by name: ``vllm`` (offline engine) or ``openai`` (HTTP server)."""
    if kind == "vllm":
        from rollouts.backends.vllm_offline import VLLMBackend

        return VLLMBackend(model, **options)
    if kind == "openai":
        from rollouts.backends.openai_http import OpenAIBackend

        return OpenAIBackend(model, **options)
    raise BackendError(f"unknown backend {kind!r} (known: vllm, openai)")
