"""Best-of-N: sample a pool of N completions per query in one engine request, then select.

Collection runs it with N = N_max and stores the whole pool; budgets N < N_max are derived from it
later (``env/outcomes.py``) with the same selectors. Live routing calls ``best_of_n`` with the
chosen N and selector: the same sampling and scoring code, then ``select``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from rollouts.backends.base import Backend, SamplingSpec
from rollouts.grading import Grade
from rollouts.latency import Round
from rollouts.scorers import StepScorer, Trajectory
from rollouts.strategies.base import PromptedQuery, StrategyResult
from rollouts.strategies.selectors import SCORE_SELECTORS, select


def pool_config_id(n: int) -> str:
    return f"pool:n={n}"


def run_pool(
    backend: Backend,
    queries: Sequence[PromptedQuery],
    n: int,
    spec: SamplingSpec,
    scorer: StepScorer,
    grade_fn: Callable[[str | None, str], Grade],
    seed: int,
) -> list[StrategyResult]:
    """Sample ``n`` completions for every query in one batched call; grade and score every sample."""
    specs = [replace(spec, n=n, seed=_request_seed(seed, q.query_id, "pool")) for q in queries]
    outs = backend.generate([q.prompt_ids for q in queries], specs)
    results = []
    for q, comps in zip(queries, outs):
        trajs = [Trajectory([c.text], list(c.token_ids), c.logprobs) for c in comps]
        sb = scorer.score(q.question, trajs)
        samples = []
        for c, s, st in zip(comps, sb.scores, sb.scorer_tokens):
            g = grade_fn(q.answer, c.text)
            samples.append({
                "text": c.text,
                "answer": g.answer,
                "correct": g.correct if q.answer is not None else None,
                "tokens": c.tokens,
                "finish_reason": c.finish_reason,
                "score": float(s),
                "scorer_tokens": int(st),
                "mean_logprob": (sum(c.logprobs) / len(c.logprobs)) if c.logprobs else None,
            })
        results.append(StrategyResult(
            query_id=q.query_id, config_id=pool_config_id(n), strategy="sample_pool",
            params={"n": n, "temperature": spec.temperature, "top_p": spec.top_p, "max_tokens": spec.max_tokens,
                    "scorer": scorer.name},
            tokens=sum(c.tokens for c in comps), scorer_tokens=sum(sb.scorer_tokens), scorer_seconds=sb.seconds,
            rounds=[Round(len(q.prompt_ids), n, max((c.tokens for c in comps), default=0))],
            samples=samples,
        ))
    return results


def best_of_n(
    backend: Backend,
    queries: Sequence[PromptedQuery],
    n: int,
    selector: str | None,
    spec: SamplingSpec,
    scorer: StepScorer,
    grade_fn: Callable[[str | None, str], Grade],
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Live routing: best-of-``n`` for each query in one batched call; per query the chosen sample,
    the pool, and the tokens charged as the cache charges them (generated tokens, plus the scorer's
    for the score-based selectors). ``selector`` None means ``n`` = 1 (``sample@1``)."""
    out = []
    import numpy as np

    for q, res in zip(queries, run_pool(backend, queries, n, spec, scorer, grade_fn, seed), strict=True):
        assert res.samples is not None
        # ties are broken at random (seeded per query), as the outcome table assumes
        tie_rng = np.random.default_rng(_request_seed(seed, q.query_id, "tie"))
        idx = select(selector or "majority", [s["answer"] for s in res.samples], [s["score"] for s in res.samples],
                     rng=tie_rng)
        charged = res.tokens + (res.scorer_tokens if selector in SCORE_SELECTORS else 0)
        out.append({"choice": res.samples[idx], "pool": res, "tokens": charged})
    return out


def _request_seed(seed: int, query_id: str, salt: str) -> int:
    """A per-request seed: distinct per query (vLLM repeats outputs for equal seeds), stable across runs."""
    import hashlib

    h = hashlib.sha256(f"{seed}|{salt}|{query_id}".encode()).digest()
    return int.from_bytes(h[:4], "little")
