"""Early-stopping baselines for ``ttc/Escalate-v0``, as step policies over :class:`env.seen.SeenState`.

Each rule draws rounds of a width schedule, then answers with a selector once its criterion holds, a
cap on samples is reached or the pool is exhausted; it never switches to beam search. Families:

- ``adaptive_consistency`` (Aggarwal et al., 2023, the Beta criterion): stop when
  P(p₁ > p₂ | votes) = 1 − I₀.₅(v₁ + 1, v₂ + 1) ≥ C, with v₁, v₂ the two leading answers' votes;
- ``esc`` (Li et al., 2024, Escape Sky-high Cost): windows of w samples; stop when every sample of the
  latest window has the same (parsed) answer;
- ``k_agree``: stop when the leading answer has k votes;
- ``score_threshold``: stop when the best scorer score reaches τ (optionally also when 3 agree: the
  hand rule), answer by score;
- ``confidence`` (DeepConf online, Fu et al., 2025, "Deep Think with Confidence"): each finished
  sample votes for its answer with its confidence, exp of its mean token log-prob (the engine's, from the
  cache's ``mean_logprob``: not the scorer's score, which may be another scorer); stop once at least m
  samples have finished and the leading answer holds a share ≥ τ of the confidence of every finished
  sample (unparsed samples count in the total, for no answer); answer by the confidence-weighted vote,
  which is no step action: the rule stops with ``stop:majority`` and answers with the vote
  (:func:`answer_selector`). Only where every sample of the primary pool has a ``mean_logprob``
  (:func:`rule_notes` says when it is left out);
- ``cross_pool`` (a step menu with several pools only): alternate the pools (each round from the pool
  with the fewest samples launched, ties to the first), stop when every pool's leading answer is the
  same with at least k votes in each pool; answer over the samples of all pools.

The other families draw from the menu's primary pool only (``pools[0]``), as on a one-pool menu.

With the finish watch (``env.watch: finish``) the rules see the samples in finish order and are
checked at each finish: while a round runs a rule waits or stops (cancelling the rest), and draws its
next round only once the round is over; so ``k_agree`` with one round of N is the race "launch N, stop
at k agreeing".

The criteria do not depend on λ, so each configuration is simulated once per split and
:func:`tune` picks, per λ point, the configuration with the best mean validation utility.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import betainc

from env.episode import Episode
from env.escalate_menu import EscalateMenu
from env.seen import SeenState
from policies.escalate_sim import SimResult, Simulator, StepPolicy
from rollouts.strategies.selectors import CONFIDENCE_VOTE

SCHEDULES = {
    "ones": (1,),
    "twos": (2,),
    "fours": (4,),
    "doubling": (1, 1, 2, 4, 8),
    "all": (),  # the whole cap in one round (with the finish watch: a race watched at each finish)
}
CONF_TAUS = (0.6, 0.7, 0.8, 0.9, 0.95)  # the confidence family's consensus thresholds τ
CONF_MIN = (2, 3)  # and its least numbers of finished samples m
CONF_SCHEDULES = ("ones", "all")  # one sample at a time (DeepConf online), or the cap at once watched per finish
FAMILIES = ("adaptive_consistency", "esc", "k_agree", "score_threshold", "confidence", "cross_pool")


@dataclass(frozen=True)
class Rule:
    family: str
    param: float  # C, w, k or τ
    schedule: str
    selector: str
    cap: int
    also_agree: int = 0  # score_threshold: also stop when this many agree (0: never)
    min_samples: int = 0  # confidence: stop only once this many samples have finished

    @property
    def name(self) -> str:
        extra = f",agree={self.also_agree}" if self.also_agree else ""
        extra += f",min={self.min_samples}" if self.min_samples else ""
        return f"{self.family}(p={self.param:g},{self.schedule},{self.selector},cap={self.cap}{extra})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "name": self.name}


def ac_confidence(v1: int, v2: int) -> float:
    """Adaptive-Consistency's Beta stopping statistic P(p₁ > p₂) under Beta(v₁ + 1, v₂ + 1)."""
    return float(1.0 - betainc(v1 + 1, v2 + 1, 0.5))


def should_stop(rule: Rule, st: SeenState) -> bool:
    if st.drawn == 0:
        return False
    if rule.family == "cross_pool":
        return st.drawn >= rule.cap or (st.left == 0 and not st.running) or st.pools_agree(int(rule.param))
    if st.drawn >= rule.cap or (st.left_in(0) == 0 and not st.running):  # the primary pool
        return True
    _, v1, v2 = st.top()
    if rule.family == "adaptive_consistency":
        return v1 > 0 and ac_confidence(v1, v2) >= rule.param
    if rule.family == "k_agree":
        return v1 >= rule.param
    if rule.family == "esc":
        w = int(rule.param)
        last = st.keys[-w:]
        return len(last) == w and last[0] is not None and all(k == last[0] for k in last)
    if rule.family == "score_threshold":
        return st.max_score >= rule.param or (rule.also_agree > 0 and v1 >= rule.also_agree)
    if rule.family == "confidence":
        return st.drawn >= rule.min_samples and st.confidence_share() >= rule.param
    raise ValueError(f"unknown rule family {rule.family!r}")


def next_width(rule: Rule, menu: EscalateMenu, st: SeenState) -> int:
    """The schedule's next width, cut to what the cap and the pool leave, as the largest draw size."""
    if rule.family == "esc":
        want = int(rule.param)
    elif rule.schedule == "all":
        want = rule.cap
    else:
        sched = SCHEDULES[rule.schedule]
        r = len(st.widths)
        want = sched[r] if r < len(sched) else sched[-1] if len(sched) == 1 else 2 * sched[-1]
    room = min(want, rule.cap - st.launched, st.left_in(0))
    fits = [k for k in menu.draw_index if k <= room]
    return max(fits) if fits else min(menu.draw_index)


def next_draw(rule: Rule, menu: EscalateMenu, st: SeenState) -> int:
    """The step action index of the rule's next draw: :func:`next_width` of the primary pool, or for
    ``cross_pool`` the schedule's width from the pool with the fewest samples launched (that has some left)."""
    if rule.family != "cross_pool":
        return menu.draw_index[next_width(rule, menu, st)]
    p = min((q for q in range(len(menu.pools)) if st.left_in(q) > 0), key=lambda q: st.pool_launched[q])
    draws = menu.pool_draw_index[p]
    room = min(SCHEDULES[rule.schedule][0], rule.cap - st.launched, st.left_in(p))
    fits = [k for k in draws if k <= room]
    return draws[max(fits) if fits else min(draws)]


def answer_selector(rule: Rule, menu: EscalateMenu) -> str | None:
    """The selector a rule answers with where it is no step action (the ``confidence`` vote), else None."""
    return None if rule.selector in menu.stop_index else rule.selector


def stop_step(rule: Rule, menu: EscalateMenu) -> int:
    """The step action a rule stops with: ``stop:<its selector>``, or ``stop:majority`` (legal once a
    sample has finished) played with :func:`answer_selector`."""
    return menu.stop_index[rule.selector if rule.selector in menu.stop_index else "majority"]


def rule_policy(rule: Rule, menu: EscalateMenu) -> StepPolicy:
    """The rule as a step policy; its ``stop_selector`` (:func:`answer_selector`) is the answer of its
    stops where that is no step action (:meth:`policies.escalate_sim.Simulator.run` plays it)."""
    stop_a = stop_step(rule, menu)
    wait_a = -1 if menu.wait_index is None else menu.wait_index  # only the finish watch has rounds running

    def act(obs, masks, episodes: list[Episode]):
        out = np.empty(len(episodes), dtype=np.int64)
        for b, ep in enumerate(episodes):
            st = ep.state
            if should_stop(rule, st):
                out[b] = stop_a
            elif st.running:
                out[b] = wait_a
            else:
                out[b] = next_draw(rule, menu, st)
        return out

    act.needs_obs = False  # type: ignore[attr-defined]
    act.stop_selector = answer_selector(rule, menu)  # type: ignore[attr-defined]
    return act


def rule_notes(menu: EscalateMenu) -> list[str]:
    """Why a family is missing from :func:`rule_grid` on this menu (said once where the rules are listed)."""
    if menu.has_confidence:
        return []
    return [f"no confidence rules: the samples of pool {menu.pool_config!r} do not all carry a mean token "
            "log-prob (mean_logprob)"]


def rule_grid(menu: EscalateMenu) -> dict[str, list[Rule]]:
    """The configurations tuned per family (every threshold, schedule, selector and cap below; the
    ``confidence`` family only where the primary pool's samples have confidences; the ``cross_pool``
    family only on a menu with several pools, its caps counting the samples of all pools)."""
    k = menu.pool_size
    caps = sorted({c for c in (4, 8, k) if c <= k})
    sels = ["majority", "best_score"] if menu.has_scores else ["majority"]
    grid: dict[str, list[Rule]] = {f: [] for f in FAMILIES}
    for c, sched, sel, cap in itertools.product(
        (0.6, 0.7, 0.8, 0.9, 0.95, 0.99), ("ones", "twos", "doubling"), sels, caps
    ):
        grid["adaptive_consistency"].append(Rule("adaptive_consistency", c, sched, sel, cap))
    for w, sel, cap in itertools.product((2, 4, 8), sels, caps):
        if w <= cap and w in menu.draw_index:
            grid["esc"].append(Rule("esc", w, "window", sel, cap))
    for kk, sched, sel, cap in itertools.product((1, 2, 3, 4, 5), ("ones", "twos", "doubling"), sels, caps):
        if kk <= cap:
            grid["k_agree"].append(Rule("k_agree", kk, sched, sel, cap))
    if menu.has_scores:
        for tau, sched, agree, cap in itertools.product(
            (0.5, 0.6, 0.66, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95), ("ones", "doubling"), (0, 3), caps
        ):
            grid["score_threshold"].append(Rule("score_threshold", tau, sched, "best_score", cap, agree))
    if menu.has_confidence:
        for tau, m, sched, cap in itertools.product(CONF_TAUS, CONF_MIN, CONF_SCHEDULES, caps):
            if m <= cap:
                grid["confidence"].append(Rule("confidence", tau, sched, CONFIDENCE_VOTE, cap, min_samples=m))
    if len(menu.pools) > 1:
        total = menu.total_size
        for kk, sched, sel, cap in itertools.product(
            (1, 2, 3), ("ones", "twos"), sels, sorted({c for c in (4, 8, total // 2, total) if c <= total})
        ):
            if kk * len(menu.pools) <= cap:
                grid["cross_pool"].append(Rule("cross_pool", kk, sched, sel, cap))
    return {f: rules for f, rules in grid.items() if rules}


def simulate_rules(sim: Simulator, rules: list[Rule]) -> list[SimResult]:
    """Each rule once (its decisions do not depend on λ; the utility is priced afterwards)."""
    return [sim.run(rule_policy(r, sim.menu), 0.0, 0.0) for r in rules]


def rule_means(results: list[SimResult]) -> np.ndarray:
    """(n configurations, 3): each one's mean accuracy, tokens and seconds (all a tuning needs: the
    utility is linear in λ)."""
    return np.array([[r.correct.mean(), r.tokens.mean(), r.seconds.mean()] for r in results], dtype=np.float64)


def tune_means(means: np.ndarray, lambdas: list[tuple[float, float]]) -> list[int]:
    """Per λ point, the index of the configuration (a row of :func:`rule_means`) with the best mean
    utility (first on ties)."""
    acc, tok, sec = means[:, 0], means[:, 1], means[:, 2]
    return [int(np.argmax(acc - lt * tok - ls * sec)) for lt, ls in lambdas]


def tune(results: list[SimResult], lambdas: list[tuple[float, float]]) -> list[int]:
    """Per λ point, the index of the configuration with the best mean utility (first on ties)."""
    return tune_means(rule_means(results), lambdas)
