"""The environments, registered with gymnasium as ``ttc/Allocate-v0`` and ``ttc/Escalate-v0``.

``gymnasium.make("ttc/Allocate-v0", cache="data/default_cache", split="train", penalty_mode="sampled")``
(any :class:`env.allocate_env.EnvConfig` field can be passed as a keyword);
``gymnasium.make("ttc/Escalate-v0", cache=..., split="train")`` takes the fields of
:class:`env.escalate_env.EscalateConfig`.
"""

from __future__ import annotations

import gymnasium as gym

ENV_ID = "ttc/Allocate-v0"

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="env.allocate_env:AllocateEnv", max_episode_steps=None)

ESCALATE_ENV_ID = "ttc/Escalate-v0"

if ESCALATE_ENV_ID not in gym.registry:
    gym.register(id=ESCALATE_ENV_ID, entry_point="env.escalate_env:EscalateEnv", max_episode_steps=None)
