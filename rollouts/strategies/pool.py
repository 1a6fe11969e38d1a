"""The pool strategy (menu ``sample_pool``, config id ``pool:n=N``): sample N completions per query in
one engine request, then select (best-of-N).

Collection runs it with N = N_max and stores the whole pool; budgets N < N_max are derived from it
later (``env/pool_outcomes.py``) with the same selectors. Live routing calls :meth:`PoolSpec.answer` with
the chosen N and selector: the same sampling and scoring code, then ``select``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

import numpy as np

from rollouts.backends.base import Backend, Completion, SamplingSpec
from rollouts.latency import Round
from rollouts.scorers import StepScorer, Trajectory
from rollouts.strategies.base import POOL, GradeFn, PromptedQuery, StrategyResult, StrategySpec, request_seed
from rollouts.strategies.selectors import SCORE_SELECTORS, select

Tokens = TypeVar("Tokens", int, float, np.ndarray)


@dataclass(frozen=True)
class PoolSpec(StrategySpec):
    """A pool of ``n`` samples (a budget-``n`` run at routing and calibration)."""

    n: int
    name: ClassVar[str] = POOL
    item_keys: ClassVar[tuple[str, ...]] = ("n",)

    @property
    def config_id(self) -> str:
        return f"pool:n={self.n}"

    @staticmethod
    def charged_tokens(generated: Tokens, scorer_tokens: Tokens, selector: str | None) -> Tokens:
        """What a budget costs: the generated tokens, plus the scorer's for the selectors that read
        scores. Prompt tokens are not charged."""
        return generated + scorer_tokens if selector in SCORE_SELECTORS else generated

    def serving_action(self, selector: str | None) -> dict[str, Any]:
        return {**self.to_item(), "selector": selector}

    def calibration_runs(self, budgets: Sequence[int]) -> list[StrategySpec]:
        return [PoolSpec(b) for b in budgets]

    def run(self, backend: Backend, queries: Sequence[PromptedQuery], sampling: SamplingSpec,
            scorer: StepScorer, grade_fn: GradeFn, seed: int) -> list[StrategyResult]:
        return run_pool(backend, queries, self.n, sampling, scorer, grade_fn, seed)

    def answer(self, backend: Backend, queries: Sequence[PromptedQuery], sampling: SamplingSpec,
               scorer: StepScorer, grade_fn: GradeFn, seed: int, selector: str | None = None) -> list[dict[str, Any]]:
        """Best-of-``n`` for each query in one batched call. ``selector`` None means ``n`` = 1 (``sample@1``)."""
        out = []
        for q, res in zip(queries, self.run(backend, queries, sampling, scorer, grade_fn, seed), strict=True):
            assert res.samples is not None
            # ties are broken at random (seeded per query), as the outcome table assumes
            tie_rng = np.random.default_rng(request_seed(seed, q.query_id, "tie"))
            idx = select(selector or "majority", [s["answer"] for s in res.samples],
                         [s["score"] for s in res.samples], rng=tie_rng)
            choice = res.samples[idx]
            out.append({"answer": choice["answer"], "text": choice["text"], "correct": choice["correct"],
                        "tokens": int(self.charged_tokens(res.tokens, res.scorer_tokens, selector)),
                        "generated_tokens": int(res.tokens), "rounds": res.rounds,
                        "finish_reason": choice["finish_reason"]})
        return out


def pool_sample(q: PromptedQuery, c: Completion, g: Any, score: float, scorer_tokens: int) -> dict[str, Any]:
    """One sample of a pool as the cache stores it: completion ``c`` of query ``q``, its grade ``g``, its
    scorer's score and tokens, and its mean token log-prob (None without log-probs)."""
    return {
        "text": c.text,
        "answer": g.answer,
        "correct": g.correct if q.answer is not None else None,
        "tokens": c.tokens,
        "finish_reason": c.finish_reason,
        "score": float(score),
        "scorer_tokens": int(scorer_tokens),
        "mean_logprob": (sum(c.logprobs) / len(c.logprobs)) if c.logprobs else None,
    }


def run_pool(
    backend: Backend,
    queries: Sequence[PromptedQuery],
    n: int,
    sampling: SamplingSpec,
    scorer: StepScorer,
    grade_fn: GradeFn,
    seed: int,
) -> list[StrategyResult]:
    """Sample ``n`` completions for every query in one batched call; grade and score every sample."""
    specs = [replace(sampling, n=n, seed=request_seed(seed, q.query_id, "pool")) for q in queries]
    outs = backend.generate([q.prompt_ids for q in queries], specs)
    results = []
    for q, comps in zip(queries, outs):
        trajs = [Trajectory([c.text], list(c.token_ids), c.logprobs) for c in comps]
        sb = scorer.score(q.question, trajs)
        samples = [pool_sample(q, c, grade_fn(q.answer, c.text), s, st)
                   for c, s, st in zip(comps, sb.scores, sb.scorer_tokens)]  # fmt: skip
        results.append(StrategyResult(
            query_id=q.query_id, config_id=PoolSpec(n).config_id, strategy=POOL,
            params={"n": n, "temperature": sampling.temperature, "top_p": sampling.top_p,
                    "max_tokens": sampling.max_tokens,
                    "scorer": scorer.name},
            tokens=sum(c.tokens for c in comps), scorer_tokens=sum(sb.scorer_tokens), scorer_seconds=sb.seconds,
            rounds=[Round(len(q.prompt_ids), n, max((c.tokens for c in comps), default=0))],
            samples=samples,
        ))
    return results
