"""Budget-N outcomes of a pool of K samples, vectorised: one pool record as arrays, the subsets of it a
budget draws, and the selectors' (expected) choice over many subsets at once.

Selection follows :func:`rollouts.strategies.selectors.select` (tests check it against ``select``),
with ties broken uniformly at random among the tied answers (``best_score``: tied samples), taken in
expectation (:func:`expected_selected_correct`), so a budget's correctness does not depend on the
order of the samples in the pool; ``None`` answers never win unless all are ``None``.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rollouts.strategies import PoolSpec, RaceRule
from rollouts.strategies.selectors import SCORE_SELECTORS, TIE_TOL, answer_key


def select_many(selector: str, answers: np.ndarray, scores: np.ndarray | None) -> np.ndarray:
    """Vectorised :func:`select` over leading axes.

    ``answers``: int array (..., N) of answer ids, -1 for ``None`` (equal ids = equal answer keys);
    ``scores``: float array (..., N) (required by ``best_score``/``weighted``). Returns the chosen
    position (..., ) with the same semantics as ``select`` (earliest on ties; ``None`` never wins
    unless all are ``None``).
    """
    valid = answers >= 0
    if selector == "best_score":
        if scores is None:
            raise ValueError("best_score needs scores")
        any_valid = valid.any(axis=-1, keepdims=True)
        eff = np.where(valid | ~any_valid, scores, -np.inf)
        return np.argmax(eff, axis=-1)
    if selector not in ("majority", "weighted"):
        raise ValueError(f"unknown selector {selector!r}")
    eq = answers[..., :, None] == answers[..., None, :]
    if selector == "majority":
        weight = eq.sum(axis=-1).astype(np.float64)
    else:
        if scores is None:
            raise ValueError("weighted needs scores")
        weight = np.einsum("...ij,...j->...i", eq.astype(np.float64), scores.astype(np.float64))
    weight = np.where(valid, weight, -np.inf)
    return np.argmax(weight, axis=-1)


def expected_selected_correct(
    selector: str, answers: np.ndarray, scores: np.ndarray | None, correct: np.ndarray,
    present: np.ndarray | None = None,
) -> np.ndarray:
    """Vectorised expected correctness of :func:`select` with a uniformly random tie-break.

    ``answers``/``scores``/``correct``: (..., N) (``correct`` 0/1 floats). Among the tied best answers
    (``majority``, ``weighted``: each answer once, at its first sample) or the tied best samples
    (``best_score``), each is chosen with equal probability: the result is the mean of their
    correctness, the exact expectation of ``select(..., rng=...)`` over its draws. ``present`` (bool,
    (..., N)) restricts the selection to those samples (a race's finished ones); None: all.
    """
    present = np.ones(answers.shape, dtype=bool) if present is None else present
    valid = (answers >= 0) & present
    any_valid = valid.any(axis=-1, keepdims=True)
    eligible = valid | (~any_valid & present)  # None never wins unless all (present) are None
    if selector == "best_score":
        if scores is None:
            raise ValueError("best_score needs scores")
        weight = np.where(eligible, scores.astype(np.float64), -np.inf)
        candidate = eligible
    elif selector in ("majority", "weighted"):
        eq = answers[..., :, None] == answers[..., None, :]
        if selector == "majority":
            weight = (eq & eligible[..., None, :]).sum(axis=-1).astype(np.float64)
        else:
            if scores is None:
                raise ValueError("weighted needs scores")
            weight = np.einsum("...ij,...j->...i", (eq & eligible[..., None, :]).astype(np.float64),
                               scores.astype(np.float64))
        weight = np.where(eligible, weight, -np.inf)
        n = answers.shape[-1]
        earlier = np.tril(np.ones((n, n), dtype=bool), k=-1)  # [i, j]: j < i
        candidate = eligible & ~(eq & earlier & eligible[..., None, :]).any(axis=-1)  # first sample of each answer
    else:
        raise ValueError(f"unknown selector {selector!r}")
    top = np.max(np.where(candidate, weight, -np.inf), axis=-1, keepdims=True)
    tied = candidate & (weight >= top - TIE_TOL)
    return (tied * correct).sum(axis=-1) / tied.sum(axis=-1)


def subsets_for(k: int, n: int, mc_subsets: int, seed: int) -> tuple[np.ndarray, bool]:
    """Index subsets (S, n) of range(k), ascending within a row; exact enumeration when small."""
    if n >= k:
        return np.arange(k)[None, :], True
    if math.comb(k, n) <= mc_subsets:
        return np.array(list(itertools.combinations(range(k), n)), dtype=np.int64), True
    rng = np.random.default_rng([seed, k, n])
    idx = np.argsort(rng.random((mc_subsets, k)), axis=1)[:, :n]
    return np.sort(idx, axis=1), False


@dataclass
class PoolRecord:
    """One sample_pool record, as arrays."""

    keys: list[str | None]
    answers: np.ndarray  # int ids, -1 for None
    correct: np.ndarray  # float 0/1
    gen_tokens: np.ndarray  # float
    scorer_tokens: np.ndarray  # float
    scores: np.ndarray | None
    seconds_by_n: dict[str, float]
    seconds: float | None
    # per sample exp(mean token log-prob), the engine's confidence in it; None unless every sample has one
    confidence: np.ndarray | None = None

    @property
    def k(self) -> int:
        return len(self.keys)


def prepare_pool(r: dict[str, Any]) -> PoolRecord:
    samples = r["samples"]
    keys = [answer_key(s["answer"]) for s in samples]
    ids: dict[str, int] = {}
    answers = np.array([-1 if key is None else ids.setdefault(key, len(ids)) for key in keys], dtype=np.int64)
    correct = np.array([1.0 if s["correct"] else 0.0 for s in samples])
    toks = [s["tokens"] for s in samples]
    known = [t for t in toks if t is not None]
    n_missing = len(toks) - len(known)
    fill = max(r["tokens"] - sum(known), 0) / n_missing if n_missing else 0.0
    gen = np.array([fill if t is None else float(t) for t in toks])
    if any("scorer_tokens" in s for s in samples):
        scorer = np.array([float(s.get("scorer_tokens") or 0) for s in samples])
    else:
        scorer = np.full(len(samples), float(r["scorer_tokens"]) / len(samples))
    sc = [s.get("score") for s in samples]
    scores = None if any(x is None for x in sc) else np.array(sc, dtype=np.float64)
    sbn = r.get("seconds_by_n") or {}
    lps = [s.get("mean_logprob") for s in samples]
    conf = None if any(x is None for x in lps) else np.exp(np.array(lps, dtype=np.float64))
    return PoolRecord(
        keys, answers, correct, gen, scorer, scores, {str(k): float(v) for k, v in sbn.items()}, r["seconds"], conf
    )


@dataclass
class PoolGroup:
    """Pool records of one size K, stacked (R, K), so a budget's subsets vectorise over all of them."""

    answers: np.ndarray
    correct: np.ndarray
    gen_tokens: np.ndarray
    scorer_tokens: np.ndarray
    scores: np.ndarray | None  # None unless every record is scored

    @classmethod
    def stack(cls, records: list[PoolRecord]) -> PoolGroup:
        have_scores = all(p.scores is not None for p in records)
        return cls(
            np.stack([p.answers for p in records]), np.stack([p.correct for p in records]),
            np.stack([p.gen_tokens for p in records]), np.stack([p.scorer_tokens for p in records]),
            np.stack([p.scores for p in records]) if have_scores else None,  # type: ignore[misc]
        )  # fmt: skip

    def budget(
        self, n: int, selector: str | None, mc_subsets: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """Budget ``n`` (<= K) with ``selector`` (None: ``n`` = 1), per record: the expected correctness,
        the expected charged tokens and the expected longest generation of a subset, and whether the
        subsets were enumerated exactly."""
        k = self.answers.shape[1]
        subsets, exact = subsets_for(k, n, mc_subsets, seed)
        if n == 1:
            exp_correct = self.correct.mean(axis=1)
        else:
            exp_correct = np.empty(len(self.answers))
            for lo in range(0, len(self.answers), 64):  # bound memory for big pools
                sl = slice(lo, lo + 64)
                sc = self.scores[sl][:, subsets] if self.scores is not None else None
                exp = expected_selected_correct(
                    selector or "majority", self.answers[sl][:, subsets], sc, self.correct[sl][:, subsets]
                )  # (r, S)
                exp_correct[sl] = exp.mean(axis=1)
        per_sample = PoolSpec.charged_tokens(self.gen_tokens, self.scorer_tokens, selector)
        exp_tokens = per_sample.mean(axis=1) * n
        mean_max = self.gen_tokens[:, subsets].max(axis=2).mean(axis=1)
        return exp_correct, exp_tokens, mean_max, exact

    def race(
        self, rule: RaceRule, selector: str | None, mc_subsets: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
        """A race launching ``rule.n`` (<= K) samples, over the same subsets as budget ``rule.n``: per
        record the expected correctness, charged tokens and L_stop, and whether subsets were exact."""
        subsets, exact = subsets_for(self.answers.shape[1], rule.n, mc_subsets, seed)
        out = np.empty((3, len(self.answers)))
        for lo in range(0, len(self.answers), 64):  # bound memory for big pools
            sl = slice(lo, lo + 64)
            sc = self.scores[sl][:, subsets] if self.scores is not None else None
            parts = race_many(
                rule, selector, self.answers[sl][:, subsets], self.gen_tokens[sl][:, subsets], sc,
                self.scorer_tokens[sl][:, subsets], self.correct[sl][:, subsets],
            )  # fmt: skip
            for j, arr in enumerate(parts):
                out[j, sl] = arr.mean(axis=1)
        return out[0], out[1], out[2], exact


def race_many(
    rule: RaceRule, selector: str | None, answers: np.ndarray, gen_tokens: np.ndarray, scores: np.ndarray | None,
    scorer_tokens: np.ndarray, correct: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised :func:`rollouts.strategies.race.run_race` over leading axes (tests check it against it).

    Inputs (..., N): the N launched samples of each race in sample order. Returns, per race, the
    expected correctness of the selector over the finished samples (random tie-break, in expectation),
    the charged tokens and L_stop (the decode steps until the stop).
    """
    n = answers.shape[-1]
    order = np.argsort(gen_tokens, axis=-1, kind="stable")  # finish order: shortest first, ties by position

    def take(a: np.ndarray) -> np.ndarray:
        return np.take_along_axis(a, order, axis=-1)

    ans, tok, cor, scr = take(answers), take(gen_tokens), take(correct), take(scorer_tokens)
    pos = np.arange(n)
    if rule.rule == "first":
        hit = np.broadcast_to(pos == rule.k - 1, ans.shape)
    else:
        same = (ans[..., :, None] == ans[..., None, :]) & (pos[None, :] <= pos[:, None])  # [t, j]: j <= t agrees
        hit = ((same.sum(axis=-1) >= rule.k) & (ans >= 0))
    stop = np.argmax(hit | (pos == n - 1), axis=-1)  # the first finisher at which the race stops
    present = pos <= stop[..., None]
    stop_len = np.take_along_axis(tok, stop[..., None], axis=-1)[..., 0]
    generated = np.minimum(tok, stop_len[..., None]).sum(axis=-1)
    sel = selector or "majority"
    charged = generated + ((scr * present).sum(axis=-1) if sel in SCORE_SELECTORS else 0.0)
    exp_correct = expected_selected_correct(sel, ans, None if scores is None else take(scores), cor, present)
    return exp_correct, charged, stop_len
