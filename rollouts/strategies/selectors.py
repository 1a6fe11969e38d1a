"""Best-of-N selectors: pick one final answer from N samples.

The same functions run when deriving budgets from a cached pool and when routing live, so a cached
outcome and a live one cannot disagree. Answers are compared after ``answer_key`` normalisation (the
grader already extracted them); ``None`` (no answer found) never wins unless every sample is ``None``.
Ties: without a generator they go to the earliest sample (deterministic). With ``rng`` (a seeded
``numpy.random.Generator``) a tie is broken uniformly at random among the tied answers
(``best_score``: among the tied samples), so the outcome does not depend on the order in which a
pool was assembled. The outcome table uses the exact expectation of that random tie-break
(:func:`tied_winners`, :func:`expected_correct`), the sampled env mode and live routing draw it with
their seeded generator; the cache summaries (``collect.py stats``, an import's) report the expectation.
Scores and vote weights within ``TIE_TOL`` of the best count as tied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SELECTORS = ("majority", "best_score", "weighted")
SCORE_SELECTORS = ("best_score", "weighted")  # these read the scorer, so its tokens are charged too
# the confidence-weighted vote: ``weighted`` with each sample's confidence (exp of its mean token log-prob,
# which the engine returns with the sample: no scorer call) in place of its score (:func:`confidence_vote`)
CONFIDENCE_VOTE = "confidence"
TIE_TOL = 1e-9  # vote weights / scores this close to the best are a tie (float sums of equal scores)


def answer_key(answer: str | None) -> str | None:
    """Normalise an extracted answer for voting: strip spaces, dollar signs and a trailing period."""
    if answer is None:
        return None
    key = answer.strip().rstrip(".").strip().strip("$").replace(" ", "")
    return key or None


def tied_winners(selector: str, answers: Sequence[str | None], scores: Sequence[float | None] | None = None) -> list[int]:
    """The samples a random tie-break chooses among: for ``majority``/``weighted`` the first sample of
    each tied best answer, for ``best_score`` every tied best sample (ascending positions).

    ``None`` (no answer) never wins unless every sample is ``None``.
    """
    if not answers:
        raise ValueError("select() needs at least one sample")
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r} (known: {', '.join(SELECTORS)})")
    keys = [answer_key(a) for a in answers]
    if selector != "majority":
        if scores is None or any(s is None for s in scores):
            raise ValueError(f"selector {selector!r} needs a score for every sample")
    valid = [i for i, k in enumerate(keys) if k is not None] or list(range(len(keys)))
    if selector == "best_score":
        top = max(float(scores[i]) for i in valid)  # type: ignore[index, arg-type]
        return [i for i in valid if float(scores[i]) >= top - TIE_TOL]  # type: ignore[index, arg-type]
    weight: dict[str | None, float] = {}
    first: dict[str | None, int] = {}
    for i in valid:
        k = keys[i]
        weight[k] = weight.get(k, 0.0) + (1.0 if selector == "majority" else float(scores[i]))  # type: ignore[index, arg-type]
        first.setdefault(k, i)
    top = max(weight.values())
    return sorted(first[k] for k in weight if weight[k] >= top - TIE_TOL)


def select(
    selector: str,
    answers: Sequence[str | None],
    scores: Sequence[float | None] | None = None,
    rng: Any | None = None,
) -> int:
    """Return the index of the sample whose answer the selector picks.

    - ``majority``: the most frequent answer;
    - ``best_score``: the sample with the highest scorer score;
    - ``weighted``: the answer with the largest sum of scores (scores are probabilities or
      log-probabilities mapped to (0, 1] by the caller).

    Ties go to the earliest sample, or, with ``rng`` (a ``numpy.random.Generator``), to a uniformly
    drawn one of :func:`tied_winners`.
    """
    winners = tied_winners(selector, answers, scores)
    if rng is None or len(winners) == 1:
        return winners[0]
    return winners[int(rng.integers(len(winners)))]


def confidence_vote(
    answers: Sequence[str | None], confidences: Sequence[float], rng: Any | None = None
) -> int:
    """:data:`CONFIDENCE_VOTE`: the index of the sample whose answer has the largest sum of confidences
    (the ``weighted`` selector over ``confidences``; ties and ``None`` as :func:`select`)."""
    return select("weighted", answers, confidences, rng)


def expected_correct(
    selector: str,
    answers: Sequence[str | None],
    correct: Sequence[bool | None],
    scores: Sequence[float | None] | None = None,
) -> float:
    """The expected correctness of :func:`select` with its random tie-break (``rng``): the mean
    correctness of :func:`tied_winners`, as the outcome table counts it (``None``: incorrect)."""
    winners = tied_winners(selector, answers, scores)
    return sum(1.0 for i in winners if correct[i]) / len(winners)
