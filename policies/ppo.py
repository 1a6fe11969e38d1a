"""PPO (sb3-contrib MaskablePPO) for the allocation bandit: construction, checkpoints and the policy
wrapper (the training callbacks are in :mod:`policies.callbacks`).

Every saved model carries ``model.ttc_meta`` (SB3 stores plain attributes in the zip's ``data``):
``{"format": "ttc-alloc/ppo", "menu": [action ids], "menu_names": [...], "encoder": ObsEncoder dict,
"env": EnvConfig dict, "cache": path}``. :func:`read_meta` reads it without loading the network, so a
checkpoint made for another action menu is refused with both menus' difference before anything runs.
Reading a zip unpickles it: :func:`read_meta` and :func:`load_model` load only one that this user's
train.py wrote (:mod:`policies.trust`, which also saves them), any with ``trust=True``.

The problem is a contextual bandit (one-step episodes, ``terminated=True``): returns are the rewards,
``gamma``/``gae_lambda`` have no effect (the config sets ``gamma: 0`` to say so), and short rollouts
(``n_steps`` x ``n_envs`` = a few hundred episodes) give frequent updates.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from env.menu import menu_difference
from env.outcomes import OutcomeTable
from policies.base import AllocationPolicy
from policies.observation import ObsEncoder
from rollouts.config import config_from_dict
from rollouts.errors import ConfigError, TTCError

META_FORMAT = "ttc-alloc/ppo"


class MenuMismatchError(TTCError):
    """A checkpoint was trained on another action menu than the cache offers."""


class CheckpointError(TTCError):
    """A checkpoint file is missing or is not a ttc-alloc PPO model."""


@dataclass
class PPOConfig:
    """MaskablePPO hyperparameters (``ppo:`` in config.yml)."""

    learning_rate: float = 1e-4
    n_steps: int = 256
    batch_size: int = 512
    n_epochs: int = 4
    gamma: float = 0.0
    gae_lambda: float = 1.0
    clip_range: float = 0.2
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: list[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"  # tanh | relu
    weight_decay: float = 0.0  # Adam L2 penalty on the policy and value networks
    # mlp: SB3's MlpPolicy; utility: logits are priced utilities, λ enters as in the reward
    # (policies/utility_head.py), PPO learns the per-query gain over the train means
    policy: str = "utility"
    utility_beta: float = 20.0  # initial inverse temperature of the utility actor (learned)
    utility_warm_start: bool = True  # fit the gain head on the train split's outcomes before PPO
    utility_ppo_trains: str = "all"  # all | response (traits frozen after the warm start)
    utility_ensemble: int = 1  # gain = mean of this many independently warm-started members
    utility_rank: int = 1  # >0: the per-query gain is rank-limited (query traits x action responses)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, where: str = "ppo") -> PPOConfig:
        return config_from_dict(cls, d, f"{where}.")

    def validate(self) -> None:
        """Value checks (the field types are checked by :func:`rollouts.config.config_from_dict`)."""
        if self.policy not in ("mlp", "utility"):
            raise ConfigError(f"ppo.policy must be 'mlp' or 'utility', got {self.policy!r}")
        if self.policy != "utility" and self.utility_warm_start:
            # the warm start fits the utility actor's gain head; an MlpPolicy has none
            raise ConfigError("ppo.utility_warm_start needs ppo.policy: utility (or set it to false)")
        if self.utility_ppo_trains not in ("all", "response"):
            raise ConfigError(
                f"ppo.utility_ppo_trains must be 'all' or 'response', got {self.utility_ppo_trains!r}"
            )
        if self.activation not in ("tanh", "relu"):
            raise ConfigError(f"ppo.activation must be 'tanh' or 'relu', got {self.activation!r}")
        for name in ("n_steps", "batch_size", "n_epochs", "utility_ensemble"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"ppo.{name} must be an integer >= 1, got {v!r}")
        for name in (
            "learning_rate",
            "clip_range",
            "ent_coef",
            "vf_coef",
            "max_grad_norm",
            "utility_beta",
            "gamma",
            "gae_lambda",
        ):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
                raise ConfigError(f"ppo.{name} must be a finite number >= 0, got {v!r}")
        if not (isinstance(self.net_arch, list) and all(isinstance(x, int) and x > 0 for x in self.net_arch)):
            raise ConfigError(f"ppo.net_arch must be a list of positive integers, got {self.net_arch!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_model(
    vec_env,
    cfg: PPOConfig,
    seed: int,
    tensorboard_log: str | None,
    meta: dict[str, Any],
    utility_spec: dict[str, Any] | None = None,
):
    """A fresh MaskablePPO; ``utility_spec`` (from :func:`policies.utility_head.utility_spec`) is
    required when ``cfg.policy == "utility"``."""
    import torch
    from sb3_contrib import MaskablePPO

    act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[cfg.activation]
    policy_kwargs: dict[str, Any] = {
        "net_arch": list(cfg.net_arch),
        "activation_fn": act,
        "optimizer_kwargs": {"weight_decay": cfg.weight_decay} if cfg.weight_decay else {},
    }
    policy_class: Any = "MlpPolicy"
    if cfg.policy == "utility":
        from policies.utility_head import UtilityPolicy

        if utility_spec is None:
            raise ConfigError("ppo.policy 'utility' needs the train split's utility_spec")
        policy_class = UtilityPolicy
        policy_kwargs["utility_spec"] = utility_spec
    model = MaskablePPO(
        policy_class,
        vec_env,
        learning_rate=cfg.learning_rate,
        n_steps=cfg.n_steps,
        batch_size=cfg.batch_size,
        n_epochs=cfg.n_epochs,
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_range,
        ent_coef=cfg.ent_coef,
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.max_grad_norm,
        policy_kwargs=policy_kwargs,
        tensorboard_log=tensorboard_log,
        seed=seed,
        device="cpu",
        verbose=0,
    )
    model.ttc_meta = meta  # type: ignore[attr-defined]  # our checkpoint meta rides on the SB3 model
    return model


def make_meta(table: OutcomeTable, encoder: ObsEncoder, env_cfg: dict[str, Any]) -> dict[str, Any]:
    return {
        "format": META_FORMAT,
        "menu": list(table.action_ids),
        "menu_names": list(table.action_names),
        "encoder": encoder.to_dict(),
        "env": env_cfg,
        "cache": table.cache_path,
    }


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _zip_path(path: str | Path) -> Path:
    p = Path(path)
    if not p.exists() and p.with_suffix(".zip").exists():
        p = p.with_suffix(".zip")
    if not p.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return p


def _meta_of(p: Path, stream: Any) -> dict[str, Any]:
    from stable_baselines3.common.save_util import load_from_zip_file

    try:
        data, _, _ = load_from_zip_file(stream, load_data=True, device="cpu", print_system_info=False)
    except (zipfile.BadZipFile, ValueError, KeyError, OSError) as exc:
        raise CheckpointError(f"{p}: not a stable-baselines3 model ({exc})") from exc
    meta = (data or {}).get("ttc_meta")
    if not isinstance(meta, dict) or meta.get("format") != META_FORMAT:
        raise CheckpointError(f"{p}: not a ttc-alloc PPO checkpoint (no ttc_meta)")
    return meta


def read_meta(path: str | Path, trust: bool = False) -> dict[str, Any]:
    """The ttc_meta stored in a saved model, without building the network. Reading it unpickles, so
    the zip must be one this user's train.py wrote (:mod:`policies.trust`) unless ``trust``."""
    from policies.trust import checked_stream

    p = _zip_path(path)
    return _meta_of(p, checked_stream(p, trust))


def check_menu(meta: dict[str, Any], table: OutcomeTable, where: str) -> None:
    if list(meta["menu"]) != list(table.action_ids):
        raise MenuMismatchError(
            f"{where} was trained on another action menu than {table.cache_path} offers: "
            f"{menu_difference(list(meta['menu']), list(table.action_ids))}"
        )


def load_model(path: str | Path, table: OutcomeTable | None = None, env=None, trust: bool = False, **kwargs):
    """Load a MaskablePPO checkpoint; with ``table``, refuse a different action menu first. Only a zip
    this user's train.py wrote is unpickled (:mod:`policies.trust`), any with ``trust``."""
    from sb3_contrib import MaskablePPO

    from policies.trust import read_checked

    p = _zip_path(path)
    data = read_checked(p, trust)  # the checked bytes are what is unpickled, never the file again
    meta = _meta_of(p, io.BytesIO(data))
    if table is not None:
        check_menu(meta, table, str(path))
    return MaskablePPO.load(io.BytesIO(data), env=env, device="cpu", **kwargs)


class PPOPolicy(AllocationPolicy):
    """A trained MaskablePPO behind the common call: argmax (deterministic) over legal actions."""

    name = "ppo"

    def __init__(self, model):
        self.model = model
        self.meta = model.ttc_meta
        self.encoder = ObsEncoder.from_dict(self.meta["encoder"])

    @classmethod
    def load(cls, path: str | Path, table: OutcomeTable | None = None, trust: bool = False) -> PPOPolicy:
        return cls(load_model(path, table, trust=trust))

    def observations(self, table: OutcomeTable, rows, lambda_tokens, lambda_seconds) -> np.ndarray:
        rows = np.asarray(rows)
        return self.encoder.encode(
            table.features[rows], table.prompt_tokens[rows], lambda_tokens, lambda_seconds
        )

    def choose(self, table: OutcomeTable, rows, lambda_tokens, lambda_seconds):
        if list(table.action_ids) != list(self.meta["menu"]):
            check_menu(self.meta, table, "this model")
        rows = np.asarray(rows)
        obs = self.observations(table, rows, lambda_tokens, lambda_seconds)
        actions, _ = self.model.predict(obs, action_masks=table.mask[rows], deterministic=True)
        return np.asarray(actions, dtype=np.int64).reshape(len(rows))
