"""Step scorers: how good is a partial or complete solution? Used by beam search and best-of-N.

Interface: ``score(question, trajectories) -> ScoreBatch`` with one score in [0, 1] per trajectory
(higher is better), the tokens the scorer itself processed, and its wall time, so strategies can
charge the scorer's cost.

- ``LogprobScorer`` (CPU default): the policy model's own confidence, exp(mean token log-prob) over
  the generated tokens. It reuses the log-probs the engine returned while sampling, so it costs no
  extra forward pass: ``scorer_tokens`` is 0, and that is the honest figure.
- ``PRMScorer`` (``rollouts/prm.py``): a Qwen2.5-Math-PRM-style process reward model served by
  vLLM's pooling runner.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Trajectory:
    """A (partial) solution: generated steps with the engine's token ids and log-probs."""

    steps: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.steps)

    def extended(self, text: str, token_ids: list[int], logprobs: list[float] | None) -> Trajectory:
        lps = None if self.logprobs is None or logprobs is None else self.logprobs + list(logprobs)
        return Trajectory(self.steps + [text], self.token_ids + list(token_ids), lps)


@dataclass
class ScoreBatch:
    scores: list[float]
    scorer_tokens: list[int]
    seconds: float = 0.0


class StepScorer(ABC):
    name: str = "scorer"

    @abstractmethod
    def score(self, question: str, trajectories: list[Trajectory]) -> ScoreBatch:
        """One score in [0, 1] per trajectory (its last step, given all before it)."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name}


class LogprobScorer(StepScorer):
    name = "logprob"

    def score(self, question: str, trajectories: list[Trajectory]) -> ScoreBatch:
        scores = []
        for t in trajectories:
            if t.logprobs is None:
                raise ValueError("LogprobScorer needs the engine's log-probs (SamplingSpec.logprobs=True)")
            scores.append(math.exp(sum(t.logprobs) / len(t.logprobs)) if t.logprobs else 0.0)
        return ScoreBatch(scores=scores, scorer_tokens=[0] * len(trajectories), seconds=0.0)


def make_scorer(kind: str, **options: Any) -> StepScorer:
    if kind == "logprob":
        return LogprobScorer()
    if kind == "prm":
        from rollouts.prm import PRMScorer

        return PRMScorer(**options)
    raise ValueError(f"unknown scorer {kind!r} (known: logprob, prm)")


def scorer_from_description(desc: dict[str, Any], **overrides: Any) -> StepScorer:
    """The scorer a cache meta's ``scorer`` entry (``describe()``) names, for live routing to score
    as the collection did; ``overrides`` (e.g. engine settings) go to the constructor."""
    if desc.get("kind") == "prm":
        keep = ("model", "step_tag", "system", "aggregation")
        return make_scorer("prm", **{k: desc[k] for k in keep if k in desc}, **overrides)
    return make_scorer(str(desc.get("kind")), **overrides)
