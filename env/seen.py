"""What an escalation episode has seen: the finished samples, their costs, and the ``seen`` observation
features (:data:`SEEN_FEATURES`; with ``env.watch: finish`` also :data:`FINISH_FEATURES`; with several
pools also :func:`pool_features`, after them).

With several pools (prompt styles, models, ...: :class:`env.escalate_menu.EscalateMenu`) the state
holds every drawn sample of every pool (``pool_size`` is then their total, the selectors answer over
all of them), each pool's votes, and whether the pools' leading answers agree.

Two ways to watch a round (``env.watch``): ``round`` records a whole round at once (:meth:`SeenState.add_round`);
``finish`` launches it (:meth:`SeenState.launch`) and records its samples one finish at a time
(:meth:`SeenState.finish`), the costs accruing as they happen: every launched sample has generated
``min(its tokens, L_now)`` tokens at decode step ``L_now``, and the round has taken the latency model's
seconds for its width and ``L_now`` decode steps.

Shared by ``ttc/Escalate-v0``, the lockstep simulator (``policies/escalate_sim.py``) and live routing
(``policies/sequential_router.py``): cached and live samples go through the same :class:`SeenState`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from env.escalate_menu import EscalateMenu
from env.outcomes import OutcomeTable
from rollouts.strategies.selectors import CONFIDENCE_VOTE, SCORE_SELECTORS, confidence_vote, select

SEEN_FEATURES = (
    "drawn_share",  # samples drawn / pool size
    "top1_share",  # votes of the leading answer / samples drawn
    "top2_share",
    "distinct_share",  # distinct parsed answers / pool size
    "unparsed_share",  # samples without an answer / samples drawn
    "leader_mean_score",
    "max_score",
    "mean_length",  # mean generated tokens per drawn sample / the train split's mean
    "tokens_spent",  # / the train cost scale C_T
    "seconds_spent",  # / the train cost scale C_L
    "rounds",  # / the most rounds an episode can take (K)
)
FINISH_FEATURES = (  # env.watch: finish adds these after SEEN_FEATURES
    "round_finished_share",  # samples of the current round finished / its width (0 with no round)
    "running_share",  # samples still running / pool size
    "decode_step",  # the current round's decode step L_now / the train split's mean sample length
    "round_seconds_spent",  # seconds of the current round so far / the train cost scale C_L
)
WATCHES = ("round", "finish")


def pool_features(n_pools: int) -> tuple[str, ...]:
    """What a menu of several pools adds to the observation (nothing for one pool): per pool its drawn
    share (samples drawn from it / its size) and its leading answer's vote share, then ``pools_agree``
    (1 when every pool has an answer and their leading answers are the same)."""
    if n_pools < 2:
        return ()
    per = tuple(f"pool{p}_{f}" for p in range(n_pools) for f in ("drawn_share", "top1_share"))
    return per + ("pools_agree",)


def seen_features(watch: str = "round", n_pools: int = 1) -> tuple[str, ...]:
    """The seen part of the observation for ``env.watch`` and the menu's number of pools (``round``,
    one pool: :data:`SEEN_FEATURES` only)."""
    return (SEEN_FEATURES + FINISH_FEATURES if watch == "finish" else SEEN_FEATURES) + pool_features(n_pools)


def menu_seen_features(menu: EscalateMenu) -> tuple[str, ...]:
    """:func:`seen_features` of a step menu."""
    return seen_features(menu.watch, len(menu.pools))


@dataclass(frozen=True)
class SeenUnits:
    """Scales of the ``seen`` features (from the train split; stored with the run and the export)."""

    tokens_per_sample: float
    cost_tokens: float
    cost_seconds: float
    max_rounds: float

    def to_dict(self) -> dict[str, float]:
        return {
            k: float(getattr(self, k))
            for k in ("tokens_per_sample", "cost_tokens", "cost_seconds", "max_rounds")
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SeenUnits:
        return cls(
            **{k: float(d[k]) for k in ("tokens_per_sample", "cost_tokens", "cost_seconds", "max_rounds")}
        )


class SeenState:
    """The samples drawn so far for one query, their costs, and the ``seen`` observation features.

    Samples come in whole rounds (``add_round``) or one finish at a time (``launch``, then ``finish``
    per finisher in finish order) as answer keys (``answer_key`` output, None if unparsed), generated
    tokens, scorer tokens and scores (None without a scorer); the caller prices the round's seconds.
    ``answer(selector)`` is :func:`rollouts.strategies.selectors.select` over the finished samples
    (ties: the earliest finished). ``drawn`` counts finished samples, ``launched`` launched ones.

    ``pool_size``: the pool's K, or one K per pool of the menu (a round then names its ``pool``).

    Confidences (optional, per sample: exp of its mean token log-prob) are summed per answer key and
    over every finished sample (unparsed ones too): :meth:`confidence_share` and the
    ``confidence`` answer (:data:`rollouts.strategies.selectors.CONFIDENCE_VOTE`) read them; a state fed
    one sample without a confidence has none (``has_confidence`` False).
    """

    __slots__ = (
        "pool_size", "has_scores", "keys", "scorer", "scores", "counts", "score_sum",
        "n_none", "max_score", "gen_sum", "tokens", "seconds", "widths", "round_tokens", "round_seconds",
        "launched", "running", "step_now", "round_done_gen",
        "pool_sizes", "pool_launched", "pool_drawn", "pool_counts", "round_pools",
        "confs", "conf_sum", "conf_total", "has_confidence",
    )  # fmt: skip

    def __init__(self, pool_size: int | list[int], has_scores: bool):
        self.pool_sizes = [int(k) for k in pool_size] if isinstance(pool_size, list | tuple) else [int(pool_size)]
        self.pool_size = sum(self.pool_sizes)
        self.has_scores = bool(has_scores)
        self.pool_launched = [0] * len(self.pool_sizes)
        self.pool_drawn = [0] * len(self.pool_sizes)
        self.pool_counts: list[dict[str, int]] = [{} for _ in self.pool_sizes]
        self.round_pools: list[int] = []  # each round's pool
        self.keys: list[str | None] = []
        self.scorer: list[float] = []
        self.scores: list[float] = []
        self.counts: dict[str, int] = {}
        self.score_sum: dict[str, float] = {}
        self.n_none = 0
        self.max_score = 0.0
        self.gen_sum = 0.0
        self.tokens = 0.0  # charged so far
        self.seconds = 0.0
        self.widths: list[int] = []
        self.round_tokens: list[float] = []
        self.round_seconds: list[float] = []
        self.launched = 0  # samples launched (finished, running or cancelled)
        self.running = 0  # samples of the current round still running (finish watch)
        self.step_now = 0.0  # the current round's decode step (finish watch)
        self.round_done_gen = 0.0  # generated tokens of the current round's finished samples
        self.confs: list[float] = []  # per finished sample its confidence (0.0 where it had none)
        self.conf_sum: dict[str, float] = {}  # per answer key the sum of its samples' confidences
        self.conf_total = 0.0  # over every finished sample, unparsed ones too
        self.has_confidence = True  # every finished sample came with a confidence

    @property
    def drawn(self) -> int:
        return len(self.keys)

    @property
    def left(self) -> int:
        return self.pool_size - self.launched

    def left_in(self, pool: int) -> int:
        """Samples of pool ``pool`` not launched yet."""
        return self.pool_sizes[pool] - self.pool_launched[pool]

    def _record(self, key: str | None, scorer_tokens: float, score: float, pool: int = 0,
                conf: float | None = None) -> None:
        self.pool_drawn[pool] += 1
        if conf is None:
            self.has_confidence, conf = False, 0.0
        self.confs.append(conf)
        self.conf_total += conf
        if key is not None and len(self.pool_counts) > 1:  # per-pool votes: several pools only
            pc = self.pool_counts[pool]
            pc[key] = pc.get(key, 0) + 1
        self.keys.append(key)
        self.scorer.append(scorer_tokens)
        self.scores.append(score)
        if key is None:
            self.n_none += 1
        else:
            self.counts[key] = self.counts.get(key, 0) + 1
            self.score_sum[key] = self.score_sum.get(key, 0.0) + score
            self.conf_sum[key] = self.conf_sum.get(key, 0.0) + conf
        if score > self.max_score:
            self.max_score = score

    def add_round(self, keys, gen_tokens, scorer_tokens, scores, seconds: float, pool: int = 0,
                  confidences=None) -> tuple[float, float]:
        """Record one whole round (of pool ``pool``); returns its (tokens, seconds) charge."""
        tok = 0.0
        for i, key in enumerate(keys):
            tok += float(gen_tokens[i])
            score = float(scores[i]) if scores is not None else 0.0
            self._record(key, float(scorer_tokens[i]), score, pool, None if confidences is None else float(confidences[i]))
        self.gen_sum += tok
        self.tokens += tok
        self.seconds += float(seconds)
        self.launched += len(keys)
        self.pool_launched[pool] += len(keys)
        self.round_pools.append(pool)
        self.widths.append(len(keys))
        self.round_tokens.append(tok)
        self.round_seconds.append(float(seconds))
        return tok, float(seconds)

    def launch(self, width: int, pool: int = 0) -> None:
        """Start a round of ``width`` samples (of pool ``pool``) watched finish by finish (nothing charged yet)."""
        if self.running:
            raise ValueError("a round is still running: its samples must finish (or be cancelled) first")
        self.launched += width
        self.pool_launched[pool] += width
        self.round_pools.append(pool)
        self.running = width
        self.step_now = 0.0
        self.round_done_gen = 0.0
        self.widths.append(width)
        self.round_tokens.append(0.0)
        self.round_seconds.append(0.0)

    def finish(self, key: str | None, gen: float, scorer_tokens: float, score: float | None,
               round_seconds: float, confidence: float | None = None) -> tuple[float, float]:
        """The next finisher of the current round (finish order: generated tokens ascending): it
        finished at decode step ``gen``, where the round has taken ``round_seconds`` (the latency model's
        price of its width and ``gen`` decode steps). Returns the (tokens, seconds) accrued since the
        last event: every still-running sample generated until ``gen`` too."""
        if not self.running:
            raise ValueError("no sample is running")
        gen = float(gen)
        conf = None if confidence is None else float(confidence)
        self._record(key, float(scorer_tokens), float(score) if score is not None else 0.0, self.round_pools[-1], conf)
        self.running -= 1
        self.gen_sum += gen
        self.round_done_gen += gen
        self.step_now = gen
        tok = self.round_done_gen + self.running * gen
        d_tok, d_sec = tok - self.round_tokens[-1], float(round_seconds) - self.round_seconds[-1]
        self.round_tokens[-1], self.round_seconds[-1] = tok, float(round_seconds)
        self.tokens += d_tok
        self.seconds += d_sec
        return d_tok, d_sec

    def cancel(self) -> int:
        """Cancel the samples still running (they keep what they generated); returns how many."""
        n, self.running = self.running, 0
        return n

    def answer(self, selector: str) -> int:
        """Index (in draw order) of the drawn sample the selector picks (``confidence``: the
        confidence-weighted vote)."""
        if selector == CONFIDENCE_VOTE:
            self._need_confidence()
            return confidence_vote(self.keys, self.confs)
        return select(selector, self.keys, self.scores if self.has_scores else None)

    def _need_confidence(self) -> None:
        if not self.has_confidence:
            raise ValueError("the confidence vote needs every sample's mean token log-prob (mean_logprob), "
                             "and a sample came without one")

    def confidence_share(self) -> float:
        """The leading answer's share of the confidence of every finished sample (0 before any)."""
        self._need_confidence()
        if not self.conf_sum or self.conf_total <= 0.0:
            return 0.0
        return max(self.conf_sum.values()) / self.conf_total

    def stop_tokens(self, selector: str) -> float:
        """Extra tokens charged when answering with ``selector`` (the scorer's, for score selectors)."""
        return float(sum(self.scorer)) if selector in SCORE_SELECTORS else 0.0

    def top(self) -> tuple[str | None, int, int]:
        """(leading answer, its votes, the runner-up's votes); ties go to the earliest-counted answer."""
        best, v1, v2 = None, 0, 0
        for key, c in self.counts.items():
            if c > v1:
                best, v1, v2 = key, c, v1
            elif c > v2:
                v2 = c
        return best, v1, v2

    def pool_leaders(self) -> list[tuple[str | None, int]]:
        """Per pool its leading answer and its votes (None, 0 before an answer; ties: the earliest counted)."""
        out: list[tuple[str | None, int]] = []
        for pc in self.pool_counts:
            best, v1 = None, 0
            for key, c in pc.items():
                if c > v1:
                    best, v1 = key, c
            out.append((best, v1))
        return out

    def pools_agree(self, min_votes: int = 1) -> bool:
        """Whether every pool has an answer with at least ``min_votes`` votes and their leading answers
        are the same (False with one pool)."""
        leaders = self.pool_leaders()
        if len(leaders) < 2:
            return False
        first = leaders[0][0]
        return first is not None and all(k == first and v >= min_votes for k, v in leaders)

    def _pool_features(self, out: np.ndarray) -> None:
        """Write :func:`pool_features` (several pools) into ``out``."""
        leaders = self.pool_leaders()
        for p, (_, v1) in enumerate(leaders):
            n = self.pool_drawn[p]
            out[2 * p] = n / self.pool_sizes[p]
            out[2 * p + 1] = v1 / n if n else 0.0
        out[2 * len(leaders)] = float(self.pools_agree())

    def features(self, units: SeenUnits, out: np.ndarray) -> None:
        """Write the :data:`SEEN_FEATURES` into ``out`` (length 11), the :data:`FINISH_FEATURES` after them
        where ``out`` has room for them (the finish watch), and last, with several pools, :func:`pool_features`."""
        n_pools = len(self.pool_sizes)
        if n_pools > 1:
            n_extra = 2 * n_pools + 1
            self._pool_features(out[len(out) - n_extra :])
            out = out[: len(out) - n_extra]
        if len(out) > 11:
            w = self.widths[-1] if self.widths else 0
            out[11] = (w - self.running) / w if w else 0.0
            out[12] = self.running / self.pool_size
            out[13] = self.step_now / units.tokens_per_sample
            out[14] = (self.round_seconds[-1] if self.widths else 0.0) / units.cost_seconds
        n = len(self.keys)
        if n == 0:
            out[:11] = 0.0
            out[8] = self.tokens / units.cost_tokens
            out[9] = self.seconds / units.cost_seconds
            return
        best, v1, v2 = self.top()
        out[0] = n / self.pool_size
        out[1] = v1 / n
        out[2] = v2 / n
        out[3] = len(self.counts) / self.pool_size
        out[4] = self.n_none / n
        out[5] = self.score_sum[best] / v1 if best is not None else 0.0
        out[6] = self.max_score
        out[7] = self.gen_sum / n / units.tokens_per_sample
        out[8] = self.tokens / units.cost_tokens
        out[9] = self.seconds / units.cost_seconds
        out[10] = len(self.widths) / units.max_rounds


def step_mask(menu: EscalateMenu, state: SeenState, beams: list[bool]) -> np.ndarray:
    """Legal step actions given what was drawn and which beam configs the query has."""
    m = np.zeros(len(menu), dtype=bool)
    running = state.running
    for p, draws in enumerate(menu.pool_draw_index):
        left = state.left_in(p)
        for k, i in draws.items():
            m[i] = k <= left and not running  # a new round once the current one is over
    if menu.wait_index is not None:
        m[menu.wait_index] = running > 0
    if state.drawn:
        for s, i in menu.stop_index.items():
            m[i] = state.has_scores or s not in SCORE_SELECTORS
    for j, c in enumerate(menu.beam_configs):
        m[menu.beam_index[c]] = beams[j]
    return m


def new_state(menu: EscalateMenu) -> SeenState:
    """An empty :class:`SeenState` for the step menu's pools."""
    sizes = menu.pool_sizes
    return SeenState(sizes[0] if len(sizes) == 1 else list(sizes), menu.has_scores)


def fit_units(table: OutcomeTable, menu: EscalateMenu, train_rows: np.ndarray) -> SeenUnits:
    tok, sec = table.cost_scale(train_rows)
    gen = [
        float(p.gen_tokens.mean())
        for cfg in menu.pool_configs
        for qi in train_rows
        for p in table.pool_records(int(qi), cfg)
    ]
    per_sample = float(np.mean(gen)) if gen else 1.0
    return SeenUnits(max(per_sample, 1e-6), max(tok, 1e-9), max(sec, 1e-9), float(menu.total_size))
