"""Races (menu and policy.json ``race``): launch N samples in one round, watch them finish, stop early.

The samples of one parallel round finish one by one, shortest first (vLLM decodes a request's samples
in lockstep, so a sample of L tokens finishes at decode step L). A race watches them finish and stops

- ``agree`` (rule ``agree``, the default): as soon as ``k`` finished samples give the same parsed
  answer (unparsed answers never agree), or when all N have finished;
- ``first`` (short-m@k, Hassid et al. 2025): at the ``k``-th finisher;

then cancels the samples still running and answers with a selector (``majority``, ``best_score``,
``weighted``) over the finished samples only.

Costs (what :func:`run_race` and the outcome table charge): a cancelled sample pays for what it
generated, so tokens = Σ min(tokens_i, L_stop) over the N launched samples, with L_stop the length of
the sample whose finish stopped the race, plus the finished samples' scorer tokens for a score
selector; seconds = the latency model's price of one round of width N with L_stop decode steps.

One stop logic, :class:`RaceWatch`, runs everywhere: :func:`run_race` replays a cached pool through it
(the env's sampled mode, the tests), the vectorised outcome table (``env/pool_outcomes.py``) is tested
against :func:`run_race`, and live routing (:meth:`RaceSpec.answer`) feeds it the engine's finishes
as they stream in and cancels the rest on the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from rollouts.backends.base import Backend, Completion, SamplingSpec
from rollouts.errors import ConfigError
from rollouts.latency import Round
from rollouts.scorers import StepScorer, Trajectory
from rollouts.strategies.base import GradeFn, PromptedQuery, StrategyResult, StrategySpec, request_seed
from rollouts.strategies.selectors import SCORE_SELECTORS, answer_key, select

RACE = "race"  # the serving action's ``strategy`` (policy.json); a race is never collected: it derives from a pool
RULES = ("agree", "first")
SAMPLE_COUNTS = ("samples_launched", "samples_finished", "samples_cancelled")  # what a race reports of its samples


@dataclass(frozen=True)
class RaceRule:
    """When a race of ``n`` launched samples stops: ``k`` agreeing finished answers (``agree``) or the
    ``k``-th finisher (``first``)."""

    n: int
    k: int
    rule: str = "agree"

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"race rule must be one of {', '.join(RULES)}, got {self.rule!r}")
        for name in ("n", "k"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"race {name} must be a positive integer, got {v!r}")
        if self.n < 2:
            raise ConfigError(f"a race launches at least 2 samples, got n={self.n}")
        if self.k > self.n:
            raise ConfigError(f"race k={self.k} > n={self.n}: it could never stop before every sample finished")

    @property
    def tag(self) -> str:
        """The race's part of an action id: ``agree3`` or ``first2``."""
        return f"{self.rule}{self.k}"

    @classmethod
    def parse(cls, text: str) -> RaceRule:
        """``"8:agree3"`` / ``"16:first4"`` (config form) -> the rule."""
        try:
            n_s, tag = str(text).split(":")
            rule = next(r for r in RULES if tag.startswith(r))
            n, k = int(n_s), int(tag[len(rule):])
        except (ValueError, StopIteration):
            raise ConfigError(f"race {text!r} is not N:agreeK or N:firstK (e.g. 8:agree3, 16:first4)") from None
        return cls(n, k, rule)

    def __str__(self) -> str:
        return f"{self.n}:{self.tag}"


class RaceWatch:
    """The stop logic, fed one finished sample at a time (its answer key, ``None`` if unparsed)."""

    __slots__ = ("rule", "finished", "counts")

    def __init__(self, rule: RaceRule):
        self.rule = rule
        self.finished = 0
        self.counts: dict[str, int] = {}

    def finish(self, key: str | None) -> bool:
        """Record one finisher; True when the race stops now (cancel whatever still runs)."""
        self.finished += 1
        if self.finished >= self.rule.n:
            return True
        if self.rule.rule == "first":
            return self.finished >= self.rule.k
        if key is None:
            return False
        c = self.counts[key] = self.counts.get(key, 0) + 1
        return c >= self.rule.k


def finish_order(tokens: Sequence[float] | np.ndarray) -> list[int]:
    """The order in which samples of one round finish: generated tokens ascending, ties by sample order."""
    return sorted(range(len(tokens)), key=lambda i: (float(tokens[i]), i))


@dataclass
class RaceOutcome:
    """One race replayed over given samples."""

    finished: list[int]  # sample positions that finished before the stop, in finish order
    stop_tokens: float  # L_stop: decode steps until the stop
    generated: float  # Σ min(tokens_i, L_stop) over the launched samples
    tokens: float  # charged: generated + the finished samples' scorer tokens for a score selector
    pick: int  # the sample position the selector answers with


Floats = Sequence[float] | np.ndarray


def run_race(
    rule: RaceRule,
    keys: Sequence[str | None],
    gen_tokens: Floats,
    scores: Floats | None,
    scorer_tokens: Floats,
    selector: str,
    rng: Any | None = None,
) -> RaceOutcome:
    """Replay a race over the ``rule.n`` launched samples given here (answer keys, generated tokens,
    scores, scorer tokens); ties of the selector go to ``rng`` (a numpy Generator) or the earliest finisher."""
    if len(keys) != rule.n:
        raise ValueError(f"a race of n={rule.n} needs {rule.n} samples, got {len(keys)}")
    watch = RaceWatch(rule)
    finished: list[int] = []
    for i in finish_order(gen_tokens):
        finished.append(i)
        if watch.finish(keys[i]):
            break
    stop = float(gen_tokens[finished[-1]])
    generated = float(sum(min(float(t), stop) for t in gen_tokens))
    sc = None if scores is None else [float(scores[i]) for i in finished]
    pick = finished[select(selector, [keys[i] for i in finished], sc, rng=rng)]
    charged = generated + (sum(float(scorer_tokens[i]) for i in finished) if selector in SCORE_SELECTORS else 0.0)
    return RaceOutcome(finished, stop, generated, charged, pick)


@dataclass(frozen=True)
class RaceSpec(StrategySpec):
    """A race run live (``route.py``, ``serve.py``): one streaming request of ``n`` samples, cancelled
    on the engine when :class:`RaceWatch` stops. It needs a backend that can cancel (``openai``: a vLLM
    server); the offline engine refuses it."""

    n: int
    k: int
    rule: str = "agree"
    name: ClassVar[str] = RACE
    item_keys: ClassVar[tuple[str, ...]] = ("n", "k", "rule")

    @property
    def race(self) -> RaceRule:
        return RaceRule(self.n, self.k, self.rule)

    @property
    def config_id(self) -> str:
        return f"race:n={self.n},{self.rule}={self.k}"  # never a cache key: races derive from pool records

    def serving_action(self, selector: str | None) -> dict[str, Any]:
        return {**self.to_item(), "selector": selector}

    def calibration_runs(self, budgets: Sequence[int]) -> list[StrategySpec]:
        from rollouts.strategies.pool import PoolSpec

        return [PoolSpec(self.n)]

    def run(self, backend: Backend, queries: Sequence[PromptedQuery], sampling: SamplingSpec,
            scorer: StepScorer, grade_fn: GradeFn, seed: int) -> list[StrategyResult]:
        raise ConfigError("a race is not collected: collect a sample_pool with at least n samples; races derive from it")

    def answer(self, backend: Backend, queries: Sequence[PromptedQuery], sampling: SamplingSpec,
               scorer: StepScorer, grade_fn: GradeFn, seed: int, selector: str | None = None) -> list[dict[str, Any]]:
        """Run the race on the engine for each query: stream, grade each finisher, stop and cancel."""
        rule, selector = self.race, selector or "majority"
        watches = [RaceWatch(rule) for _ in queries]
        order: list[list[int]] = [[] for _ in queries]
        grades: list[dict[int, Any]] = [{} for _ in queries]

        def on_finish(qi: int, idx: int, comp: Completion) -> bool:
            g = grade_fn(queries[qi].answer, comp.text)
            grades[qi][idx] = g
            order[qi].append(idx)
            return watches[qi].finish(answer_key(g.answer))

        specs = [replace(sampling, n=self.n, seed=request_seed(seed, q.query_id, "pool")) for q in queries]
        outs = backend.generate_watched([q.prompt_ids for q in queries], specs, on_finish)
        return [self._answer_one(q, comps, order[qi], grades[qi], scorer, selector, seed)
                for qi, (q, comps) in enumerate(zip(queries, outs, strict=True))]

    def _answer_one(self, q: PromptedQuery, comps: list[Completion], order: list[int], grades: dict[int, Any],
                    scorer: StepScorer, selector: str, seed: int) -> dict[str, Any]:
        done = [comps[i] for i in order]
        sb = scorer.score(q.question, [Trajectory([c.text], list(c.token_ids), c.logprobs) for c in done])
        tie_rng = np.random.default_rng(request_seed(seed, q.query_id, "tie"))
        keys = [answer_key(grades[i].answer) for i in order]
        pick = select(selector, keys, list(sb.scores) if selector in SCORE_SELECTORS else None, rng=tie_rng)
        generated = sum(c.tokens for c in comps)
        charged = generated + (sum(sb.scorer_tokens) if selector in SCORE_SELECTORS else 0)
        g, choice = grades[order[pick]], done[pick]
        stop_len = max((c.tokens for c in done), default=0)
        return {"answer": g.answer, "text": choice.text, "correct": g.correct if q.answer is not None else None,
                "tokens": int(charged), "generated_tokens": int(generated),
                "rounds": [Round(len(q.prompt_ids), self.n, stop_len)],
                "samples_launched": self.n, "samples_finished": len(done),
                "samples_cancelled": sum(1 for c in comps if c.finish_reason == "cancelled")}
