"""The CPU default scorer: the policy model's own confidence, exp(mean token log-prob) over the generated tokens.

It reuses the log-probs the engine returned while sampling, so it costs no extra forward pass:
``scorer_tokens`` is 0, and that is the honest figure.
"""

from __future__ import annotations

import math

from rollouts.scorers.base import ScoreBatch, StepScorer, Trajectory


class LogprobScorer(StepScorer):
    name = "logprob"

    def score(self, question: str, trajectories: list[Trajectory]) -> ScoreBatch:
        scores = []
        for t in trajectories:
            if t.logprobs is None:
                raise ValueError("LogprobScorer needs the engine's log-probs (SamplingSpec.logprobs=True)")
            scores.append(math.exp(sum(t.logprobs) / len(t.logprobs)) if t.logprobs else 0.0)
        return ScoreBatch(scores=scores, scorer_tokens=[0] * len(trajectories), seconds=0.0)
