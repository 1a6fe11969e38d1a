"""Step scorers behind one small interface (see ``base.py``), built by name.

- ``logprob`` (``logprob.py``, CPU default): exp(mean token log-prob) of the policy model's own
  sampled tokens; free.
- ``prm`` (``prm.py``): a Qwen2.5-Math-PRM-style process reward model served by vLLM's pooling runner.
"""

from __future__ import annotations

from typing import Any

from rollouts.scorers.base import ScoreBatch, StepScorer, Trajectory
from rollouts.scorers.logprob import LogprobScorer

__all__ = ["LogprobScorer", "ScoreBatch", "StepScorer", "Trajectory", "make_scorer", "scorer_from_description"]


def make_scorer(kind: str, **options: Any) -> StepScorer:
    """Build a scorer by name: ``logprob`` or ``prm`` (``options`` go to ``PRMScorer``)."""
    if kind == "logprob":
        return LogprobScorer()
    if kind == "prm":
        from rollouts.scorers.prm import PRMScorer

        return PRMScorer(**options)
    raise ValueError(f"unknown scorer {kind!r} (known: logprob, prm)")


def scorer_from_description(desc: dict[str, Any], **overrides: Any) -> StepScorer:
    """The scorer a cache meta's ``scorer`` entry (``describe()``) names, for live routing to score
    as the collection did; ``overrides`` (e.g. engine settings) go to the constructor."""
    if desc.get("kind") == "prm":
        keep = ("model", "step_tag", "system", "aggregation")
        return make_scorer("prm", **{k: desc[k] for k in keep if k in desc}, **overrides)
    return make_scorer(str(desc.get("kind")), **overrides)
