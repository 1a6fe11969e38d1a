"""The project's environments for RLlib: the action mask RLlib's way, and ``register_env``.

SB3-contrib's MaskablePPO asks the env for ``action_masks()``; RLlib reads the mask from the
observation instead. :class:`RLlibActionMask` wraps *any* env that has ``action_masks()`` (the
bandit ``ttc/Allocate-v0``, and the sequential ``ttc/Escalate-v0`` alike, whose mask changes per
step) and observes ``{"observations": <the env's observation>, "action_mask": <0/1 float per
action>}``: the layout of RLlib's action-masking RL module
(``ray.rllib.examples.rl_modules.classes.action_masking_rlm.ActionMaskingTorchRLModule``), which
turns masked logits into ``-inf`` before sampling. ``action_masks()`` still works on the wrapper.

:func:`register_rllib_envs` registers every ``ttc/*`` gymnasium id with
``ray.tune.registry.register_env`` under the same name, wrapped, so that
``PPOConfig().environment("ttc/Allocate-v0", env_config={"cache": ...})`` builds the masked env;
``env_config`` holds the ``gymnasium.make`` keywords (any ``EnvConfig`` field, ``cache``, ``split``...).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

import env as _env  # noqa: F401  (registers ttc/Allocate-v0 with gymnasium)

OBS_KEY, MASK_KEY = "observations", "action_mask"  # the keys RLlib's action-masking module reads


class RLlibActionMask(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Dict observation ``{"observations", "action_mask"}`` for an env with a ``Discrete`` action space
    and ``action_masks()``; the mask is the one for the state the observation describes."""

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)  # lets gymnasium re-create the wrapped env from its spec
        super().__init__(env)
        if not isinstance(env.action_space, spaces.Discrete):
            raise TypeError(f"RLlibActionMask needs a Discrete action space, got {env.action_space}")
        try:
            env.get_wrapper_attr("action_masks")
        except AttributeError as exc:
            raise TypeError(f"{env} has no action_masks(): nothing to expose as RLlib's action_mask") from exc
        n = int(env.action_space.n)
        self.observation_space = spaces.Dict({
            OBS_KEY: env.observation_space,
            MASK_KEY: spaces.Box(0.0, 1.0, shape=(n,), dtype=np.float32),
        })

    def action_masks(self) -> np.ndarray:
        return np.asarray(self.env.get_wrapper_attr("action_masks")(), dtype=bool)

    def _dict(self, obs: Any) -> dict[str, np.ndarray]:
        return {OBS_KEY: obs, MASK_KEY: self.action_masks().astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return self._dict(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._dict(obs), reward, terminated, truncated, info


def make_masked_env(env_id: str, **kwargs: Any) -> RLlibActionMask:
    """``gymnasium.make(env_id, **kwargs)`` with the mask in the observation."""
    return RLlibActionMask(gym.make(env_id, **kwargs))


def ttc_env_ids() -> list[str]:
    """The project's registered gymnasium ids (``ttc/...``): ``ttc/Allocate-v0`` and ``ttc/Escalate-v0``."""
    return sorted(k for k in gym.registry if k.startswith("ttc/"))


def register_rllib_envs(env_ids: list[str] | None = None) -> list[str]:
    """Register each id with Ray Tune's registry (RLlib's env lookup), wrapped; returns the ids."""
    from ray.tune.registry import register_env

    ids = env_ids or ttc_env_ids()
    for env_id in ids:
        # RLlib passes an EnvContext (a dict with worker info attributes): its items are the make kwargs.
        register_env(env_id, lambda ctx, env_id=env_id: make_masked_env(env_id, **dict(ctx)))
    return ids
