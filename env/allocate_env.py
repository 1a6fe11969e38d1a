"""The allocation environment: one query per episode, one action (a strategy/budget), one reward.

It is a contextual bandit written as a one-step gymnasium env:

- ``reset`` draws a query of the env's split with ``self.np_random`` (or takes
  ``options={"query_id": ...}``) and, in ``penalty_mode="sampled"``, the penalties (λ_T, λ_L)
  (``options`` may also fix ``lambda_tokens`` / ``lambda_seconds``);
- ``step(action)`` returns ``terminated=True`` (never truncated) and reward
  ``reward_scale * (correct - λ_T * tokens - λ_L * seconds)``. ``correct`` is the table's expected
  correctness for that budget (``outcome="expected"``, the default: lower variance, the same
  optimum) or a sampled outcome (``outcome="sampled"``: a seed record and a subset of N samples drawn
  with ``self.np_random``). Masked actions are never legal; stepping one raises ``ConfigError``.
- without latency in the cache (``OutcomeTable.latency_available`` false) λ_L is fixed at 0: it is
  never drawn, a λ_L > 0 is a ``ConfigError``, and the env warns once;
- ``info``: ``is_success`` (bool, correctness >= 0.5), ``correct`` (float), ``tokens``,
  ``seconds``, ``utility`` (unscaled reward), ``strategy`` (the action id), ``action_name``,
  ``query_id``, ``lambda_tokens``, ``lambda_seconds``.

Observation (float32 Box): the query's standardised features and prompt length, then, in sampled
mode, the encoded (λ_T, λ_L): :class:`policies.observation.ObsEncoder` (fitted on the TRAIN split
only; stored with the run and the export) has the layout.

Reward scale: correctness is in [0, 1] and the λ ranges are chosen from the cache's cost scale
(``auto``: the largest action's mean tokens / seconds on the train split cost 1 unit at λ_max),
so rewards are O(1) and ``reward_scale`` defaults to 1. ``reward_norm="context"`` further divides
each episode's reward by ``reward_norm_floor + λ_T·C_T + λ_L·C_L`` (C: that same train cost scale): a positive factor
fixed by the observation, so every (query, λ) keeps its best action, while episodes with large λ no
longer dominate PPO's normalised advantages over the small accuracy differences at small λ.

Splits are deterministic by hashing ``split_seed:query_id`` (see :mod:`env.splits`); λ sampling is
:mod:`env.penalties`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from env.menu import DEFAULT_RACES, parse_race_action
from env.outcomes import OutcomeTable, get_table, validate_lambda
from env.penalties import Lambdas, PenaltySampler, reward_divisor
from env.splits import SPLITS, make_splits, split_rows
from policies.observation import OBS_BOUND, ObsEncoder
from rollouts.config import config_from_dict
from rollouts.errors import ConfigError

# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class EnvConfig:
    """Everything that defines the env (stored in the run's config.yml under ``env``)."""

    # cache: outcomes from the finished cache; live: from a live engine through the cache (train.py's live:)
    source: str = "cache"
    outcome: str = "expected"  # expected | sampled
    penalty_mode: str = "sampled"  # sampled | fixed
    lambda_tokens: float = 0.0  # fixed mode
    lambda_seconds: float = 0.0  # fixed mode
    # sampled mode: log-uniform in [lo, hi], or 0 with probability p_zero (each λ independently).
    # "auto" = [0.003, 3] x λ_max with λ_max = 1 / (largest action's mean cost on the train split).
    lambda_tokens_range: Any = "auto"
    lambda_seconds_range: Any = "auto"
    p_zero: float = 0.25
    reward_scale: float = 1.0
    # "context": divide each episode's reward by floor + λ_T·C_T + λ_L·C_L (C = train cost scale), which
    # leaves every (query, λ) optimum unchanged but keeps high-λ episodes from drowning low-λ ones
    reward_norm: str = "context"  # none | context
    reward_norm_floor: float = 1.0
    mc_subsets: int = 128
    outcome_seed: int = 0
    # price seconds with k queries in flight (rollouts/latency_load.py; None: the query alone, as cached)
    latency_load: int | None = None
    latency_load_models: str | None = None  # a bench/load_latency.py JSON (None: the shipped one)
    feature_pca: int | None = 32  # project features on the top-k train principal axes (None: all)
    obs_noise: float = 0.0  # std of Gaussian noise added to the (standardised) query part of training obs
    split_seed: int = 0
    split_fractions: list[float] = field(default_factory=lambda: [0.7, 0.15, 0.15])
    # races on the menu: "<selector>@<N>:agree<K>" (launch N, stop when K finished answers agree, cancel
    # the rest) or "...:first<M>" (stop at the M-th finisher); [] for budgets and beams only
    races: list[str] = field(default_factory=lambda: list(DEFAULT_RACES))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "env") -> EnvConfig:
        return config_from_dict(cls, d, f"{where}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
        if self.source not in ("cache", "live"):
            raise ConfigError(f"env.source must be 'cache' or 'live', got {self.source!r}")
        if self.outcome not in ("expected", "sampled"):
            raise ConfigError(f"env.outcome must be 'expected' or 'sampled', got {self.outcome!r}")
        if self.penalty_mode not in ("sampled", "fixed"):
            raise ConfigError(f"env.penalty_mode must be 'sampled' or 'fixed', got {self.penalty_mode!r}")
        self.lambda_tokens = validate_lambda("env.lambda_tokens", self.lambda_tokens)
        self.lambda_seconds = validate_lambda("env.lambda_seconds", self.lambda_seconds)
        for name in ("lambda_tokens_range", "lambda_seconds_range"):
            rng = getattr(self, name)
            if rng == "auto":
                continue
            if not isinstance(rng, (list, tuple)) or len(rng) != 2:
                raise ConfigError(f"env.{name} must be 'auto' or [lo, hi], got {rng!r}")
            lo = validate_lambda(f"env.{name}[0]", rng[0])
            hi = validate_lambda(f"env.{name}[1]", rng[1])
            if not 0 < lo < hi:
                raise ConfigError(f"env.{name} must satisfy 0 < lo < hi, got {list(rng)}")
            setattr(self, name, [lo, hi])
        if not isinstance(self.races, (list, tuple)):
            raise ConfigError(f"env.races must be a list like [best_score@8:agree3], got {self.races!r}")
        for text in self.races:
            parse_race_action(text)
        if not (isinstance(self.p_zero, (int, float)) and 0 <= self.p_zero <= 1):
            raise ConfigError(f"env.p_zero must be in [0, 1], got {self.p_zero!r}")
        if not (
            isinstance(self.reward_scale, (int, float))
            and math.isfinite(self.reward_scale)
            and self.reward_scale > 0
        ):
            raise ConfigError(f"env.reward_scale must be a finite number > 0, got {self.reward_scale!r}")
        if self.feature_pca is not None and (
            not isinstance(self.feature_pca, int)
            or isinstance(self.feature_pca, bool)
            or self.feature_pca < 1
        ):
            raise ConfigError(f"env.feature_pca must be null or an integer >= 1, got {self.feature_pca!r}")
        if self.reward_norm not in ("none", "context"):
            raise ConfigError(f"env.reward_norm must be 'none' or 'context', got {self.reward_norm!r}")
        if not (
            isinstance(self.obs_noise, (int, float)) and math.isfinite(self.obs_noise) and self.obs_noise >= 0
        ):
            raise ConfigError(f"env.obs_noise must be a finite number >= 0, got {self.obs_noise!r}")
        if not isinstance(self.mc_subsets, int) or self.mc_subsets < 1:
            raise ConfigError(f"env.mc_subsets must be an integer >= 1, got {self.mc_subsets!r}")
        if self.latency_load is not None and (
            not isinstance(self.latency_load, int) or isinstance(self.latency_load, bool) or self.latency_load < 1
        ):
            raise ConfigError(f"env.latency_load must be null or an integer >= 1, got {self.latency_load!r}")
        make_splits([], self.split_seed, self.split_fractions)  # validates fractions

    def resolve_ranges(self, table: OutcomeTable, train_rows: np.ndarray) -> None:
        """Replace ``auto`` ranges by numbers from the train split's cost scale (in place)."""
        tok, sec = table.cost_scale(train_rows)
        for name, scale in (("lambda_tokens_range", tok), ("lambda_seconds_range", sec)):
            if getattr(self, name) == "auto":
                lam_max = 1.0 / max(scale, 1e-12)
                setattr(self, name, [float(f"{0.003 * lam_max:.6g}"), float(f"{3.0 * lam_max:.6g}")])


# ----------------------------------------------------------------------------------------------
# The env


class AllocateEnv(gym.Env):
    """See the module docstring. Build with a cache path or a prebuilt ``table``.

    ``split``: ``"train"``, ``"val"``, ``"test"``, ``"all"`` or an explicit list of query ids.
    ``splits``: a stored split (``make_splits`` output); default: computed from ``split_seed``.
    ``encoder``: a stored ``ObsEncoder`` (or its dict); default: fitted on the train split.
    ``cycle``: go through the split's queries (and, with ``eval_lambdas``, every (query, λ) pair) in
    order instead of drawing: a deterministic evaluation env.

    Public state besides the gymnasium API: ``table``, ``config``, ``splits``, ``rows`` (the split's
    table rows), ``encoder``, ``cost_scale`` (the train split's (C_T, C_L)), :attr:`query_row` and
    :meth:`draw_lambdas`.
    """

    metadata = {"render_modes": []}
    config_cls: type[EnvConfig] = EnvConfig  # subclasses with more settings (env/escalate_env.py) swap it

    def __init__(
        self,
        cache: str | Path | None = None,
        *,
        table: OutcomeTable | None = None,
        config: EnvConfig | dict[str, Any] | None = None,
        split: str | list[str] = "train",
        splits: dict[str, Any] | None = None,
        encoder: ObsEncoder | dict[str, Any] | None = None,
        cycle: bool = False,
        eval_lambdas: list[tuple[float, float]] | None = None,
        **overrides: Any,
    ):
        super().__init__()
        base = config.to_dict() if isinstance(config, EnvConfig) else (config or {})
        cfg = self.config_cls.from_dict({**base, **overrides})
        self.table = table = _open_table(cache, table, cfg)
        self.splits = (
            splits
            if splits is not None
            else make_splits(table.query_ids, cfg.split_seed, cfg.split_fractions)
        )
        train_rows = split_rows(table, self.splits, "train")
        cfg.resolve_ranges(table, train_rows)
        self.config = cfg
        self.cost_scale = table.cost_scale(train_rows)
        self.rows = self._rows_of(split)
        if encoder is None:
            if len(train_rows) == 0:
                raise ConfigError("the train split is empty; use a larger cache or other split_fractions")
            encoder = ObsEncoder.fit(table, train_rows, cfg)
        elif isinstance(encoder, dict):
            encoder = ObsEncoder.from_dict(encoder)
        self.encoder = encoder
        self._base_obs = encoder.encode_base(table.features[self.rows], table.prompt_tokens[self.rows])
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(encoder.dim,), dtype=np.float32)
        self.action_space = spaces.Discrete(table.n_actions)
        self.cycle = cycle
        self.eval_lambdas = [
            (validate_lambda("lambda_tokens", a), validate_lambda("lambda_seconds", b))
            for a, b in (eval_lambdas or [])
        ]
        if self.eval_lambdas and not encoder.sample_penalties:
            raise ConfigError("eval_lambdas need an env with penalty_mode='sampled' (the policy must see λ)")
        self.penalties = PenaltySampler(cfg, encoder.sample_penalties, table.latency_available)
        self._cycle_pos = 0
        # episode state
        self._i = 0  # position in self.rows
        self._lam: Lambdas = (cfg.lambda_tokens, cfg.lambda_seconds)
        self._norm = 1.0  # the episode's reward divisor
        self._obs = np.zeros(encoder.dim, dtype=np.float32)
        self._done = True
        self._pen_obs = np.zeros(2, dtype=np.float32)

    def _rows_of(self, split: str | list[str]) -> np.ndarray:
        """The table rows the env draws from (constructor's ``split``)."""
        table = self.table
        if split == "all":
            rows = table.indices(list(table.query_ids))
        elif isinstance(split, str):
            if split not in SPLITS:
                raise ConfigError(
                    f"split must be one of {SPLITS + ('all',)} or a list of query ids, got {split!r}"
                )
            rows = split_rows(table, self.splits, split)
        else:
            rows = table.indices(list(split))
        if len(rows) == 0:
            raise ConfigError(f"split {split!r} has no queries in {table.cache_path}")
        return rows

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        lam = self._pick_episode(options)
        lam = self.penalties.with_options(lam, options, self.table.latency_note)
        self._lam = lam
        self._norm = reward_divisor(self.config, lam, self.cost_scale)
        self._obs = self._observe(self._base_obs[self._i], lam)
        self._done = False
        return self._obs.copy(), {"query_id": self.table.query_ids[self.rows[self._i]]}

    def _pick_episode(self, options: dict[str, Any]) -> Lambdas:
        """Set the episode's query (``self._i``) and return its drawn (or cycled) penalties."""
        if "query_id" in options:
            qid = options["query_id"]
            hits = np.nonzero(self.rows == self.table.qindex.get(qid, -1))[0]
            if len(hits) == 0:
                raise ConfigError(f"query_id {qid!r} is not in this env's split")
            self._i = int(hits[0])
            return self.draw_lambdas()
        if self.cycle:
            n_q = len(self.rows)
            n_l = max(len(self.eval_lambdas), 1)
            pos = self._cycle_pos % (n_q * n_l)
            self._cycle_pos += 1
            self._i = pos % n_q
            return self.eval_lambdas[pos // n_q] if self.eval_lambdas else self.draw_lambdas()
        self._i = int(self.np_random.integers(len(self.rows)))
        return self.draw_lambdas()

    def _observe(self, base: np.ndarray, lam: Lambdas) -> np.ndarray:
        """The episode's observation: the query part (noised while training) and the encoded λ."""
        if self.config.obs_noise > 0 and not self.cycle:
            noise = self.np_random.normal(0.0, self.config.obs_noise, size=base.shape)
            base = (base + noise).astype(np.float32)
        if not self.encoder.sample_penalties:
            return base.copy()
        self._pen_obs[:] = self.encoder.penalty_pair(lam[0], lam[1])
        return np.concatenate([base, self._pen_obs])

    def draw_lambdas(self) -> Lambdas:
        """A (λ_T, λ_L) as ``reset`` draws it, from the env's generator (the fixed pair in fixed mode)."""
        return self.penalties.draw(self.np_random)

    def step(self, action):
        if self._done:
            raise ConfigError("step() called on a finished episode; call reset() first")
        a = int(action)
        qi = int(self.rows[self._i])  # self.query_row, without the property call on the hot path
        t = self.table
        if not (0 <= a < t.n_actions) or not t.mask[qi, a]:
            name = t.action_ids[a] if 0 <= a < t.n_actions else a
            raise ConfigError(
                f"action {name!r} is not available for query {t.query_ids[qi]!r} (see action_masks())"
            )
        if self.config.outcome == "expected":
            correct, tokens, seconds = t.correct[qi, a], t.tokens[qi, a], t.seconds[qi, a]
        else:
            correct, tokens, seconds = t.sample(qi, a, self.np_random)
        lt, ls = self._lam
        utility = float(correct - lt * tokens - ls * seconds)
        self._done = True
        info = {
            "is_success": bool(correct >= 0.5),
            "correct": float(correct),
            "tokens": float(tokens),
            "seconds": float(seconds),
            "utility": utility,
            "action_id": t.action_ids[a],
            "action": a,
            "action_name": t.action_names[a],
            "query_id": t.query_ids[qi],
            "lambda_tokens": lt,
            "lambda_seconds": ls,
        }
        reward = utility * self.config.reward_scale / self._norm
        return self._obs.copy(), reward, True, False, info

    def action_masks(self) -> np.ndarray:
        return self.table.mask[self.rows[self._i]].copy()

    # -- helpers -------------------------------------------------------------------------------
    @property
    def query_row(self) -> int:
        """The table row of the current (or last) episode's query."""
        return int(self.rows[self._i])

    @property
    def action_ids(self) -> list[str]:
        return self.table.action_ids

    @property
    def n_episodes_per_cycle(self) -> int:
        return len(self.rows) * max(len(self.eval_lambdas), 1)


def stored_env_dict(d: dict[str, Any] | None) -> dict[str, Any]:
    """A run's stored ``env`` settings (config.yml, a model's meta) as this version reads them: a run
    written before races existed stores no ``races``, and its menu had none; a sequential run written
    before ``pools`` existed drew from its cache's largest pool only."""
    d = dict(d or {})
    d.setdefault("races", [])
    if d.get("kind") == "escalate":
        d.setdefault("pools", "primary")
    d.setdefault("source", "cache")
    return d


def _open_table(cache: str | Path | None, table: OutcomeTable | None, cfg: EnvConfig) -> OutcomeTable:
    """The env's outcome table: ``table`` or one built from ``cache``; a cache without seconds is
    said once per table (token costs only) and refuses a λ_L > 0."""
    if table is None:
        if cache is None:
            raise ConfigError("AllocateEnv needs a cache path or a table")
        table = get_table(
            cache, cfg.mc_subsets, cfg.outcome_seed, cfg.latency_load, cfg.latency_load_models, cfg.races
        )
    if not table.latency_available:
        if cfg.lambda_seconds > 0:
            raise ConfigError(f"env.lambda_seconds is {cfg.lambda_seconds} but {table.latency_note}")
        if not getattr(table, "_latency_warned", False):
            warnings.warn(str(table.latency_note), stacklevel=3)
            table._latency_warned = True  # type: ignore[attr-defined]
    return table
