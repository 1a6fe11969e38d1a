"""An episode's penalties (λ_T, λ_L): how the envs draw them, take them from ``reset`` options, and
how they set the episode's reward divisor (``reward_norm="context"``).

In ``penalty_mode="sampled"`` each λ is 0 with probability ``p_zero`` and else log-uniform in its
range; without latency in the cache λ_L is never drawn (always 0). Their encoding in the observation
is :meth:`policies.observation.ObsEncoder.penalty_pair`.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

import numpy as np

from env.outcomes import validate_lambda
from rollouts.errors import ConfigError

Lambdas = tuple[float, float]  # (λ_T, λ_L)


class PenaltySettings(Protocol):
    """What this module reads of the env's config (:class:`env.allocate_env.EnvConfig`)."""

    lambda_tokens: float
    lambda_seconds: float
    lambda_tokens_range: Any  # [lo, hi], resolved (not "auto")
    lambda_seconds_range: Any
    p_zero: float
    reward_norm: str
    reward_norm_floor: float


class PenaltySampler:
    """Draws episodes' (λ_T, λ_L) with the env's generator; ``sample=False`` gives the fixed pair."""

    def __init__(self, cfg: PenaltySettings, sample: bool, latency_available: bool):
        self.sample = sample
        self.fixed: Lambdas = (cfg.lambda_tokens, cfg.lambda_seconds)
        self.p_zero = cfg.p_zero
        self.latency_available = latency_available
        t_lo, t_hi = cfg.lambda_tokens_range if sample else (1.0, 1.0)
        s_lo, s_hi = cfg.lambda_seconds_range if sample else (1.0, 1.0)
        self._log_ranges = (math.log(t_lo), math.log(t_hi), math.log(s_lo), math.log(s_hi))

    def draw(self, rng: np.random.Generator) -> Lambdas:
        """One pair; four uniforms per draw in sampled mode (so every episode uses the same amount of
        the generator), none in fixed mode."""
        if not self.sample:
            return self.fixed
        r = rng.random(4)
        lt0, lt1, ls0, ls1 = self._log_ranges
        p0 = self.p_zero
        lt = 0.0 if r[0] < p0 else math.exp(lt0 + (lt1 - lt0) * r[1])
        ls = 0.0 if r[2] < p0 or not self.latency_available else math.exp(ls0 + (ls1 - ls0) * r[3])
        return (lt, ls)

    def with_options(self, lam: Lambdas, options: dict[str, Any], latency_note: str | None) -> Lambdas:
        """``lam`` with ``reset``'s ``lambda_tokens`` / ``lambda_seconds`` options put in (validated);
        a λ_L > 0 without latency in the cache is a ``ConfigError`` (``latency_note`` says why)."""
        if "lambda_tokens" in options or "lambda_seconds" in options:
            lam = (
                validate_lambda("lambda_tokens", options.get("lambda_tokens", lam[0])),
                validate_lambda("lambda_seconds", options.get("lambda_seconds", lam[1])),
            )
        if lam[1] > 0 and not self.latency_available:
            raise ConfigError(f"lambda_seconds {lam[1]} > 0 but {latency_note}")
        return lam


def reward_divisor(cfg: PenaltySettings, lam: Lambdas, cost_scale: tuple[float, float]) -> float:
    """What an episode's rewards are divided by: ``reward_norm_floor + λ_T·C_T + λ_L·C_L`` with
    ``reward_norm="context"`` (C: the train split's cost scale), else 1."""
    if cfg.reward_norm != "context":
        return 1.0
    return cfg.reward_norm_floor + lam[0] * cost_scale[0] + lam[1] * cost_scale[1]
