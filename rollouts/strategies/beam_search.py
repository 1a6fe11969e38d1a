"""Step-level beam search guided by a step scorer (HF search-and-learn style), counting every token.

Configuration (N beams, width M, at most K iterations): the first iteration samples N candidate
first steps; each later iteration keeps the N/M best open candidates by score and extends each with
M samples, so every iteration generates N candidates. A step ends at a blank line (``"\n\n"``); a
candidate that ends otherwise (EOS or the token cap) is complete. The K-th iteration runs to the
end. The answer is the best-scoring complete candidate.

Unlike search-and-learn, cost is fully accounted: ``tokens`` sums every generated token of every
candidate in every iteration, pruned ones included, and ``scorer_tokens`` what the scorer processed;
each iteration's counts are stored so the total can be audited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from rollouts.backends.base import Backend, SamplingSpec
from rollouts.latency import Round
from rollouts.scorers import StepScorer, Trajectory
from rollouts.strategies.base import BEAM, GradeFn, PromptedQuery, StrategyResult, StrategySpec, request_seed

STEP_DELIMITER = "\n\n"


@dataclass(frozen=True)
class BeamSpec(StrategySpec):
    """Beam search with N beams, width M, at most K iterations (menu ``n``, ``m``, ``max_iterations``)."""

    n: int  # beams (candidates per iteration)
    m: int  # width: samples per kept beam
    max_iterations: int = 4
    name: ClassVar[str] = BEAM
    item_keys: ClassVar[tuple[str, ...]] = ("n", "m", "max_iterations")

    def __post_init__(self) -> None:
        if self.n < 1 or self.m < 1 or self.max_iterations < 1:
            raise ValueError(f"beam search needs N, M, K >= 1, got N={self.n} M={self.m} K={self.max_iterations}")
        if self.n % self.m:
            raise ValueError(f"beam search needs N divisible by M, got N={self.n} M={self.m}")

    @property
    def config_id(self) -> str:
        return f"beam:N={self.n},M={self.m},K={self.max_iterations}"

    @staticmethod
    def charged_tokens(generated: int, scorer_tokens: int) -> int:
        """What a search costs: every generated token (pruned candidates included) plus the scorer's."""
        return generated + scorer_tokens

    def calibration_runs(self, budgets: Sequence[int]) -> list[StrategySpec]:
        return [self]

    def run(self, backend: Backend, queries: Sequence[PromptedQuery], sampling: SamplingSpec,
            scorer: StepScorer, grade_fn: GradeFn, seed: int) -> list[StrategyResult]:
        return run_beam_search(backend, queries, self, sampling, scorer, grade_fn, seed)

    def answer(self, backend: Backend, queries: Sequence[PromptedQuery], sampling: SamplingSpec,
               scorer: StepScorer, grade_fn: GradeFn, seed: int, selector: str | None = None) -> list[dict[str, Any]]:
        """The best-scoring complete candidate per query (``selector`` does not apply)."""
        out = []
        for o in self.run(backend, queries, sampling, scorer, grade_fn, seed):
            assert o.result is not None
            out.append({"answer": o.result["answer"], "text": o.result["text"], "correct": o.result["correct"],
                        "tokens": int(self.charged_tokens(o.tokens, o.scorer_tokens)),
                        "generated_tokens": int(o.tokens), "rounds": o.rounds,
                        "finish_reason": o.result["finish_reason"]})
        return out


@dataclass
class _State:
    query: PromptedQuery
    active: list[tuple[Trajectory, float]]
    done: list[tuple[Trajectory, float]]
    iterations: list[dict]
    rounds: list[Round]
    tokens: int = 0
    scorer_tokens: int = 0
    scorer_seconds: float = 0.0


def run_beam_search(
    backend: Backend,
    queries: Sequence[PromptedQuery],
    beam: BeamSpec,
    sampling: SamplingSpec,
    scorer: StepScorer,
    grade_fn: GradeFn,
    seed: int,
) -> list[StrategyResult]:
    """Run beam search for all queries at once: each iteration is one batched engine call."""
    states = [_State(q, active=[(Trajectory(), 1.0)], done=[], iterations=[], rounds=[]) for q in queries]
    for k in range(1, beam.max_iterations + 1):
        last = k == beam.max_iterations
        prompts, specs, owners = [], [], []
        for si, st in enumerate(states):
            if not st.active or len(st.done) >= beam.n:
                continue
            per_beam = beam.n if k == 1 else beam.m
            for bi, (traj, _) in enumerate(st.active):
                remaining = sampling.max_tokens - len(traj.token_ids)
                if remaining <= 0:
                    continue
                prompts.append(st.query.prompt_ids + traj.token_ids)
                specs.append(replace(sampling, n=per_beam, max_tokens=remaining,
                                     stop=() if last else (STEP_DELIMITER,),
                                     seed=request_seed(seed, st.query.query_id, f"beam{beam.config_id}:{k}:{bi}")))
                owners.append((si, traj))
        if not prompts:
            break
        outs = backend.generate(prompts, specs)
        by_state: dict[int, list[tuple[Trajectory, bool, int]]] = {}
        for (si, parent), comps in zip(owners, outs):
            for c in comps:
                child = parent.extended(c.text, c.token_ids, c.logprobs)
                complete = last or not c.ended_by_stop_string or len(child.token_ids) >= sampling.max_tokens
                by_state.setdefault(si, []).append((child, complete, c.tokens))
        for si, cands in by_state.items():
            st = states[si]
            sb = scorer.score(st.query.question, [c for c, _, _ in cands])
            gen = sum(t for _, _, t in cands)
            st.tokens += gen
            st.scorer_tokens += sum(sb.scorer_tokens)
            st.scorer_seconds += sb.seconds
            prefix = sum(len(st.query.prompt_ids) + len(p.token_ids) for s2, p in owners if s2 == si)
            n_parents = sum(1 for s2, _ in owners if s2 == si)
            st.rounds.append(Round(prefix // max(n_parents, 1), len(cands), max(t for _, _, t in cands)))
            open_c: list[tuple[Trajectory, float]] = []
            for (child, complete, _), score in zip(cands, sb.scores):
                (st.done if complete else open_c).append((child, float(score)))
            open_c.sort(key=lambda x: -x[1])
            keep = max(beam.n // beam.m, 1)
            st.active = open_c[:keep]
            st.iterations.append({
                "iteration": k, "beams_in": n_parents, "candidates": len(cands), "tokens": gen,
                "scorer_tokens": sum(sb.scorer_tokens), "completed": sum(1 for _, c, _ in cands if c),
                "kept": len(st.active), "pruned": len(open_c) - len(st.active),
                "max_gen_tokens": max(t for _, _, t in cands),
            })
    results = []
    for st in states:
        pool = st.done or st.active
        best, best_score = max(pool, key=lambda x: x[1])
        g = grade_fn(st.query.answer, best.text)
        results.append(StrategyResult(
            query_id=st.query.query_id, config_id=beam.config_id, strategy=BEAM,
            params={"n": beam.n, "m": beam.m, "max_iterations": beam.max_iterations, "temperature": sampling.temperature,
                    "max_tokens": sampling.max_tokens, "scorer": scorer.name, "step_delimiter": STEP_DELIMITER},
            tokens=st.tokens, scorer_tokens=st.scorer_tokens, scorer_seconds=st.scorer_seconds, rounds=st.rounds,
            result={"text": best.text, "answer": g.answer, "correct": g.correct if st.query.answer is not None else None,
                    "score": best_score, "steps": len(best.steps), "complete": bool(st.done),
                    # cut: no candidate completed, or the best one ran into the token budget
                    "finish_reason": "length" if not st.done or len(best.token_ids) >= sampling.max_tokens else "stop"},
            iterations=st.iterations,
        ))
    return results
