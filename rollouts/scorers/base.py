"""The step-scorer interface: how good is a partial or complete solution? Used by beam search and best-of-N.

``score(question, trajectories) -> ScoreBatch`` with one score in [0, 1] per trajectory (higher is
better), the tokens the scorer itself processed, and its wall time, so strategies can charge the
scorer's cost. The scorers themselves: ``logprob.py`` and ``prm.py``; ``make_scorer`` (the package
front) builds one by name.
"""

from __future__ import annotations

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
    """One score per trajectory, the tokens the scorer processed for each, and its wall time."""

    scores: list[float]
    scorer_tokens: list[int]
    seconds: float = 0.0


class StepScorer(ABC):
    """Scores trajectories; ``name`` is the ``kind`` its ``describe()`` (a cache meta's ``scorer``) gives."""

    name: str = "scorer"

    @abstractmethod
    def score(self, question: str, trajectories: list[Trajectory]) -> ScoreBatch:
        """One score in [0, 1] per trajectory (its last step, given all before it)."""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name}
