"""Paired bootstraps: is a policy's utility above or below another's, or is the difference noise?

Both evaluations resample once and judge every λ point on the same resamples, so a share of resamples
"at every point" means something:

- one-shot runs (``evaluate.py``): queries are resampled (:func:`resample_weights`); a policy is compared
  with the best static *re-picked in each resample* (:func:`bootstrap_vs_best_static`: on ~100 test
  queries the hindsight best static is itself lucky) or with a fixed static (:func:`bootstrap_vs_action`);
- sequential runs (:mod:`evaluation.sequential`): two stages, the queries and then each query's R sample
  orders (:func:`two_stage_weights`, :func:`two_stage_compare`).

A weight matrix holds draw counts / size, so a resample's mean of any per-query quantity is one matrix
product. Utilities within :data:`TOL` are a tie.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TOL = (
    1e-9  # utilities within TOL are a tie: every ≥ / below count below uses it (float sums of equal actions)
)


def below(x: float) -> bool:
    """x < 0 beyond the tie tolerance (an upper CI end of −1e-15 is a tie, not a loss)."""
    return bool(x < -TOL)


# -- one-shot: resampled queries ------------------------------------------------------------------------
def resample_weights(n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """(n_boot, n) bootstrap resamples of n queries, each row the draw counts / n: a resample's mean of
    any per-query quantity is then one matrix product. The same seed gives the same resamples, so
    every λ point of one evaluation is judged on the same resampled query sets."""
    return np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n


def resampled_diff_to_best_static(utility: np.ndarray, choice: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(n_boot,) U_policy − U_best static in each resample, the best static re-picked per resample."""
    u_pol = utility[np.arange(len(choice)), choice]
    return weights @ u_pol - (weights @ utility).max(axis=1)


def resampled_gap_share(
    utility: np.ndarray, choice: np.ndarray, oracle: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """(n_boot,) gap share of a policy in each resample (NaN where the resample's gap is < TOL)."""
    idx = np.arange(len(choice))
    best = (weights @ utility).max(axis=1)
    gap = weights @ utility[idx, oracle] - best
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(gap >= TOL, (weights @ utility[idx, choice] - best) / gap, np.nan)


def mean_gap_share_spread(per_point: list[np.ndarray]) -> float | None:
    """The std over resamples of the mean gap share over points (points without a gap left out;
    None when no resample has any)."""
    shares = np.array(per_point)  # (points, n_boot)
    ok = np.isfinite(shares)
    n = ok.sum(axis=0)
    if not n.any():
        return None
    means = np.where(ok, shares, 0.0).sum(axis=0)[n > 0] / n[n > 0]
    return float(means.std())


def bootstrap_vs_action(
    utility: np.ndarray, choice: np.ndarray, action: int, weights: np.ndarray | None
) -> dict[str, Any]:
    """Paired bootstrap of U_policy − U_action (a fixed static action, e.g. the train-picked one):
    ``diff``, ``ci90`` and ``p_ge`` = P(policy ≥ that static) over the resamples (tolerance TOL)."""
    d_q = utility[np.arange(len(choice)), choice] - utility[:, action]
    diff = float(d_q.mean())
    if weights is None:
        return {"diff": diff, "ci90": [diff, diff], "p_ge": float(diff >= -TOL)}
    d = weights @ d_q
    lo, hi = np.percentile(d, [5, 95])
    return {"diff": diff, "ci90": [float(lo), float(hi)], "p_ge": float((d >= -TOL).mean())}


def bootstrap_vs_best_static(
    utility: np.ndarray,
    choice: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    weights: np.ndarray | None = None,
) -> dict[str, Any]:
    """Paired bootstrap over queries of U_policy − U_best static, the best static re-picked in each
    resample (so the hindsight pick's luck is part of the spread).

    ``utility``: (R, A) per-query expected utility of every action; ``choice``: (R,) the policy's
    actions; ``weights``: resamples from :func:`resample_weights` (made from ``n_boot`` and ``seed``
    when not given). Returns the point estimate ``diff``, ``ci90`` (5th and 95th percentiles) and
    ``p_ge``, the share of resamples where the policy is >= the best static.
    """
    n = len(choice)
    diff = float(utility[np.arange(n), choice].mean() - utility.mean(axis=0).max())
    if weights is None:
        if n_boot <= 0:
            return {"diff": diff, "ci90": [diff, diff], "p_ge": float(diff >= -TOL)}
        weights = resample_weights(n, n_boot, seed)
    d = resampled_diff_to_best_static(utility, choice, weights)
    lo, hi = np.percentile(d, [5, 95])
    return {"diff": diff, "ci90": [float(lo), float(hi)], "p_ge": float((d >= -TOL).mean())}


# -- sequential: resampled queries, then each query's sample orders ---------------------------------------
def two_stage_weights(n: int, r: int, n_boot: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n_boot, n) query weights and (n_boot, n, r) order weights (draw counts / size)."""
    rng = np.random.default_rng(seed)
    wq = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n
    wr = rng.multinomial(r, np.full(r, 1.0 / r), size=(n_boot, n)) / r
    return wq, wr


def two_stage_means(u: np.ndarray, wq: np.ndarray, wr: np.ndarray) -> np.ndarray:
    """(n_boot,) resampled means of a per (query, order) array (n, r)."""
    return np.einsum("bq,bqr,qr->b", wq, wr, u)


def two_stage_compare(d: np.ndarray, weights: tuple[np.ndarray, np.ndarray] | None) -> dict[str, Any]:
    """Point estimate, 90 % interval and verdict of a paired difference array (n, r); ``weights`` from
    :func:`two_stage_weights`, or None (no bootstrap: the interval is the point). With resamples, the
    per-resample means are kept under ``_boot`` (for grid means; stripped before writing)."""
    if weights is None:
        return {"diff": float(d.mean()), "ci90": [float(d.mean())] * 2, "above_90": False, "below_90": False}
    bs = two_stage_means(d, *weights)
    lo, hi = np.percentile(bs, [5, 95])
    return {
        "diff": float(d.mean()),
        "ci90": [float(lo), float(hi)],
        "above_90": bool(lo > TOL),
        "below_90": bool(hi < -TOL),
        "_boot": bs,
    }
