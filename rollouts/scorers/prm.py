"""A Qwen2.5-Math-PRM-style process reward model, served by vLLM's pooling runner.

The PRM reads the question and the solution with a step tag (``<extra_0>`` for Qwen2.5-Math-PRM)
after every step, and emits two logits (negative, positive) at each step tag; vLLM's ``STEP`` pooling
returns exactly those rows (``llm.encode(..., pooling_task="token_classify")`` -> ``[steps, 2]``).

Score of a step = softmax over its two logits, index 1 (the positive class). The trajectory's score
is an aggregation of its step scores; the default ``"last"`` takes the step score at the LAST step
tag (the PRM's judgement of the newest step given all before it, as search-and-learn does for beam
search). ``"min"``, ``"prod"`` and ``"mean"`` are available too. All step scores are returned in
``PRMScoreBatch.step_scores``.

Cost: ``scorer_tokens`` is the number of input tokens the PRM processed for each trajectory (the full
formatted conversation; vLLM does not reuse prefix-cache hits for token-wise pooling), ``seconds`` the
wall time of the encode call.

Per-model formatting lives in ``format_messages`` / ``format_prompt`` / ``encode_prompt`` (HF
search-and-learn style): subclass and override them for a PRM with a different input layout.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

from rollouts.scorers.base import ScoreBatch, StepScorer, Trajectory

QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
AGGREGATIONS = ("last", "min", "prod", "mean")


def _cpu_only() -> bool:
    try:
        import torch

        return not torch.cuda.is_available()
    except Exception:
        return True


@dataclass
class PRMScoreBatch(ScoreBatch):
    """A ``ScoreBatch`` plus every step's positive-class probability, per trajectory."""

    step_scores: list[list[float]] = field(default_factory=list)


def aggregate(step_scores: list[float], how: str) -> float:
    """Reduce a trajectory's step scores to one score in [0, 1]."""
    if not step_scores:
        raise ValueError("no step scores to aggregate")
    if how == "last":
        return step_scores[-1]
    if how == "min":
        return min(step_scores)
    if how == "prod":
        return math.prod(step_scores)
    if how == "mean":
        return sum(step_scores) / len(step_scores)
    raise ValueError(f"unknown aggregation {how!r} (known: {', '.join(AGGREGATIONS)})")


class PRMScorer(StepScorer):
    """Qwen2.5-Math-PRM-style process reward model on ``vllm.LLM(runner="pooling")``.

    The tokenizer is checked for the step tag before the engine starts, so a wrong model fails fast.
    vLLM starts workers with ``spawn``: scripts that build this need an ``if __name__ == "__main__":``
    guard.
    """

    name = "prm"

    def __init__(
        self,
        model: str,
        step_tag: str = "<extra_0>",
        system: str | None = QWEN_PRM_SYSTEM,
        aggregation: str = "last",
        max_model_len: int = 2048,
        gpu_memory_utilization: float | None = None,
        dtype: str | None = None,
        enforce_eager: bool | None = None,
        kv_cache_gb: float = 1.0,
        trust_remote_code: bool = False,
        **llm_kwargs: Any,
    ):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {aggregation!r} (known: {', '.join(AGGREGATIONS)})")
        from transformers import AutoTokenizer

        self.model = model
        self.step_tag = step_tag
        self.system = system
        self.aggregation = aggregation
        self.max_model_len = max_model_len
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)
        except Exception as exc:
            raise RuntimeError(f"PRM {model!r}: could not load its tokenizer: {type(exc).__name__}: {exc}") from exc
        self.step_tag_id = self._step_tag_id()

        cpu = _cpu_only()
        if cpu:
            # As in VLLMBackend: no reserved core on a 2-core box; a small KV cache (the PRM only prefills).
            os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(max(1, kv_cache_gb))))
        from vllm import LLM

        kwargs: dict[str, Any] = {
            "model": model,
            "runner": "pooling",
            "dtype": dtype or ("float32" if cpu else "auto"),
            "enforce_eager": cpu if enforce_eager is None else enforce_eager,
            "max_model_len": max_model_len,
            "trust_remote_code": trust_remote_code,
            **llm_kwargs,
        }
        # On CPU the default fraction (0.9 of a NUMA node) makes the engine refuse to start.
        util = gpu_memory_utilization if gpu_memory_utilization is not None else (0.3 if cpu else None)
        if util is not None:
            kwargs["gpu_memory_utilization"] = util
        self.engine_kwargs = kwargs
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:  # vLLM raises many types; one clear message names the model
            raise RuntimeError(f"vLLM could not start PRM {model!r}: {type(exc).__name__}: {exc}") from exc

    # ---- per-model formatting (override for other PRMs) ----

    def _step_tag_id(self) -> int:
        """The step tag's token id; it must be a single token of the tokenizer's vocabulary."""
        tid = self.tokenizer.get_vocab().get(self.step_tag)
        ids = self.tokenizer.encode(self.step_tag, add_special_tokens=False)
        if tid is None or ids != [tid]:
            raise ValueError(
                f"PRM {self.model!r}: its tokenizer has no single token for the step tag {self.step_tag!r} "
                f"(encodes to {ids}); vLLM's step pooling would find no steps. Add the token to the "
                f"tokenizer or pass the model's own step_tag."
            )
        return int(tid)

    def clean_step(self, step: str) -> str:
        """One step as the PRM sees it: trailing whitespace stripped, stray step tags removed."""
        return step.replace(self.step_tag, "").rstrip()

    def format_messages(self, question: str, steps: list[str]) -> list[dict[str, str]]:
        """Qwen2.5-Math-PRM layout: system, user = question, assistant = steps each followed by the tag."""
        answer = self.step_tag.join(self.clean_step(s) for s in steps) + self.step_tag
        msgs = [{"role": "system", "content": self.system}] if self.system is not None else []
        return msgs + [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]

    def format_prompt(self, question: str, steps: list[str]) -> str:
        """The conversation text the PRM reads (chat template, no generation prompt)."""
        text = self.tokenizer.apply_chat_template(
            self.format_messages(question, steps), tokenize=False, add_generation_prompt=False
        )
        if not isinstance(text, str):  # the declared type covers tokenize=True too
            raise TypeError(f"PRM {self.model!r}: the chat template gave {type(text).__name__}, not text")
        return text

    def encode_prompt(self, question: str, steps: list[str]) -> list[int]:
        """Token ids sent to the engine; their count is the scorer's cost for this trajectory."""
        return list(self.tokenizer.encode(self.format_prompt(question, steps), add_special_tokens=False))

    # ---- scoring ----

    def score(self, question: str, trajectories: list[Trajectory]) -> PRMScoreBatch:
        """Score each trajectory by aggregating its step scores (default: the last step's)."""
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        if not trajectories:
            return PRMScoreBatch(scores=[], scorer_tokens=[], seconds=0.0, step_scores=[])
        prompts: list[list[int]] = []
        for i, t in enumerate(trajectories):
            if not t.steps:
                raise ValueError(f"PRM {self.model!r}: trajectory {i} has no steps to score")
            ids = self.encode_prompt(question, t.steps)
            n_tags = ids.count(self.step_tag_id)
            if n_tags != len(t.steps):
                raise RuntimeError(
                    f"PRM {self.model!r}: trajectory {i} has {len(t.steps)} steps but its formatted prompt "
                    f"holds {n_tags} step tags {self.step_tag!r}"
                )
            if len(ids) > self.max_model_len:
                raise ValueError(
                    f"PRM {self.model!r}: trajectory {i} formats to {len(ids)} tokens, more than "
                    f"max_model_len={self.max_model_len}"
                )
            prompts.append(ids)
        # Raw logits (use_activation=False) so the softmax below is ours, whatever the head config says.
        params = PoolingParams(step_tag_id=self.step_tag_id, use_activation=False)
        t0 = time.perf_counter()
        outs = self.llm.encode(
            [TokensPrompt(prompt_token_ids=p) for p in prompts], params,
            pooling_task="token_classify", use_tqdm=False,
        )
        seconds = time.perf_counter() - t0
        step_scores: list[list[float]] = []
        for i, (out, t) in enumerate(zip(outs, trajectories, strict=True)):
            logits = out.outputs.data
            if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[-1] != 2:
                raise RuntimeError(
                    f"PRM {self.model!r}: trajectory {i} gave step output of shape {tuple(logits.shape)}, "
                    f"expected [{len(t.steps)}, 2]; does the model emit 2 labels at step tag "
                    f"{self.step_tag!r} (id {self.step_tag_id})?"
                )
            if logits.shape[0] != len(t.steps):
                raise RuntimeError(
                    f"PRM {self.model!r}: trajectory {i} has {len(t.steps)} steps but the engine "
                    f"returned {logits.shape[0]} step rows"
                )
            probs = logits.float().softmax(dim=-1)[:, 1]
            step_scores.append([float(p) for p in probs])
        return PRMScoreBatch(
            scores=[aggregate(s, self.aggregation) for s in step_scores],
            scorer_tokens=[len(p) for p in prompts],
            seconds=seconds,
            step_scores=step_scores,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.name,
            "model": self.model,
            "step_tag": self.step_tag,
            "step_tag_id": self.step_tag_id,
            "aggregation": self.aggregation,
            "step_score": "softmax(logits)[1] at each step tag",
            "system": self.system,
            "max_model_len": self.max_model_len,
        }
