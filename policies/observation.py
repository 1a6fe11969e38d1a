"""The observation encoder: raw query features, prompt length and penalties -> the policy's input.

The one home of the encoding shared by ``ttc/Allocate-v0`` and ``ttc/Escalate-v0`` (their observation's
query part), PPO's batch observations (:class:`policies.ppo.PPOPolicy`), the lockstep simulator, the ONNX
export (``policy.json``'s ``observation``) and the SB3-free loader (:mod:`policies.onnx_policy`).
Numpy and the standard library only, so the loader imports it without gymnasium, torch or ``env``.

Layout (float32)::

    [ (features - mean) / std ..., (log1p(prompt_tokens) - mean) / std,          # D + 1 entries (*)
      (log10(λ_T + eps_T) - center_T) / scale_T, (log10(λ_L + eps_L) - center_L) / scale_L ]   # sampled mode only

(*) with ``feature_pca: k`` the D feature entries become k principal components. ``mean``/``std`` (and the
PCA axes) come from the TRAIN split only. The penalty encoding maps λ = 0 to -1 and the top of the
sampling range to +1: ``eps`` is a tenth of the range's lower end, ``center``/``scale`` the
midpoint/half-width of ``[log10(eps), log10(hi + eps)]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:  # annotations only: importing env here would pull gymnasium into the ONNX loader
    from env.outcomes import OutcomeTable

OBS_BOUND = 1e6  # the Box bound; standardised features are clipped to it (never reached in practice)


class EncoderSettings(Protocol):
    """What :meth:`ObsEncoder.fit` reads of the env's config (:class:`env.allocate_env.EnvConfig`)."""

    penalty_mode: str
    feature_pca: int | None
    lambda_tokens_range: Any  # [lo, hi], resolved (not "auto")
    lambda_seconds_range: Any


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
    clip: float = OBS_BOUND  # policy.json stores it beside the encoder's dict; not part of to_dict

    @classmethod
    def fit(cls, table: OutcomeTable, train_rows: np.ndarray, cfg: EncoderSettings) -> ObsEncoder:
        """Fit on the train rows of ``table``; ``cfg``'s λ ranges must be resolved (no ``auto``)."""
        if len(train_rows) == 0:
            raise ValueError("the encoder needs at least one train row")
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
    def feature_dim(self) -> int:
        """D: the length of a query's raw feature vector."""
        return len(self.mean) - 1

    @property
    def base_dim(self) -> int:
        return (len(self.pca) if self.pca is not None else len(self.mean) - 1) + 1

    @property
    def dim(self) -> int:
        return self.base_dim + (2 if self.sample_penalties else 0)

    def encode_base(self, features: np.ndarray, prompt_tokens: np.ndarray) -> np.ndarray:
        """The query part (n, base_dim) of n queries' observations."""
        z = np.clip((_base_features(features, prompt_tokens) - self.mean) / self.std, -self.clip, self.clip)
        if self.pca is not None:
            f = np.clip(z[:, :-1] @ self.pca.T / self.pca_scale, -self.clip, self.clip)
            z = np.concatenate([f, z[:, -1:]], axis=1)
        return z.astype(np.float32)

    def penalty_pair(self, lam_t: float, lam_l: float) -> tuple[float, float]:
        """The encoded (λ_T, λ_L) of one observation, in float64: the single formula every caller uses
        (scalar ``math.log10``: the env calls it once per episode, where numpy's call overhead shows)."""
        t = (math.log10(lam_t + self.eps[0]) - self.center[0]) / self.scale[0]
        s = (math.log10(lam_l + self.eps[1]) - self.center[1]) / self.scale[1]
        return t, s

    def encode_penalties(self, lam_t: np.ndarray | float, lam_l: np.ndarray | float) -> np.ndarray:
        """The penalty part (..., 2) for λ arrays (or scalars) of the same shape."""
        lt, ll = np.broadcast_arrays(np.asarray(lam_t, dtype=np.float64), np.asarray(lam_l, dtype=np.float64))
        pairs = [self.penalty_pair(float(a), float(b)) for a, b in zip(lt.ravel(), ll.ravel(), strict=True)]
        return np.array(pairs, dtype=np.float32).reshape(*lt.shape, 2)

    def encode(
        self,
        features: np.ndarray,
        prompt_tokens: np.ndarray | float,
        lam_t: np.ndarray | float = 0.0,
        lam_l: np.ndarray | float = 0.0,
    ) -> np.ndarray:
        """Whole observations (n, dim); the penalties (scalars or per query) are ignored in fixed mode."""
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

    def to_export_dict(self) -> dict[str, Any]:
        """``policy.json``'s ``observation``: the layout in words, the clip bound and :meth:`to_dict`."""
        layout = (
            "[(features - feature_mean)/feature_std ... (then, if pca: @ pca.T / pca_scale), "
            "(log1p(prompt_tokens) - prompt_tokens_mean)/prompt_tokens_std"
            + (
                ", (log10(lambda_tokens + eps[0]) - center[0])/scale[0], (log10(lambda_seconds + eps[1]) - center[1])/scale[1]]"
                if self.sample_penalties
                else "]"
            )
        )
        return {"layout": layout, "clip": self.clip, **self.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObsEncoder:
        """From :meth:`to_dict` (a checkpoint's meta) or :meth:`to_export_dict` (``policy.json``)."""
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
            clip=float(d.get("clip", OBS_BOUND)),
        )


def _base_features(features: np.ndarray, prompt_tokens: np.ndarray) -> np.ndarray:
    return np.concatenate(
        [
            np.asarray(features, dtype=np.float64),
            np.log1p(np.asarray(prompt_tokens, dtype=np.float64))[:, None],
        ],
        axis=1,
    )
