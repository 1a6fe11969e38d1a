"""The allocation environment, registered with gymnasium as ``ttc/Allocate-v0``.

``gymnasium.make("ttc/Allocate-v0", cache="data/default_cache", split="train", penalty_mode="sampled")``
(any :class:`env.allocate_env.EnvConfig` field can be passed as a keyword).
"""

from __future__ import annotations

import gymnasium as gym

ENV_ID = "ttc/Allocate-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="env.allocate_env:AllocateEnv", max_episode_steps=None)
