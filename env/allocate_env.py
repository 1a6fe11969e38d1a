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

Observation (float32 Box)::

    [ (features - mean) / std ..., (log1p(prompt_tokens) - mean) / std,          # D + 1 entries (*)
      (log10(λ_T + eps_T) - center_T) / scale_T, (log10(λ_L + eps_L) - center_L) / scale_L ]   # sampled mode only

(*) with ``feature_pca: k`` the D feature entries become k principal components (see ``ObsEncoder``).
``mean``/``std`` (and the PCA axes) come from the TRAIN split only (``normalization`` is stored with the run and the
export). The penalty encoding maps λ = 0 to -1 and the top of the sampling range to +1: ``eps`` is a
tenth of the range's lower end, ``center``/``scale`` the midpoint/half-width of
``[log10(eps), log10(hi + eps)]``.

Reward scale: correctness is in [0, 1] and the λ ranges are chosen from the cache's cost scale
(``auto``: the largest action's mean tokens / seconds on the train split cost 1 unit at λ_max),
so rewards are O(1) and ``reward_scale`` defaults to 1. ``reward_norm="context"`` further divides
each episode's reward by ``reward_norm_floor + λ_T·C_T + λ_L·C_L`` (C: that same train cost scale): a positive factor
fixed by the observation, so every (query, λ) keeps its best action, while episodes with large λ no
longer dominate PPO's normalised advantages over the small accuracy differences at small λ.

Splits are deterministic by hashing ``split_seed:query_id`` (see :func:`make_splits`).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from env.outcomes import OutcomeTable, get_table, validate_lambda
from rollouts.config import config_from_dict
from rollouts.errors import ConfigError

SPLITS = ("train", "val", "test")
OBS_BOUND = 1e6  # the Box bound; standardised features are clipped to it (never reached in practice)


# ----------------------------------------------------------------------------------------------
# Splits


def split_of(query_id: str, seed: int, fractions: tuple[float, float, float]) -> str:
    """The split of one query: a hash of ``f"{seed}:{query_id}"`` mapped to [0, 1) and bucketed."""
    h = hashlib.sha256(f"{seed}:{query_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def make_splits(query_ids: list[str], seed: int = 0, fractions=(0.7, 0.15, 0.15)) -> dict[str, Any]:
    """Deterministic train/val/test split by query id (independent of order and of other ids)."""
    fr = tuple(float(x) for x in fractions)
    if len(fr) != 3 or any(x < 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"split_fractions must be three numbers >= 0 summing to 1, got {list(fractions)}")
    out: dict[str, Any] = {"seed": int(seed), "fractions": list(fr), "method": "sha256(seed:query_id)"}
    for s in SPLITS:
        out[s] = []
    for q in query_ids:
        out[split_of(q, seed, fr)].append(q)  # type: ignore[arg-type]
    return out


# ----------------------------------------------------------------------------------------------
# Config


@dataclass
class EnvConfig:
    """Everything that defines the env (stored in the run's config.yml under ``env``)."""

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

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "env") -> EnvConfig:
        return config_from_dict(cls, d, f"{where}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def validate(self) -> None:
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
# Observation encoding (shared by the env, the policies and the export)


@dataclass
class ObsEncoder:
    """Builds observations from raw features / prompt tokens / penalties.

    ``z = clip((x - mean) / std)`` on ``x = [features, log1p(prompt_tokens)]``; with ``feature_pca = k``
    the feature part is then projected on the top-k principal axes of the TRAIN split
    (``z_f @ pca.T / pca_scale``, unit variance per component), which keeps a small policy from
    memorising hundreds of hidden-state dimensions on a few hundred queries.
    """

    mean: np.ndarray  # (D + 1,)
    std: np.ndarray  # (D + 1,)
    sample_penalties: bool
    eps: tuple[float, float] = (1e-6, 1e-4)
    center: tuple[float, float] = (0.0, 0.0)
    scale: tuple[float, float] = (1.0, 1.0)
    pca: np.ndarray | None = None  # (k, D)
    pca_scale: np.ndarray | None = None  # (k,)

    @classmethod
    def fit(cls, table: OutcomeTable, train_rows: np.ndarray, cfg: EnvConfig) -> ObsEncoder:
        if len(train_rows) == 0:
            raise ConfigError("the train split is empty; use a larger cache or other split_fractions")
        base = _base_features(table.features[train_rows], table.prompt_tokens[train_rows])
        mean = base.mean(axis=0)
        std = base.std(axis=0)
        std = np.where(std > 1e-8, std, 1.0)
        enc = cls(mean=mean, std=std, sample_penalties=cfg.penalty_mode == "sampled")
        if cfg.feature_pca:
            z = ((base - mean) / std)[:, :-1]
            k = min(int(cfg.feature_pca), z.shape[0], z.shape[1])
            _, sv, vt = np.linalg.svd(z, full_matrices=False)
            enc.pca = vt[:k]
            enc.pca_scale = np.maximum(sv[:k] / math.sqrt(max(len(z), 1)), 1e-8)
        if enc.sample_penalties:
            eps, center, scale = [], [], []
            for rng in (cfg.lambda_tokens_range, cfg.lambda_seconds_range):
                lo, hi = float(rng[0]), float(rng[1])
                e = lo / 10.0
                a, b = math.log10(e), math.log10(hi + e)
                eps.append(e)
                center.append((a + b) / 2)
                scale.append((b - a) / 2)
            enc.eps, enc.center, enc.scale = tuple(eps), tuple(center), tuple(scale)  # type: ignore[assignment]
        return enc

    @property
    def base_dim(self) -> int:
        return (len(self.pca) if self.pca is not None else len(self.mean) - 1) + 1

    @property
    def dim(self) -> int:
        return self.base_dim + (2 if self.sample_penalties else 0)

    def encode_base(self, features: np.ndarray, prompt_tokens: np.ndarray) -> np.ndarray:
        z = np.clip((_base_features(features, prompt_tokens) - self.mean) / self.std, -OBS_BOUND, OBS_BOUND)
        if self.pca is not None:
            f = np.clip(z[:, :-1] @ self.pca.T / self.pca_scale, -OBS_BOUND, OBS_BOUND)
            z = np.concatenate([f, z[:, -1:]], axis=1)
        return z.astype(np.float32)

    def encode_penalties(self, lam_t: np.ndarray | float, lam_l: np.ndarray | float) -> np.ndarray:
        t = (np.log10(np.asarray(lam_t, dtype=np.float64) + self.eps[0]) - self.center[0]) / self.scale[0]
        s = (np.log10(np.asarray(lam_l, dtype=np.float64) + self.eps[1]) - self.center[1]) / self.scale[1]
        return np.stack([t, s], axis=-1).astype(np.float32)

    def encode(self, features, prompt_tokens, lam_t=0.0, lam_l=0.0) -> np.ndarray:
        base = self.encode_base(np.atleast_2d(features), np.atleast_1d(prompt_tokens))
        if not self.sample_penalties:
            return base
        pen = self.encode_penalties(np.broadcast_to(lam_t, len(base)), np.broadcast_to(lam_l, len(base)))
        return np.concatenate([base, pen], axis=1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature_mean": [float(x) for x in self.mean[:-1]],
            "feature_std": [float(x) for x in self.std[:-1]],
            "prompt_tokens_mean": float(self.mean[-1]),
            "prompt_tokens_std": float(self.std[-1]),
            "sample_penalties": self.sample_penalties,
            "penalty_eps": list(self.eps),
            "penalty_center": list(self.center),
            "penalty_scale": list(self.scale),
            "pca": None if self.pca is None else [[float(x) for x in row] for row in self.pca],
            "pca_scale": None if self.pca_scale is None else [float(x) for x in self.pca_scale],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObsEncoder:
        pca = d.get("pca")
        return cls(
            mean=np.array(list(d["feature_mean"]) + [d["prompt_tokens_mean"]], dtype=np.float64),
            std=np.array(list(d["feature_std"]) + [d["prompt_tokens_std"]], dtype=np.float64),
            sample_penalties=bool(d["sample_penalties"]),
            eps=tuple(d["penalty_eps"]),  # type: ignore[arg-type]
            center=tuple(d["penalty_center"]),  # type: ignore[arg-type]
            scale=tuple(d["penalty_scale"]),  # type: ignore[arg-type]
            pca=None if pca is None else np.array(pca, dtype=np.float64),
            pca_scale=None if pca is None else np.array(d["pca_scale"], dtype=np.float64),
        )


def _base_features(features: np.ndarray, prompt_tokens: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray(features, dtype=np.float64),
            np.log1p(np.asarray(prompt_tokens, dtype=np.float64))[:, None],
        ],
        axis=1,
    )


# ----------------------------------------------------------------------------------------------
# The env


class AllocateEnv(gym.Env):
    """See the module docstring. Build with a cache path or a prebuilt ``table``.

    ``split``: ``"train"``, ``"val"``, ``"test"``, ``"all"`` or an explicit list of query ids.
    ``splits``: a stored split (``make_splits`` output); default: computed from ``split_seed``.
    ``encoder``: a stored ``ObsEncoder`` (or its dict); default: fitted on the train split.
    ``cycle``: go through the split's queries (and, with ``eval_lambdas``, every (query, λ) pair) in
    order instead of drawing: a deterministic evaluation env.
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
        if isinstance(config, EnvConfig):
            cfg = self.config_cls.from_dict({**config.to_dict(), **overrides})
        else:
            cfg = self.config_cls.from_dict({**(config or {}), **overrides})
        if table is None:
            if cache is None:
                raise ConfigError("AllocateEnv needs a cache path or a table")
            table = get_table(
                cache, cfg.mc_subsets, cfg.outcome_seed, cfg.latency_load, cfg.latency_load_models
            )
        self.table = table
        if not table.latency_available:
            # no seconds in the cache (e.g. an import without timings): token costs only, said once
            if cfg.lambda_seconds > 0:
                raise ConfigError(f"env.lambda_seconds is {cfg.lambda_seconds} but {table.latency_note}")
            if not getattr(table, "_latency_warned", False):
                warnings.warn(table.latency_note, stacklevel=2)
                table._latency_warned = True  # type: ignore[attr-defined]
        self.splits = (
            splits
            if splits is not None
            else make_splits(table.query_ids, cfg.split_seed, cfg.split_fractions)
        )
        train_ids = [q for q in self.splits["train"] if q in table.qindex]
        train_rows = table.indices(train_ids)
        cfg.resolve_ranges(table, train_rows)
        self.config = cfg
        self._cost_scale = table.cost_scale(train_rows)
        if split == "all":
            ids = list(table.query_ids)
        elif isinstance(split, str):
            if split not in SPLITS:
                raise ConfigError(
                    f"split must be one of {SPLITS + ('all',)} or a list of query ids, got {split!r}"
                )
            ids = [q for q in self.splits[split] if q in table.qindex]
        else:
            ids = list(split)
        if not ids:
            raise ConfigError(f"split {split!r} has no queries in {table.cache_path}")
        self.rows = table.indices(ids)
        if encoder is None:
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
        self._cycle_pos = 0
        # episode state
        self._i = 0  # position in self.rows
        self._lam = (cfg.lambda_tokens, cfg.lambda_seconds)
        self._obs = np.zeros(encoder.dim, dtype=np.float32)
        self._done = True
        t_lo, t_hi = cfg.lambda_tokens_range if encoder.sample_penalties else (1.0, 1.0)
        s_lo, s_hi = cfg.lambda_seconds_range if encoder.sample_penalties else (1.0, 1.0)
        self._log_ranges = (math.log(t_lo), math.log(t_hi), math.log(s_lo), math.log(s_hi))
        self._pen_obs = np.zeros(2, dtype=np.float32)

    # -- gymnasium API -------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        options = options or {}
        if "query_id" in options:
            qid = options["query_id"]
            hits = np.nonzero(self.rows == self.table.qindex.get(qid, -1))[0]
            if len(hits) == 0:
                raise ConfigError(f"query_id {qid!r} is not in this env's split")
            self._i = int(hits[0])
            lam = self._draw_lambdas()
        elif self.cycle:
            n_q = len(self.rows)
            n_l = max(len(self.eval_lambdas), 1)
            pos = self._cycle_pos % (n_q * n_l)
            self._cycle_pos += 1
            self._i = pos % n_q
            lam = self.eval_lambdas[pos // n_q] if self.eval_lambdas else self._draw_lambdas()
        else:
            self._i = int(self.np_random.integers(len(self.rows)))
            lam = self._draw_lambdas()
        if "lambda_tokens" in options or "lambda_seconds" in options:
            lam = (
                validate_lambda("lambda_tokens", options.get("lambda_tokens", lam[0])),
                validate_lambda("lambda_seconds", options.get("lambda_seconds", lam[1])),
            )
        if lam[1] > 0 and not self.table.latency_available:
            raise ConfigError(f"lambda_seconds {lam[1]} > 0 but {self.table.latency_note}")
        self._lam = lam
        base = self._base_obs[self._i]
        if self.config.obs_noise > 0 and not self.cycle:
            noise = self.np_random.normal(0.0, self.config.obs_noise, size=base.shape)
            base = (base + noise).astype(np.float32)
        if self.encoder.sample_penalties:
            enc = self.encoder
            self._pen_obs[0] = (math.log10(lam[0] + enc.eps[0]) - enc.center[0]) / enc.scale[0]
            self._pen_obs[1] = (math.log10(lam[1] + enc.eps[1]) - enc.center[1]) / enc.scale[1]
            self._obs = np.concatenate([base, self._pen_obs])
        else:
            self._obs = base.copy()
        self._done = False
        return self._obs.copy(), {"query_id": self.table.query_ids[self.rows[self._i]]}

    def _draw_lambdas(self) -> tuple[float, float]:
        if not self.encoder.sample_penalties:
            return (self.config.lambda_tokens, self.config.lambda_seconds)
        r = self.np_random.random(4)
        lt0, lt1, ls0, ls1 = self._log_ranges
        p0 = self.config.p_zero
        lt = 0.0 if r[0] < p0 else math.exp(lt0 + (lt1 - lt0) * r[1])
        ls = 0.0 if r[2] < p0 or not self.table.latency_available else math.exp(ls0 + (ls1 - ls0) * r[3])
        return (lt, ls)

    def step(self, action):
        if self._done:
            raise ConfigError("step() called on a finished episode; call reset() first")
        a = int(action)
        qi = int(self.rows[self._i])
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
            "strategy": t.action_ids[a],
            "action": a,
            "action_name": t.action_names[a],
            "query_id": t.query_ids[qi],
            "lambda_tokens": lt,
            "lambda_seconds": ls,
        }
        reward = utility * self.config.reward_scale
        if self.config.reward_norm == "context":
            reward /= self.config.reward_norm_floor + lt * self._cost_scale[0] + ls * self._cost_scale[1]
        return self._obs.copy(), reward, True, False, info

    def action_masks(self) -> np.ndarray:
        return self.table.mask[self.rows[self._i]].copy()

    # -- helpers -------------------------------------------------------------------------------
    @property
    def action_ids(self) -> list[str]:
        return self.table.action_ids

    @property
    def n_episodes_per_cycle(self) -> int:
        return len(self.rows) * max(len(self.eval_lambdas), 1)
