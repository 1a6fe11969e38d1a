"""Best-of-N selectors: pick one final answer from N samples.

The same functions run when deriving budgets from a cached pool and when routing live, so a cached
outcome and a live one cannot disagree. Answers are compared after ``answer_key`` normalisation (the
grader already extracted them); ``None`` (no answer found) never wins unless every sample is ``None``.
Ties are broken by the earliest sample, which is deterministic and unbiased for i.i.d. samples.
"""

from __future__ import annotations

from collections.abc import Sequence

SELECTORS = ("majority", "best_score", "weighted")
SCORE_SELECTORS = ("best_score", "weighted")  # these read the scorer, so its tokens are charged too


def answer_key(answer: str | None) -> str | None:
    """Normalise an extracted answer for voting: strip spaces, dollar signs and a trailing period."""
    if answer is None:
        return None
    key = answer.strip().rstrip(".").strip().strip("$").replace(" ", "")
    return key or None


def select(selector: str, answers: Sequence[str | None], scores: Sequence[float | None] | None = None) -> int:
    """Return the index of the sample whose answer the selector picks.

    - ``majority``: the most frequent answer (first occurrence on ties);
    - ``best_score``: the sample with the highest scorer score;
    - ``weighted``: the answer with the largest sum of scores (scores are probabilities or
      log-probabilities mapped to (0, 1] by the caller); first occurrence on ties.
    """
    if not answers:
        raise ValueError("select() needs at least one sample")
    if selector not in SELECTORS:
        raise ValueError(f"unknown selector {selector!r} (known: {', '.join(SELECTORS)})")
    keys = [answer_key(a) for a in answers]
    if selector != "majority":
        if scores is None or any(s is None for s in scores):
            raise ValueError(f"selector {selector!r} needs a score for every sample")
    if selector == "best_score":
        best = max(range(len(keys)), key=lambda i: (keys[i] is not None, scores[i], -i))  # type: ignore[index]
        return best
    weight: dict[str | None, float] = {}
    first: dict[str | None, int] = {}
    for i, k in enumerate(keys):
        w = 1.0 if selector == "majority" else float(scores[i])  # type: ignore[index]
        weight[k] = weight.get(k, 0.0) + w
        first.setdefault(k, i)
    winner = max(weight, key=lambda k: (k is not None, weight[k], -first[k]))
    return first[winner]
